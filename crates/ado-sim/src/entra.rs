//! Simulated Microsoft Entra token endpoint for the client-assertion (workload identity) flow:
//! the same path, form fields, success body and AADSTS-shaped errors as the real one.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Form, Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine as _;
use serde_json::json;

use ado_scaler::auth::{ADO_SCOPE, AssertionClaims};

/// Access tokens the simulated Entra issued, checked by the simulated ADO.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: Mutex<HashMap<String, Instant>>,
}

impl TokenStore {
    pub fn issue(&self, lifetime: Duration) -> String {
        let token = format!("sim-{:032x}", rand::random::<u128>());
        self.tokens
            .lock()
            .expect("tokens")
            .insert(token.clone(), Instant::now() + lifetime);
        token
    }

    pub fn is_valid(&self, token: &str) -> bool {
        self.tokens
            .lock()
            .expect("tokens")
            .get(token)
            .is_some_and(|exp| *exp > Instant::now())
    }

    /// Every token issued so far (tests look for them where they must not be).
    pub fn all(&self) -> Vec<String> {
        self.tokens
            .lock()
            .expect("tokens")
            .keys()
            .cloned()
            .collect()
    }

    pub fn revoke_all(&self) {
        self.tokens.lock().expect("tokens").clear();
    }
}

/// Who may get tokens.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    pub tenant_id: String,
    pub client_id: String,
    /// The service-account token file; the assertion must equal its current content.
    pub federated_token_file: PathBuf,
    pub token_lifetime: Duration,
}

#[derive(Debug)]
pub struct EntraState {
    config: Mutex<EntraConfig>,
    tokens: Arc<TokenStore>,
    requests: AtomicU64,
    issued: AtomicU64,
    refuse_assertion: AtomicBool,
}

/// Handle to the simulated Entra: counters and switches for tests.
#[derive(Debug, Clone)]
pub struct Entra {
    state: Arc<EntraState>,
}

impl Entra {
    pub fn new(config: EntraConfig, tokens: Arc<TokenStore>) -> Self {
        Self {
            state: Arc::new(EntraState {
                config: Mutex::new(config),
                tokens,
                requests: AtomicU64::new(0),
                issued: AtomicU64::new(0),
                refuse_assertion: AtomicBool::new(false),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(self.state.clone())
    }

    /// Token requests received, successful or not.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Answer every request as if no federated credential matched the assertion (AADSTS700213).
    pub fn refuse_assertions(&self, refuse: bool) {
        self.state.refuse_assertion.store(refuse, Ordering::SeqCst);
    }

    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.config.lock().expect("config").token_lifetime = lifetime;
    }
}

/// An unsigned service-account token shaped like the one AKS projects into a pod.
pub fn service_account_token(issuer: &str, subject: &str) -> String {
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "kid": "sim"})),
        b64(
            json!({"aud": ["api://AzureADTokenExchange"], "iss": issuer, "sub": subject, "iat": now, "nbf": now, "exp": now + 3600})
        ),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"unsigned-simulator-signature"),
    )
}

/// The `sub` claim of a JWT, read without verifying it (only to word an error).
pub fn jwt_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

fn aad_error(status: StatusCode, error: &str, code: u32, description: String) -> Response {
    let trace_id = format!("{:032x}", rand::random::<u128>());
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: {trace_id} Timestamp: {timestamp}"),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": trace_id,
        })),
    )
        .into_response()
}

async fn token(
    State(state): State<Arc<EntraState>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let config = state.config.lock().expect("config").clone();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let bad = StatusCode::BAD_REQUEST;
    if tenant != config.tenant_id {
        return aad_error(
            bad,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found."),
        );
    }
    for required in [
        "grant_type",
        "client_id",
        "scope",
        "client_assertion",
        "client_assertion_type",
    ] {
        if field(required).is_empty() {
            return aad_error(
                bad,
                "invalid_request",
                900144,
                format!("The request body must contain the following parameter: '{required}'."),
            );
        }
    }
    if field("grant_type") != "client_credentials" {
        return aad_error(
            bad,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.".into(),
        );
    }
    if field("client_id") != config.client_id {
        return aad_error(
            bad,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{}' was not found in the directory '{tenant}'.",
                field("client_id")
            ),
        );
    }
    if field("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return aad_error(
            bad,
            "invalid_request",
            50027,
            "Invalid JWT token. Unsupported client assertion type.".into(),
        );
    }
    let expected = std::fs::read_to_string(&config.federated_token_file).unwrap_or_default();
    let assertion = field("client_assertion");
    if state.refuse_assertion.load(Ordering::SeqCst) || assertion != expected.trim() {
        let subject =
            AssertionClaims::from_jwt(assertion).map_or_else(|| "<unreadable>".into(), |c| c.sub);
        return aad_error(
            bad,
            "invalid_client",
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{subject}'. \
                 Check your federated identity credential Subject, Audience and Issuer against the presented assertion."
            ),
        );
    }
    let scope = field("scope");
    if scope != ADO_SCOPE {
        return aad_error(
            bad,
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {scope} was not found in the tenant named {tenant}."
            ),
        );
    }
    let lifetime = config.token_lifetime;
    let access_token = state.tokens.issue(lifetime);
    state.issued.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "ext_expires_in": lifetime.as_secs(),
        "access_token": access_token,
    }))
    .into_response()
}
