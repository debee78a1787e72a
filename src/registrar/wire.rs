//! The registrar's HTTP contract, shared by the server and `ado-scaler agent prepare`.

use serde::{Deserialize, Serialize};

use crate::ado::models::AgentPublicKey;

/// Where registrations are posted, below the registrar's base URL.
pub const REGISTRATIONS_PATH: &str = "/v1/registrations";

/// The audience the agent pod's projected token must carry: a token for the API server (the
/// default audience) or for anything else is refused.
pub const TOKEN_AUDIENCE: &str = "ado-scaler";

/// Largest request body read: a public key and two short strings.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// What the pod sends: the public half of the key it just made, and what its listener is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationRequest {
    pub public_key: AgentPublicKey,
    /// The listener's `--version`, as `config.sh` reports it.
    pub version: String,
    pub os_description: String,
}

/// Everything `.agent` and `.credentials` need; nothing secret (only the pod's private key
/// can use the client id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationAnswer {
    pub agent_id: u32,
    pub agent_name: String,
    pub pool_id: u32,
    pub pool_name: String,
    pub server_url: String,
    pub client_id: String,
    pub authorization_url: String,
}

/// Every refusal's body: a stable reason to match on and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
}
