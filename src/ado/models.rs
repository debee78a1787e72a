//! Serde models of the Azure DevOps distributed-task REST resources we read.
//!
//! Only the fields we use are typed; everything is optional where ADO omits it,
//! so a new or missing field never breaks a poll.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// ADO's list envelope: `{"count": n, "value": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct List<T> {
    #[serde(default)]
    pub count: usize,
    pub value: Vec<T>,
}

/// What counting reads of a job request is the pure counter's own type: the poller decodes
/// each element of a jobrequests answer straight into it.
pub use crate::count::request::{JobRequestView, NameRef};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub id: u32,
    pub name: String,
    #[serde(default)]
    pub is_hosted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_type: Option<String>,
    #[serde(default)]
    pub size: u32,
}

/// A reference to an agent as embedded in job requests (`reservedAgent`, `matchedAgents`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRef {
    pub id: u32,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A full agent as listed by `…/pools/{id}/agents` (capabilities only with
/// `includeCapabilities=true`), and as sent to register or replace one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Absent in a registration request: the server assigns it.
    #[serde(default)]
    pub id: u32,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_on: Option<OffsetDateTime>,
    /// When `status` last changed; ADO omits it for an agent that never connected.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_changed_on: Option<OffsetDateTime>,
    /// The job the agent holds; listed only with `includeAssignedRequest=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_request: Option<Box<JobRequest>>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub system_capabilities: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub user_capabilities: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_description: Option<String>,
    /// `1` for every agent `config.sh` registers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallelism: Option<u32>,
    /// Sent at registration and replacement; never read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<AgentAuthorization>,
}

/// `TaskAgentAuthorization`: the public half of the agent's RSA key; ADO's answer to a
/// registration adds the OAuth client the listener signs its session assertions as, and the
/// URL it posts them to. Neither is a secret: only the private key can use them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentAuthorization {
    pub public_key: AgentPublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
}

impl AgentAuthorization {
    /// The public half of a fresh RSA-2048 key, as `config.sh` sends it. Whoever does not need
    /// to open a session as the agent (a placeholder) throws the private half away at once.
    pub fn fresh() -> Result<Self, String> {
        use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine as _;
        let pair = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| "cannot generate an RSA key".to_owned())?;
        let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Self {
            public_key: AgentPublicKey {
                exponent: b64.encode(&public.e),
                modulus: b64.encode(&public.n),
            },
            ..Self::default()
        })
    }
}

/// `TaskAgentPublicKey`: .NET `byte[]`s, so base64 in JSON, big-endian as `RSAParameters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPublicKey {
    pub exponent: String,
    pub modulus: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedRef {
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub name: String,
}

/// One element of `…/pools/{id}/jobrequests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    pub request_id: u64,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub queue_time: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub assign_time: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub receive_time: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub finish_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default)]
    pub demands: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_agents: Option<Vec<AgentRef>>,
    #[serde(default)]
    pub matches_all_agents_in_pool: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_agent: Option<AgentRef>,
    #[serde(default)]
    pub pool_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<NamedRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<NamedRef>,
    /// ADO's own notes on the request, `ParallelismTag` (`Private` or `Public`: which parallel
    /// jobs it takes) and `IsScheduledKey` among them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data: std::collections::BTreeMap<String, String>,
}

/// `GET {org}/_apis/distributedtask/resourceusage`: an organisation's parallel jobs of one
/// kind and what uses them (`ResourceUsage` in microsoft/azure-devops-node-api
/// `api/interfaces/TaskAgentInterfaces.ts`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_limit: Option<ResourceLimit>,
    /// With `includeRunningRequests=true`: the requests holding a parallel job now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_requests: Option<Vec<RunningRequest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_minutes: Option<u64>,
}

/// `ResourceLimit`: how many parallel jobs of this tag the organisation has.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_hosted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_premium: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_to_reach_all_providers: Option<bool>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub resource_limits_data: std::collections::BTreeMap<String, String>,
}

/// Of each running `TaskAgentJobRequest`, what the cap needs: which pool it runs in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningRequest {
    pub request_id: u64,
    #[serde(default)]
    pub pool_id: u32,
}

/// One element of `…/distributedtask/packages/agent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPackage {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub platform: String,
    pub download_url: String,
    #[serde(default)]
    pub filename: String,
    pub version: PackageVersion,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    #[serde(default)]
    pub is_prerelease: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_job_request_as_ado_sends_it() {
        let body = r#"{"count":1,"value":[{"requestId":4711,"queueTime":"2026-11-26T05:00:00.123Z",
          "serviceOwner":"x","hostId":"y","planType":"Build","planId":"p","jobId":"j",
          "demands":["Agent.Version -gtVersion 3.248.0","maven"],
          "matchedAgents":[{"_links":{},"id":3,"name":"tmpl","version":"4.1","enabled":true,"status":"offline"}],
          "matchesAllAgentsInPool":false,"poolId":9,"priority":0,"data":{"ParallelismTag":"Private"},
          "definition":{"_links":{},"id":12,"name":"ci"},"owner":{"_links":{},"id":34,"name":"20261126.1"}}]}"#;
        let list: List<JobRequest> = serde_json::from_str(body).unwrap();
        let job = &list.value[0];
        assert_eq!(job.request_id, 4711);
        assert_eq!(job.demands.len(), 2);
        assert!(job.assign_time.is_none() && job.result.is_none());
        assert_eq!(job.matched_agents.as_ref().unwrap()[0].name, "tmpl");
        assert_eq!(job.definition.as_ref().unwrap().name, "ci");
    }

    #[test]
    fn parses_an_agent_listed_with_its_assigned_request() {
        let body = r#"{"count":2,"value":[
          {"_links":{},"maxParallelism":1,"createdOn":"2026-11-20T08:00:00.5Z",
           "statusChangedOn":"2026-11-26T04:10:00Z","assignedRequest":{"requestId":77,
           "queueTime":"2026-11-26T04:00:00Z","planType":"Build","demands":["maven"]},
           "id":12,"name":"ado-agent-x","version":"4.261.0","osDescription":"Linux",
           "enabled":true,"status":"offline","provisioningState":"Provisioned"},
          {"id":13,"name":"ado-agent-y","createdOn":"2026-11-26T05:00:00Z","status":"online"}]}"#;
        let list: List<Agent> = serde_json::from_str(body).unwrap();
        let (busy, fresh) = (&list.value[0], &list.value[1]);
        assert_eq!(busy.assigned_request.as_ref().unwrap().request_id, 77);
        assert_eq!(
            busy.status_changed_on.unwrap(),
            time::macros::datetime!(2026-11-26 04:10:00 UTC)
        );
        assert!(fresh.assigned_request.is_none() && fresh.status_changed_on.is_none());
    }
}
