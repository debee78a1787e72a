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
        "ScaledJob namespace {namespace:?} is not in --allowed-namespaces (ADO_SCALER_ALLOWED_NAMESPACES): \
         the scaler acts only for ScaledJobs in the namespaces it lists; add this one there to serve it"
    )]
    NamespaceNotAllowed { namespace: String },

    #[error(
        "agent pool {pool} of {org} is not in --allowed-pools (ADO_SCALER_ALLOWED_POOLS): the scaler \
         polls and registers placeholders only in the pools it lists; add it there as {org}={pool}"
    )]
    PoolNotAllowed { org: String, pool: String },

    #[error(
        "the scaler already watches its bound of {max} pools (--max-pools, ADO_SCALER_MAX_POOLS): this \
         trigger would start another, so it is refused while the pools already watched keep working; \
         raise --max-pools or remove ScaledJobs of pools no longer used"
    )]
    TooManyPools { max: usize },

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
            Error::NamespaceNotAllowed { .. } => "namespace_not_allowed",
            Error::PoolNotAllowed { .. } => "pool_not_allowed",
            Error::TooManyPools { .. } => "too_many_pools",
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

    /// The [`Error::reason`] of every refusal ([`Error::is_refusal`]), for the metric's zero
    /// series.
    pub const REFUSAL_REASONS: [&'static str; 4] = [
        "namespace_not_allowed",
        "org_not_allowed",
        "pool_not_allowed",
        "too_many_pools",
    ];

    /// A refusal of the scaler's own policy (who may make it act), as opposed to a failure:
    /// counted in `ado_scaler_denied_total` and logged once per ScaledJob, not at every call.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::OrgNotAllowed { .. }
                | Error::NamespaceNotAllowed { .. }
                | Error::PoolNotAllowed { .. }
                | Error::TooManyPools { .. }
        )
    }

    /// The gRPC status code KEDA gets for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidMetadata { .. } => Code::InvalidArgument,
            Error::OrgNotAllowed { .. }
            | Error::NamespaceNotAllowed { .. }
            | Error::PoolNotAllowed { .. }
            | Error::Forbidden { .. } => Code::PermissionDenied,
            Error::Token { .. } | Error::NotAccepted { .. } => Code::Unauthenticated,
            Error::NotFound(_) => Code::NotFound,
            Error::AmbiguousPool { .. } => Code::FailedPrecondition,
            Error::RateLimited { .. } | Error::TooManyPools { .. } => Code::ResourceExhausted,
            Error::Upstream { .. }
            | Error::Transport { .. }
            | Error::Stale { .. }
            | Error::TooLarge { .. }
            | Error::Kubernetes(_)
            | Error::ShuttingDown => Code::Unavailable,
            Error::Decode { .. } | Error::Config(_) | Error::Agent(_) => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
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
                Error::Forbidden {
                    org: "o".into(),
                    resource: "pool".into(),
                },
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
                Error::RateLimited {
                    org: "o".into(),
                    retry_after: Duration::from_secs(1),
                },
                Code::ResourceExhausted,
            ),
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
            assert!(!err.is_refusal(), "{err}");
            let msg = err.to_string();
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code, "{msg}");
            assert_eq!(status.message(), msg);
        }
    }

    #[test]
    fn refusals_name_their_setting_and_map_to_their_codes() {
        let refusals = [
            (
                Error::OrgNotAllowed { org: "o".into() },
                Code::PermissionDenied,
                "--allowed-orgs",
                "org_not_allowed",
            ),
            (
                Error::NamespaceNotAllowed {
                    namespace: "team-b".into(),
                },
                Code::PermissionDenied,
                "--allowed-namespaces",
                "namespace_not_allowed",
            ),
            (
                Error::PoolNotAllowed {
                    org: "o".into(),
                    pool: "gpu".into(),
                },
                Code::PermissionDenied,
                "--allowed-pools",
                "pool_not_allowed",
            ),
            (
                Error::TooManyPools { max: 50 },
                Code::ResourceExhausted,
                "--max-pools",
                "too_many_pools",
            ),
        ];
        for (err, code, flag, reason) in refusals {
            assert!(err.is_refusal(), "{err}");
            assert!(Error::REFUSAL_REASONS.contains(&reason), "{reason}");
            assert_eq!(err.grpc_code(), code, "{err}");
            assert_eq!(err.reason(), reason);
            assert!(err.to_string().contains(flag), "{err}");
        }
        assert!(
            !Error::InvalidMetadata {
                key: "poolName",
                reason: "x".into()
            }
            .is_refusal()
        );
    }
}
