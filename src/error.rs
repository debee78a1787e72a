//! One error type for the library, and its single mapping onto gRPC status codes.
//!
//! Messages name the offending field or upstream condition but never carry a
//! token, a federated assertion, or an upstream response body.

use std::time::Duration;

/// Everything that can go wrong between a KEDA call and Azure DevOps.
///
/// `Clone` because a failed poll is shared by every caller waiting on that pool.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("trigger metadata `{key}`: {reason}")]
    InvalidMetadata { key: &'static str, reason: String },

    #[error(
        "organisation {org} is not in --allowed-orgs; add it to the scaler's allowlist to serve this trigger"
    )]
    OrgNotAllowed { org: String },

    #[error(
        "could not get an Entra token for Azure DevOps: {message}{}",
        hint.map(|h| format!(" — to fix: {h}")).unwrap_or_default()
    )]
    Token {
        message: String,
        /// What to change, when Entra's error code says (`check` prints it as the fix).
        hint: Option<&'static str>,
    },

    #[error(
        "Azure DevOps at {org} did not accept the scaler's identity (HTTP {status}, {what}): \
         the identity is probably not added to the organisation, or the token is for another tenant"
    )]
    NotAccepted {
        org: String,
        status: u16,
        what: &'static str,
    },

    #[error(
        "Azure DevOps at {org} denied access to {resource} (HTTP 403): give the identity a role on the agent pool"
    )]
    Forbidden { org: String, resource: String },

    #[error("{0} not found")]
    NotFound(String),

    #[error("agent pool name `{name}` matches {count} pools; use poolID")]
    AmbiguousPool { name: String, count: usize },

    #[error(
        "Azure DevOps at {org} is rate limiting this identity (HTTP 429); retry after {retry_after:?}"
    )]
    RateLimited { org: String, retry_after: Duration },

    #[error("Azure DevOps at {org} answered HTTP {status} for {endpoint}")]
    Upstream {
        org: String,
        endpoint: &'static str,
        status: u16,
    },

    #[error("request to {org} failed: {reason}")]
    Transport { org: String, reason: String },

    #[error(
        "the answer from {org} for {endpoint} is larger than --max-body ({limit} bytes{}); \
         raise --max-body if the pool really is that large",
        declared.map(|len| format!("; it declared {len} bytes")).unwrap_or_default()
    )]
    TooLarge {
        org: String,
        endpoint: &'static str,
        limit: u64,
        declared: Option<u64>,
    },

    #[error("unexpected response from {org} for {endpoint}: {reason}")]
    Decode {
        org: String,
        endpoint: &'static str,
        reason: String,
    },

    #[error(
        "queue data for pool {pool} is {age:?} old (limit {limit:?}); last error: {last_error}"
    )]
    Stale {
        pool: String,
        age: Duration,
        limit: Duration,
        last_error: String,
    },

    #[error("Kubernetes API: {0}")]
    Kubernetes(String),

    #[error("configuration: {0}")]
    Config(String),

    /// A step of the agent entrypoint failed (the agent's scripts, its package).
    #[error("{0}")]
    Agent(String),

    #[error("the scaler is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable name of the kind of failure, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidMetadata { .. } => "invalid_metadata",
            Error::OrgNotAllowed { .. } => "org_not_allowed",
            Error::Token { .. } => "token",
            Error::NotAccepted { .. } => "not_accepted",
            Error::Forbidden { .. } => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::AmbiguousPool { .. } => "ambiguous_pool",
            Error::RateLimited { .. } => "rate_limited",
            Error::Upstream { .. } => "upstream_status",
            Error::Transport { .. } => "transport",
            Error::TooLarge { .. } => "too_large",
            Error::Decode { .. } => "decode",
            Error::Stale { .. } => "stale",
            Error::Kubernetes(_) => "kubernetes",
            Error::Config(_) => "config",
            Error::Agent(_) => "agent",
            Error::ShuttingDown => "shutting_down",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::InvalidMetadata { .. } => Code::InvalidArgument,
            Error::OrgNotAllowed { .. } | Error::Forbidden { .. } => Code::PermissionDenied,
            Error::Token { .. } | Error::NotAccepted { .. } => Code::Unauthenticated,
            Error::NotFound(_) => Code::NotFound,
            Error::AmbiguousPool { .. } => Code::FailedPrecondition,
            Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::Upstream { .. }
            | Error::Transport { .. }
            | Error::Stale { .. }
            | Error::TooLarge { .. }
            | Error::Kubernetes(_)
            | Error::ShuttingDown => Code::Unavailable,
            Error::Decode { .. } | Error::Config(_) | Error::Agent(_) => Code::Internal,
        };
        tonic::Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn maps_to_grpc_codes() {
        let cases = [
            (
                Error::InvalidMetadata {
                    key: "poolName",
                    reason: "x".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::OrgNotAllowed { org: "o".into() },
                Code::PermissionDenied,
            ),
            (
                Error::NotAccepted {
                    org: "o".into(),
                    status: 203,
                    what: "sign-in page",
                },
                Code::Unauthenticated,
            ),
            (Error::NotFound("pool".into()), Code::NotFound),
            (
                Error::AmbiguousPool {
                    name: "p".into(),
                    count: 2,
                },
                Code::FailedPrecondition,
            ),
            (
                Error::Upstream {
                    org: "o".into(),
                    endpoint: "jobrequests",
                    status: 503,
                },
                Code::Unavailable,
            ),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code, "{msg}");
            assert_eq!(status.message(), msg);
        }
    }
}
