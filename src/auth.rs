//! Where ADO credentials come from: workload identity (default), managed identity, or a PAT file
//! for local development. All of them share the one HTTP client that also talks to ADO, so a
//! corporate CA configured once (`--ca-file`) covers Entra and ADO alike.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{AccessToken, Secret, TokenCredential},
    http::{
        ClientMethodOptions, ClientOptions, Context, ExponentialRetryOptions, Request,
        RetryOptions, Transport,
        policies::{Policy, PolicyResult},
    },
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};
use base64::Engine as _;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::{
    error::{Error, Result},
    telemetry::ResultLabels,
};

/// Entra resource id of Azure DevOps; `/.default` asks for the roles granted to the identity.
pub const ADO_SCOPE: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    WorkloadIdentity,
    ManagedIdentity,
    Pat,
}

/// What the AKS workload-identity webhook injects into a pod.
#[derive(Debug, Clone)]
pub struct WorkloadIdentity {
    pub client_id: String,
    pub tenant_id: String,
    pub token_file: PathBuf,
    /// `AZURE_AUTHORITY_HOST`; Azure public cloud when absent.
    pub authority_host: Option<String>,
}

impl WorkloadIdentity {
    /// Reads the webhook's variables through `var`, naming the first one missing.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let need = |name: &str| {
            var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                Error::Config(format!(
                    "{name} is not set: is the pod labelled azure.workload.identity/use=true and its \
                     service account annotated with azure.workload.identity/client-id?"
                ))
            })
        };
        Ok(Self {
            client_id: need("AZURE_CLIENT_ID")?,
            tenant_id: need("AZURE_TENANT_ID")?,
            token_file: need("AZURE_FEDERATED_TOKEN_FILE")?.into(),
            authority_host: var("AZURE_AUTHORITY_HOST").filter(|v| !v.is_empty()),
        })
    }

    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// The resolved choice of credential.
#[derive(Debug, Clone)]
pub enum AuthSettings {
    WorkloadIdentity(WorkloadIdentity),
    /// A user-assigned identity by client id, or the system-assigned one.
    ManagedIdentity {
        client_id: Option<String>,
    },
    Pat {
        file: PathBuf,
    },
}

/// How a command authenticates, as its flags say: `serve`, `agent` and `check` all build
/// their credential and HTTP client from this, through [`CredentialSettings::resolve`] and
/// [`CredentialSettings::http_client`].
#[derive(Debug, Clone)]
pub struct CredentialSettings {
    pub mode: AuthMode,
    /// The PAT file of `--auth pat`.
    pub pat_file: Option<PathBuf>,
    /// The flag that names it, for errors (`--pat-file`; the agent's `--token-file`).
    pub pat_flag: &'static str,
    /// `--ca-file`: extra PEM roots for ADO and Entra.
    pub ca_file: Option<PathBuf>,
}

/// The identity and the one HTTP client every ADO and Entra call of a process shares.
#[derive(Debug, Clone)]
pub struct Connection {
    pub auth: AuthSettings,
    pub http: reqwest::Client,
}

impl CredentialSettings {
    /// Resolves the mode from an environment (`env`: the process's, or a test's): the
    /// workload-identity webhook's variables, a managed identity's client id, the PAT file.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<AuthSettings> {
        if self.pat_file.is_some() && self.mode != AuthMode::Pat {
            return Err(Error::Config(format!(
                "{} is only used with --auth pat",
                self.pat_flag
            )));
        }
        match self.mode {
            AuthMode::WorkloadIdentity => Ok(AuthSettings::WorkloadIdentity(
                WorkloadIdentity::from_lookup(env)?,
            )),
            AuthMode::ManagedIdentity => Ok(AuthSettings::ManagedIdentity {
                client_id: env("AZURE_CLIENT_ID").filter(|v| !v.is_empty()),
            }),
            AuthMode::Pat => self
                .pat_file
                .clone()
                .map(|file| AuthSettings::Pat { file })
                .ok_or_else(|| Error::Config(format!("--auth pat needs {}", self.pat_flag))),
        }
    }

    /// The HTTP client, trusting `--ca-file`'s roots besides the system's.
    pub fn http_client(&self) -> Result<reqwest::Client> {
        let ca = self
            .ca_file
            .as_deref()
            .map(|path| {
                std::fs::read(path)
                    .map_err(|e| Error::Config(format!("--ca-file {}: {e}", path.display())))
            })
            .transpose()?;
        http_client(ca.as_deref())
    }

    /// Both, from the process environment.
    pub fn connect(&self) -> Result<Connection> {
        Ok(Connection {
            auth: self.resolve(&|name| std::env::var(name).ok())?,
            http: self.http_client()?,
        })
    }
}

/// Builds the HTTP client shared by ADO calls and token requests.
///
/// Redirects are not followed: ADO redirects an unaccepted caller to a sign-in page, and a
/// bearer token must never be replayed to wherever a redirect points.
pub fn http_client(extra_roots_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let mut builder = client_builder();
    if let Some(pem) = extra_roots_pem {
        builder = builder.tls_certs_merge(pem_roots(pem, "--ca-file")?);
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
}

/// The same client for a server of our own (the registrar), trusting *only* the roots in
/// `roots_pem`: a certificate they did not sign fails the handshake, so the bearer token is
/// never sent to whoever answered.
pub fn pinned_http_client(roots_pem: &[u8], flag: &str) -> Result<reqwest::Client> {
    client_builder()
        .tls_certs_only(pem_roots(roots_pem, flag)?)
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("ado-scaler/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .pool_idle_timeout(Duration::from_secs(90))
}

fn pem_roots(pem: &[u8], flag: &str) -> Result<Vec<reqwest::Certificate>> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| Error::Config(format!("{flag}: not a PEM bundle: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{flag}: no certificate in the file")));
    }
    Ok(certs)
}

/// Gives out `Authorization` header values for ADO.
///
/// Entra tokens come from azure_identity's cache, which refreshes them five minutes before
/// expiry: polls cost no token request.
#[derive(Clone)]
pub struct TokenSource {
    inner: Inner,
    identity: Arc<str>,
}

#[derive(Clone)]
enum Inner {
    Credential {
        credential: Arc<dyn TokenCredential>,
        /// What to say when the exchange fails.
        workload_identity: Option<WorkloadIdentity>,
        current: Arc<CurrentToken>,
    },
    Pat(Secret),
}

/// The current Entra token, renewed off the request path.
///
/// azure_identity's cache asks Entra for a new token five minutes before expiry, on the
/// caller's time, and when that fails it returns the error although its token is still valid
/// (azure_identity 1.0 `cache.rs`, `should_refresh`). Here a caller gets the current token
/// while it is valid and the renewal runs in the background, so an Entra outage or a slow
/// exchange costs a poll nothing until the token really expires; only a caller with no valid
/// token waits for Entra.
#[derive(Default)]
struct CurrentToken {
    token: Mutex<Option<AccessToken>>,
    renewing: AtomicBool,
    /// A failing renewal is logged once, not at every poll.
    degraded: AtomicBool,
}

impl CurrentToken {
    /// A token must outlive the request it is sent with.
    const MARGIN: time::Duration = time::Duration::seconds(10);
    /// When renewals start, as azure_identity's cache does.
    const RENEW_BEFORE: time::Duration = time::Duration::minutes(5);

    /// The current token if it is valid for more than [`Self::MARGIN`], and whether it is
    /// due for renewal.
    fn valid(&self) -> Option<(Secret, bool)> {
        let now = time::OffsetDateTime::now_utc();
        let token = self.token.lock().expect("current token poisoned");
        let token = token
            .as_ref()
            .filter(|t| t.expires_on > now + Self::MARGIN)?;
        Some((
            token.token.clone(),
            token.expires_on <= now + Self::RENEW_BEFORE,
        ))
    }

    fn remember(&self, token: &AccessToken) {
        *self.token.lock().expect("current token poisoned") = Some(token.clone());
        if self.degraded.swap(false, Ordering::SeqCst) {
            tracing::info!("Entra tokens are issued again");
        }
    }

    fn renewal_failed(&self, error: &Error) {
        if !self.degraded.swap(true, Ordering::SeqCst) {
            tracing::warn!(%error, "could not renew the Entra token; using the current one until it expires");
        }
    }
}

/// The pod's projected service-account token, read at every exchange: kubelet rewrites the
/// file as it rotates the token, and an exchange is rare (about hourly). azure_identity's own
/// reader keeps its copy for ten minutes (`workload_identity_credential.rs`).
#[derive(Debug)]
struct FederatedTokenFile(PathBuf);

#[async_trait::async_trait]
impl ClientAssertion for FederatedTokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let token = tokio::fs::read_to_string(&self.0).await.map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!(
                    "failed to read federated token from file {}: {e}",
                    self.0.display()
                ),
            )
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("the federated token file {} is empty", self.0.display()),
            ));
        }
        Ok(token.to_owned())
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(
        settings: &AuthSettings,
        http: &reqwest::Client,
        metrics: Option<Arc<TokenMetrics>>,
    ) -> Result<Self> {
        let client_options = || {
            let mut options = ClientOptions {
                transport: Some(Transport::new(Arc::new(http.clone()))),
                // azure_core retries up to 8 times over a minute by default. A poll waits on
                // the token, and polls retry anyway: give up within seconds and say why.
                retry: RetryOptions::exponential(ExponentialRetryOptions {
                    max_retries: 3,
                    max_total_elapsed: time::Duration::seconds(10),
                    ..ExponentialRetryOptions::default()
                }),
                ..Default::default()
            };
            if let Some(metrics) = &metrics {
                options
                    .per_call_policies
                    .push(Arc::new(CountTokenRequests(metrics.clone())));
            }
            options
        };
        let token_err = |e: azure_core::Error| token_error(&e.to_string(), None);
        match settings {
            AuthSettings::WorkloadIdentity(wi) => {
                let mut credential_options = ClientAssertionCredentialOptions {
                    client_options: client_options(),
                };
                if let Some(host) = &wi.authority_host {
                    let mut custom = CustomConfiguration::default();
                    custom.authority_host = host.clone();
                    credential_options.client_options.cloud =
                        Some(Arc::new(CloudConfiguration::Custom(custom)));
                }
                let credential = ClientAssertionCredential::new(
                    wi.tenant_id.clone(),
                    wi.client_id.clone(),
                    FederatedTokenFile(wi.token_file.clone()),
                    Some(credential_options),
                )
                .map_err(token_err)?;
                Ok(Self {
                    inner: Inner::Credential {
                        credential,
                        workload_identity: Some(wi.clone()),
                        current: Arc::default(),
                    },
                    identity: format!("workload-identity:{}", wi.client_id).into(),
                })
            }
            AuthSettings::ManagedIdentity { client_id } => {
                let credential =
                    ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                        user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                        client_options: client_options(),
                    }))
                    .map_err(token_err)?;
                Ok(Self {
                    inner: Inner::Credential {
                        credential,
                        workload_identity: None,
                        current: Arc::default(),
                    },
                    identity: format!(
                        "managed-identity:{}",
                        client_id.as_deref().unwrap_or("system")
                    )
                    .into(),
                })
            }
            AuthSettings::Pat { file } => {
                let pat = std::fs::read_to_string(file)
                    .map_err(|e| Error::Config(format!("--pat-file {}: {e}", file.display())))?;
                let pat = pat.trim();
                if pat.is_empty() {
                    return Err(Error::Config(format!(
                        "--pat-file {} is empty",
                        file.display()
                    )));
                }
                Ok(Self {
                    inner: Inner::Pat(Secret::new(pat.to_owned())),
                    identity: "pat".into(),
                })
            }
        }
    }

    /// A stable name of the identity, for cache keys and logs (never the secret).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The raw secret ADO accepts from this identity: an Entra access token, or the PAT.
    /// The agent hands it to `config.sh`, which uses it once to register.
    pub async fn token(&self) -> Result<Secret> {
        match &self.inner {
            Inner::Credential {
                credential,
                workload_identity,
                current,
            } => {
                let exchange = || {
                    let (credential, current, wi) = (
                        credential.clone(),
                        current.clone(),
                        workload_identity.clone(),
                    );
                    async move {
                        let result = credential.get_token(&[ADO_SCOPE], None).await;
                        result
                            .inspect(|token| current.remember(token))
                            .map(|token| token.token)
                            .map_err(|e| token_error(&e.to_string(), wi.as_ref()))
                    }
                };
                match current.valid() {
                    Some((token, due)) => {
                        if due && !current.renewing.swap(true, Ordering::SeqCst) {
                            let (renewal, current) = (exchange(), current.clone());
                            tokio::spawn(async move {
                                if let Err(error) = renewal.await {
                                    current.renewal_failed(&error);
                                }
                                current.renewing.store(false, Ordering::SeqCst);
                            });
                        }
                        Ok(token)
                    }
                    None => exchange().await,
                }
            }
            Inner::Pat(pat) => Ok(pat.clone()),
        }
    }

    /// The value of the `Authorization` header for one ADO request.
    pub async fn authorization(&self) -> Result<Secret> {
        let token = self.token().await?;
        Ok(Secret::new(match &self.inner {
            Inner::Credential { .. } => format!("Bearer {}", token.secret()),
            Inner::Pat(_) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(":{}", token.secret()))
            ),
        }))
    }
}

/// Claims of a projected service-account token, read without verifying it: only to explain
/// which federated credential Entra looked for. Never holds the token itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct AssertionClaims {
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    #[serde(default)]
    pub exp: Option<i64>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match <OneOrMany as serde::Deserialize>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl AssertionClaims {
    /// Decodes the payload of a JWT; `None` when it is not one.
    pub fn from_jwt(token: &str) -> Option<Self> {
        let payload = token.trim().split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn from_file(path: &std::path::Path) -> Option<Self> {
        Self::from_jwt(&std::fs::read_to_string(path).ok()?)
    }
}

/// Entra's error, with what to change when its `AADSTS` code says: the pod's issuer and
/// subject (read from its projected token, never the token itself) go into the message, the
/// fix into the typed hint.
pub fn token_error(message: &str, wi: Option<&WorkloadIdentity>) -> Error {
    let claims = wi.and_then(|wi| AssertionClaims::from_file(&wi.token_file));
    let has = |code: &str| message.contains(code);
    let (detail, hint) = if has("AADSTS700213") || has("AADSTS70021:") {
        let presented = match (wi, &claims) {
            (Some(wi), Some(c)) => format!(
                "; the pod presents issuer '{}', subject '{}' to identity {}",
                c.iss, c.sub, wi.client_id
            ),
            _ => String::new(),
        };
        (
            presented,
            Some(
                "add a federated credential to the identity with the pod's issuer and subject \
                 (system:serviceaccount:<namespace>:<serviceaccount>) and audience \
                 'api://AzureADTokenExchange' (deploy/azure/setup.sh)",
            ),
        )
    } else if has("AADSTS700016") {
        (
            wi.map(|w| format!("; AZURE_CLIENT_ID is {}", w.client_id))
                .unwrap_or_default(),
            Some(
                "AZURE_CLIENT_ID is not an application in this tenant: check the service \
                 account's azure.workload.identity/client-id annotation",
            ),
        )
    } else if has("AADSTS90002") {
        (
            String::new(),
            Some(
                "AZURE_TENANT_ID names no tenant: check the azure.workload.identity/tenant-id annotation",
            ),
        )
    } else if has("AADSTS700024") || has("AADSTS50027") {
        (
            String::new(),
            Some(
                "the projected service-account token is expired or malformed: check the token volume",
            ),
        )
    } else {
        (String::new(), None)
    };
    Error::Token {
        message: format!("{message}{detail}"),
        hint,
    }
}

/// Token requests sent to Entra: `ado_scaler_token_requests_total{result}`.
#[derive(Debug, Default)]
pub struct TokenMetrics {
    pub requests: Family<ResultLabels, Counter>,
}

impl TokenMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        registry.register(
            "token_requests",
            "Token requests sent to Entra (cache misses), by result",
            metrics.requests.clone(),
        );
        Arc::new(metrics)
    }

    fn request(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.requests.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Counts real token requests (cache misses), so a token storm shows up on the dashboard.
#[derive(Debug)]
struct CountTokenRequests(Arc<TokenMetrics>);

#[async_trait::async_trait]
impl Policy for CountTokenRequests {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let response = next[0].send(ctx, request, &next[1..]).await;
        let ok = matches!(&response, Ok(r) if r.status().is_success());
        self.0.request(ok);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_token_is_served_while_valid_and_renewed_in_its_last_five_minutes() {
        let current = CurrentToken::default();
        assert!(current.valid().is_none(), "no token yet");
        let expiring_in = |seconds: i64| {
            current.remember(&AccessToken {
                token: Secret::new(format!("t{seconds}")),
                expires_on: time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds),
            });
            current
                .valid()
                .map(|(token, due)| (token.secret().to_owned(), due))
        };
        assert_eq!(expiring_in(3600), Some(("t3600".into(), false)));
        assert_eq!(expiring_in(310), Some(("t310".into(), false)));
        assert_eq!(expiring_in(290), Some(("t290".into(), true)));
        assert_eq!(expiring_in(11), Some(("t11".into(), true)));
        assert_eq!(expiring_in(9), None, "too close to expiry to be sent");
    }

    #[test]
    fn workload_identity_names_the_missing_variable() {
        let env = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                set.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let err = WorkloadIdentity::from_lookup(env(&[("AZURE_CLIENT_ID", "c")])).unwrap_err();
        assert!(err.to_string().contains("AZURE_TENANT_ID"), "{err}");
        let err = WorkloadIdentity::from_lookup(env(&[
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_FEDERATED_TOKEN_FILE", ""),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{err}"
        );
        let wi = WorkloadIdentity::from_lookup(env(&[
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ]))
        .unwrap();
        assert_eq!(wi.authority_host, None);
    }

    #[tokio::test]
    async fn pat_is_sent_as_basic_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("ado-scaler-pat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pat");
        std::fs::write(&file, "sekrit-pat\n").unwrap();
        let http = http_client(None).unwrap();
        let source = TokenSource::new(&AuthSettings::Pat { file }, &http, None).unwrap();
        let header = source.authorization().await.unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode(":sekrit-pat");
        assert_eq!(header.secret(), format!("Basic {expected}"));
        assert!(!format!("{source:?} {header:?}").contains("sekrit"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_assertion_claims_and_explains_entra_errors() {
        // A projected service-account token as the kubelet writes it (only its claims matter).
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let jwt = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k"}"#),
            b64(
                r#"{"aud":["api://AzureADTokenExchange"],"iss":"https://oidc.example/x/","sub":"system:serviceaccount:ci:agents"}"#
            ),
            b64("signature"),
        );
        let claims = AssertionClaims::from_jwt(&jwt).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:ci:agents");
        assert_eq!(claims.aud, ["api://AzureADTokenExchange"]);
        assert!(AssertionClaims::from_jwt("not-a-jwt").is_none());

        let dir = std::env::temp_dir().join(format!("ado-scaler-claims-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, &jwt).unwrap();
        let wi = WorkloadIdentity {
            client_id: "cid".into(),
            tenant_id: "tid".into(),
            token_file,
            authority_host: None,
        };
        let parts = |err: Error| match err {
            Error::Token { message, hint } => (message, hint),
            other => panic!("not a token error: {other:?}"),
        };
        let (msg, hint) = parts(token_error(
            "AADSTS700213: No matching federated identity record",
            Some(&wi),
        ));
        assert!(
            msg.contains("subject 'system:serviceaccount:ci:agents'"),
            "{msg}"
        );
        assert!(
            msg.contains("issuer 'https://oidc.example/x/'") && msg.contains("identity cid"),
            "{msg}"
        );
        assert!(!msg.contains(&jwt), "never the token itself");
        assert!(hint.unwrap().contains("federated credential"));
        let err = token_error("AADSTS70021: No matching federated identity record", None);
        assert!(
            err.to_string()
                .contains(" — to fix: add a federated credential"),
            "{err}"
        );
        let (msg, hint) = parts(token_error(
            "AADSTS700016: Application with identifier 'cid' was not found",
            Some(&wi),
        ));
        assert!(msg.ends_with("AZURE_CLIENT_ID is cid"), "{msg}");
        assert!(hint.unwrap().contains("azure.workload.identity/client-id"));
        let (_, hint) = parts(token_error("AADSTS90002: Tenant not found", Some(&wi)));
        assert!(hint.unwrap().contains("tenant-id"));
        for expired in ["AADSTS700024: expired", "AADSTS50027: invalid JWT"] {
            let (_, hint) = parts(token_error(expired, Some(&wi)));
            assert!(hint.unwrap().contains("expired or malformed"), "{expired}");
        }
        let err = token_error("something else", Some(&wi));
        assert_eq!(
            err.to_string(),
            "could not get an Entra token for Azure DevOps: something else"
        );
        assert_eq!(parts(err), ("something else".to_owned(), None));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn credentials_resolve_from_the_mode_and_name_the_flag() {
        let settings = |mode, pat_file: Option<&str>| CredentialSettings {
            mode,
            pat_file: pat_file.map(PathBuf::from),
            pat_flag: "--pat-file",
            ca_file: None,
        };
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let config = |r: Result<AuthSettings>| match r {
            Err(Error::Config(msg)) => msg,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        let none = env(&[]);

        // A PAT file only with --auth pat; --auth pat only with a file.
        for mode in [AuthMode::WorkloadIdentity, AuthMode::ManagedIdentity] {
            let msg = config(settings(mode, Some("/p")).resolve(&none));
            assert_eq!(msg, "--pat-file is only used with --auth pat");
        }
        assert!(matches!(
            settings(AuthMode::Pat, Some("/p")).resolve(&none),
            Ok(AuthSettings::Pat { file }) if file == std::path::Path::new("/p")
        ));
        let msg = config(settings(AuthMode::Pat, None).resolve(&none));
        assert_eq!(msg, "--auth pat needs --pat-file");

        // A managed identity: user-assigned by a non-empty client id, else system-assigned.
        let mi = |vars| settings(AuthMode::ManagedIdentity, None).resolve(&env(vars));
        assert!(matches!(
            mi(&[("AZURE_CLIENT_ID", "cid")]),
            Ok(AuthSettings::ManagedIdentity { client_id: Some(c) }) if c == "cid"
        ));
        assert!(matches!(
            mi(&[("AZURE_CLIENT_ID", "")]),
            Ok(AuthSettings::ManagedIdentity { client_id: None })
        ));

        // Workload identity: the webhook's variables, the first missing one named.
        let wi = |vars| settings(AuthMode::WorkloadIdentity, None).resolve(&env(vars));
        let vars = &[
            ("AZURE_CLIENT_ID", "cid"),
            ("AZURE_TENANT_ID", "tid"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
        ];
        assert!(matches!(
            wi(vars),
            Ok(AuthSettings::WorkloadIdentity(w)) if w.client_id == "cid" && w.tenant_id == "tid"
        ));
        assert!(config(wi(&vars[..2])).starts_with("AZURE_FEDERATED_TOKEN_FILE is not set"));
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let err = http_client(Some(b"not a pem")).unwrap_err();
        assert!(err.to_string().contains("--ca-file"), "{err}");
    }
}
