//! The registrar: registers an agent pod's own public key in its pool, so that the containers
//! running pipeline steps hold nothing that can register an agent or act as our identity.
//!
//! `POST /v1/registrations` (HTTPS only) with the pod's projected service-account token and
//! the public half of a key the pod just made. The caller is proven by the Kubernetes API
//! ([`review`]: TokenReview, then pod → Job → ScaledJob by controller UID), the pool comes from
//! that ScaledJob's trigger under the same access policy as gRPC, and the agent is named after
//! the pod (what the collector matches). One registration per pod UID: the same key again gets
//! the same answer (a retried init container), another key gets 409.
//!
//! - [`wire`]: the request, answer and refusal bodies `agent prepare` shares.
//! - [`review`]: who is asking.
//! - [`certs`]: its TLS material without cert-manager (a Secret, the CA in a ConfigMap).
//! - [`cleanup`]: deleting each registration once its pod's agent container has ended.

pub mod certs;
pub mod cleanup;
pub mod review;
pub mod wire;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine as _;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::{
    ado::{
        AdoClient,
        models::{Agent, AgentAuthorization, AgentPublicKey},
    },
    error::Error,
    scaler::{
        access::Access,
        metadata::{PoolRef, Trigger},
        tls::ReloadingConfig,
    },
};
use review::{PodIdentity, Workload};
use wire::{RegistrationAnswer, RegistrationRequest};

/// The service accounts agent pods run as when none is configured: what `deploy/` names.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "ado-agent";

/// The trigger types whose metadata names our organisation and pool.
const TRIGGER_TYPES: [&str; 2] = ["external", "external-push"];

/// Registrations remembered for repeats: longer than any init container retries.
const REMEMBER_FOR: Duration = Duration::from_secs(3600);

/// `--registrar-*`, already parsed.
#[derive(Debug, Clone)]
pub struct RegistrarSettings {
    /// Namespaces whose agent pods may register; never empty.
    pub namespaces: Vec<String>,
    /// Service accounts agent pods run as.
    pub service_accounts: Vec<String>,
    /// How often registered pods are looked at ([`cleanup::CLEANUP_INTERVAL`] in `serve`).
    pub cleanup_interval: Duration,
}

impl RegistrarSettings {
    /// The pod's namespace and service account must be listed.
    fn admit(&self, who: &PodIdentity) -> Result<(), Refused> {
        if !self.namespaces.contains(&who.namespace) {
            return Err(Refused::Namespace(who.namespace.clone()));
        }
        if !self.service_accounts.contains(&who.service_account) {
            return Err(Refused::ServiceAccount(who.service_account.clone()));
        }
        Ok(())
    }
}

/// The one trigger of ours the ScaledJob has, admitted as gRPC would admit it.
fn trigger_of(access: &Access, who: &PodIdentity, workload: &Workload) -> Result<Trigger, Refused> {
    let refused = |reason: String| Refused::Trigger {
        scaled_job: workload.scaled_job.clone(),
        reason,
    };
    let mut admitted: Vec<Trigger> = Vec::new();
    let mut first_error = None;
    for (_, meta) in workload
        .triggers
        .iter()
        .filter(|(kind, _)| TRIGGER_TYPES.contains(&kind.as_str()))
    {
        match access.admit(&who.namespace, meta) {
            Ok(t) => {
                if !admitted.iter().any(|a| a.org == t.org && a.pool == t.pool) {
                    admitted.push(t);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    match admitted.len() {
        1 => Ok(admitted.remove(0)),
        0 => Err(refused(first_error.unwrap_or_else(|| {
            "has no external trigger of this scaler".into()
        }))),
        n => Err(refused(format!(
            "its {n} triggers name different pools: the pod's pool is ambiguous"
        ))),
    }
}

/// The agent `config.sh` would register for the pod: named after it, one job at a time, with
/// the pod's public key and nothing the pod did not send.
fn registration(who: &PodIdentity, request: &RegistrationRequest) -> Agent {
    Agent {
        name: who.pod_name.clone(),
        version: Some(request.version.clone()),
        os_description: Some(request.os_description.clone()),
        enabled: Some(true),
        max_parallelism: Some(1),
        authorization: Some(AgentAuthorization {
            public_key: request.public_key.clone(),
            ..AgentAuthorization::default()
        }),
        ..Agent::default()
    }
}

/// Why a registration was refused; each is one HTTP status and one metric reason.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("request body: {0}")]
    BadRequest(String),
    #[error("the service-account token was not accepted: {0}")]
    BadToken(String),
    #[error(
        "the token is not bound to a pod: mount a projected service-account token (audience {}) into the init container",
        wire::TOKEN_AUDIENCE
    )]
    NotPodBound,
    #[error("the token's pod {0} no longer exists")]
    PodGone(String),
    #[error("namespace {0:?} is not in --registrar-namespaces (ADO_SCALER_REGISTRAR_NAMESPACES)")]
    Namespace(String),
    #[error(
        "service account {0:?} is not in --registrar-service-accounts (ADO_SCALER_REGISTRAR_SERVICE_ACCOUNTS)"
    )]
    ServiceAccount(String),
    #[error("{0}")]
    OwnerChain(String),
    #[error("ScaledJob {scaled_job}: {reason}")]
    Trigger { scaled_job: String, reason: String },
    #[error("pod {0} is already registered with another key")]
    Conflict(String),
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
    #[error("Azure DevOps: {0}")]
    Ado(Error),
}

impl Refused {
    /// The metric reason and the body's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::BadToken(_) => "bad_token",
            Self::NotPodBound => "not_pod_bound",
            Self::PodGone(_) => "pod_gone",
            Self::Namespace(_) => "namespace",
            Self::ServiceAccount(_) => "service_account",
            Self::OwnerChain(_) => "owner_chain",
            Self::Trigger { .. } => "trigger",
            Self::Conflict(_) => "conflict",
            Self::Kubernetes(_) => "kubernetes_unavailable",
            Self::Ado(Error::Token { .. }) => "entra_failed",
            Self::Ado(_) => "ado_failed",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BadToken(_) | Self::NotPodBound | Self::PodGone(_) => StatusCode::UNAUTHORIZED,
            Self::Namespace(_)
            | Self::ServiceAccount(_)
            | Self::OwnerChain(_)
            | Self::Trigger { .. } => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Kubernetes(_) | Self::Ado(Error::Token { .. } | Error::RateLimited { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Ado(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Every reason, for the zero series.
    pub const REASONS: [&'static str; 12] = [
        "bad_request",
        "bad_token",
        "not_pod_bound",
        "pod_gone",
        "namespace",
        "service_account",
        "owner_chain",
        "trigger",
        "conflict",
        "kubernetes_unavailable",
        "entra_failed",
        "ado_failed",
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// `ado_scaler_registrations_total{result}` and how long each answer took.
pub struct RegistrarMetrics {
    registrations: Family<ResultLabels, Counter>,
    seconds: Histogram,
    deregistrations: Family<ResultLabels, Counter>,
    registered_agents: Gauge,
}

impl RegistrarMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            registrations: Family::default(),
            seconds: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            deregistrations: Family::default(),
            registered_agents: Gauge::default(),
        };
        for result in ["deleted", "failed"] {
            let _ = metrics
                .deregistrations
                .get_or_create(&ResultLabels { result });
        }
        registry.register(
            "registrar_deregistrations",
            "Registrations the registrar deleted after their pod's agent container ended (failed: ADO refused, retried)",
            metrics.deregistrations.clone(),
        );
        registry.register(
            "registrar_registered_agents",
            "Agents this replica registered whose pods have not ended yet",
            metrics.registered_agents.clone(),
        );
        for result in ["registered", "repeated"]
            .into_iter()
            .chain(Refused::REASONS)
        {
            let _ = metrics
                .registrations
                .get_or_create(&ResultLabels { result });
        }
        registry.register(
            "registrations",
            "Agent registrations asked of the registrar, by result (registered, repeated, or why refused)",
            metrics.registrations.clone(),
        );
        registry.register(
            "registration_duration_seconds",
            "Time from a registration request to its answer",
            metrics.seconds.clone(),
        );
        Arc::new(metrics)
    }
}

/// The answer given to a pod, and the key it was given for.
struct Record {
    public_key: AgentPublicKey,
    answer: RegistrationAnswer,
    at: Instant,
}

/// The registrar's state: who may register, the clients it asks, what it registered.
pub struct Registrar {
    settings: RegistrarSettings,
    access: Access,
    ado: AdoClient,
    kube: kube::Client,
    metrics: Arc<RegistrarMetrics>,
    /// By pod UID; each cell is locked for the whole of one registration, so a pod's
    /// concurrent attempts register once.
    records: Mutex<HashMap<String, Cell>>,
    /// By pod UID: what [`cleanup`] deletes once the pod has ended.
    registered: Mutex<HashMap<String, cleanup::Registered>>,
}

impl Registrar {
    pub fn new(
        settings: RegistrarSettings,
        access: Access,
        ado: AdoClient,
        kube: kube::Client,
        metrics: Arc<RegistrarMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            access,
            ado,
            kube,
            metrics,
            records: Mutex::default(),
            registered: Mutex::default(),
        })
    }

    /// Serves HTTPS on `listener` until `stop`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<ReloadingConfig>,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        tokio::spawn(tls.clone().watch(stop.clone()));
        let incoming = crate::scaler::tls::incoming(listener, tls, stop.clone());
        let app = Router::new()
            .route(wire::REGISTRATIONS_PATH, post(handle))
            .layer(DefaultBodyLimit::max(wire::MAX_REQUEST_BYTES))
            .with_state(self);
        tracing::info!(registrar_addr = %local, "registrar serving");
        axum::serve(TlsListener { incoming, local }, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    }

    /// The named steps of one registration.
    async fn register(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(RegistrationAnswer, bool), Refused> {
        let token = bearer(headers)?;
        let request = parse_request(body)?;
        let who = review::review_token(&self.kube, token).await?;
        self.settings.admit(&who)?;
        let workload = review::workload(&self.kube, &who).await?;
        let trigger = trigger_of(&self.access, &who, &workload)?;
        let cell = self.cell(&who.pod_uid);
        let mut record = cell.lock().await;
        if let Some(done) = record.as_ref() {
            return if done.public_key == request.public_key {
                Ok((done.answer.clone(), true))
            } else {
                Err(Refused::Conflict(who.pod_name.clone()))
            };
        }
        let answer = self.add_agent(&who, &trigger, &request).await?;
        self.registered.lock().expect("registered").insert(
            who.pod_uid.clone(),
            cleanup::Registered {
                namespace: who.namespace.clone(),
                pod_name: who.pod_name.clone(),
                org: trigger.org.clone(),
                pool_id: answer.pool_id,
                agent_id: answer.agent_id,
            },
        );
        *record = Some(Record {
            public_key: request.public_key,
            answer: answer.clone(),
            at: Instant::now(),
        });
        Ok((answer, false))
    }

    async fn add_agent(
        &self,
        who: &PodIdentity,
        trigger: &Trigger,
        request: &RegistrationRequest,
    ) -> Result<RegistrationAnswer, Refused> {
        let org = &trigger.org;
        let (pool_id, pool_name) = match &trigger.pool {
            PoolRef::Name(name) => {
                let pool = self.ado.find_pool(org, name).await.map_err(Refused::Ado)?;
                (pool.id, pool.name)
            }
            PoolRef::Id(id) => (*id, id.to_string()),
        };
        let created = self
            .ado
            .add_agent(org, pool_id, &registration(who, request))
            .await
            .map_err(Refused::Ado)?
            // An agent of the pod's name exists that this replica did not register.
            .ok_or_else(|| Refused::Conflict(who.pod_name.clone()))?;
        let auth = created.authorization.unwrap_or_default();
        let (Some(client_id), Some(authorization_url)) = (auth.client_id, auth.authorization_url)
        else {
            return Err(Refused::Ado(Error::Agent(
                "the registration's answer has no authorization.clientId or authorizationUrl"
                    .into(),
            )));
        };
        Ok(RegistrationAnswer {
            agent_id: created.id,
            agent_name: created.name,
            pool_id,
            pool_name,
            server_url: org.to_string(),
            client_id,
            authorization_url,
        })
    }

    /// The pod's cell, after pruning the others ([`prune`]).
    fn cell(&self, pod_uid: &str) -> Cell {
        let mut records = self.records.lock().expect("records");
        prune(&mut records, Instant::now());
        records.entry(pod_uid.to_owned()).or_default().clone()
    }
}

/// One pod's registration, locked for the whole of one attempt.
type Cell = Arc<tokio::sync::Mutex<Option<Record>>>;

/// Drops the cells no request holds whose registration failed, or succeeded long enough ago
/// that no init container still retries; without it each failed attempt would stay until a
/// restart. The caller holds the map's lock: a count of one is the map's own reference.
fn prune(records: &mut HashMap<String, Cell>, now: Instant) {
    records.retain(|_, cell| {
        Arc::strong_count(cell) > 1
            || cell.try_lock().is_ok_and(|r| {
                r.as_ref()
                    .is_some_and(|r| now.duration_since(r.at) < REMEMBER_FOR)
            })
    });
}

async fn handle(
    State(registrar): State<Arc<Registrar>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let outcome = registrar.register(&headers, &body).await;
    let result = match &outcome {
        Ok((_, false)) => "registered",
        Ok((_, true)) => "repeated",
        Err(refused) => refused.reason(),
    };
    registrar
        .metrics
        .registrations
        .get_or_create(&ResultLabels { result })
        .inc();
    registrar
        .metrics
        .seconds
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok((answer, _)) => {
            tracing::info!(agent = %answer.agent_name, agent_id = answer.agent_id, pool = %answer.pool_name, result, "agent registered");
            Json(answer).into_response()
        }
        Err(refused) => {
            tracing::warn!(reason = result, error = %refused, "registration refused");
            let status = refused.status();
            let body = wire::Refusal {
                reason: result.to_owned(),
                message: refused.to_string(),
            };
            (status, Json(body)).into_response()
        }
    }
}

/// The bearer token, never logged or echoed.
fn bearer(headers: &HeaderMap) -> Result<&str, Refused> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
        .ok_or_else(|| Refused::BadToken("no `Authorization: Bearer` token".into()))
}

/// The body, with a public key that is an RSA key of the agent's size.
fn parse_request(body: &[u8]) -> Result<RegistrationRequest, Refused> {
    let request: RegistrationRequest =
        serde_json::from_slice(body).map_err(|e| Refused::BadRequest(e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let modulus = b64
        .decode(&request.public_key.modulus)
        .map_err(|_| Refused::BadRequest("publicKey.modulus: not base64".into()))?;
    let exponent = b64
        .decode(&request.public_key.exponent)
        .map_err(|_| Refused::BadRequest("publicKey.exponent: not base64".into()))?;
    if !(256..=512).contains(&modulus.len()) || modulus[0] == 0 {
        return Err(Refused::BadRequest(
            "publicKey.modulus: an RSA key of 2048 to 4096 bits is needed".into(),
        ));
    }
    if exponent != [1, 0, 1] {
        return Err(Refused::BadRequest(
            "publicKey.exponent: must be 65537".into(),
        ));
    }
    let printable = |s: &str, max: usize| {
        !s.trim().is_empty() && s.len() <= max && s.chars().all(|c| !c.is_control())
    };
    if !printable(&request.version, 32)
        || !request
            .version
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(Refused::BadRequest(
            "version: the listener's version (digits and dots) is needed".into(),
        ));
    }
    if !printable(&request.os_description, 256) {
        return Err(Refused::BadRequest(
            "osDescription: up to 256 printable characters".into(),
        ));
    }
    Ok(request)
}

/// Connections whose TLS handshake succeeded, as axum's listener.
struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt as _;
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream
                        .get_ref()
                        .0
                        .peer_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                // Stopped: graceful shutdown ends the server; nothing more is accepted.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_json(modulus_len: usize, exponent: &[u8]) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut modulus = vec![0xC5; modulus_len];
        modulus[0] = 0xC1;
        serde_json::json!({
            "publicKey": { "exponent": b64.encode(exponent), "modulus": b64.encode(modulus) },
            "version": "4.266.2",
            "osDescription": "Linux 6.8",
        })
    }

    fn parsed(body: serde_json::Value) -> Result<RegistrationRequest, Refused> {
        parse_request(body.to_string().as_bytes())
    }

    #[test]
    fn a_request_needs_an_agent_sized_rsa_key_and_a_version() {
        assert!(parsed(key_json(256, &[1, 0, 1])).is_ok());
        assert!(parsed(key_json(512, &[1, 0, 1])).is_ok());
        let refused = |body| match parsed(body) {
            Err(Refused::BadRequest(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(refused(key_json(128, &[1, 0, 1])).starts_with("publicKey.modulus"));
        assert!(refused(key_json(513, &[1, 0, 1])).starts_with("publicKey.modulus"));
        assert!(refused(key_json(256, &[3])).starts_with("publicKey.exponent"));
        let mut body = key_json(256, &[1, 0, 1]);
        body["version"] = "4.2; rm -rf".into();
        assert!(refused(body).starts_with("version"));
        let mut body = key_json(256, &[1, 0, 1]);
        body["osDescription"] = "x\n".into();
        assert!(refused(body).starts_with("osDescription"));
        let mut body = key_json(256, &[1, 0, 1]);
        body["privateKey"] = "oops".into();
        assert!(
            refused(body).contains("privateKey"),
            "unknown fields are refused"
        );
    }

    #[test]
    fn each_refusal_has_its_status_and_a_listed_reason() {
        let cases = [
            (Refused::BadRequest(String::new()), 400),
            (Refused::BadToken(String::new()), 401),
            (Refused::NotPodBound, 401),
            (Refused::PodGone(String::new()), 401),
            (Refused::Namespace(String::new()), 403),
            (Refused::ServiceAccount(String::new()), 403),
            (Refused::OwnerChain(String::new()), 403),
            (
                Refused::Trigger {
                    scaled_job: String::new(),
                    reason: String::new(),
                },
                403,
            ),
            (Refused::Conflict(String::new()), 409),
            (Refused::Kubernetes(String::new()), 503),
            (
                Refused::Ado(Error::Token {
                    message: String::new(),
                    hint: None,
                }),
                503,
            ),
            (Refused::Ado(Error::NotFound(String::new())), 502),
        ];
        for (refused, status) in &cases {
            assert_eq!(refused.status().as_u16(), *status, "{refused:?}");
            assert!(Refused::REASONS.contains(&refused.reason()), "{refused:?}");
        }
        let mut reasons: Vec<_> = cases.iter().map(|(r, _)| r.reason()).collect();
        reasons.dedup();
        assert_eq!(reasons.len(), Refused::REASONS.len());
    }

    #[test]
    fn only_held_cells_and_recent_registrations_are_remembered() {
        let record = |at| Record {
            public_key: AgentPublicKey::default(),
            answer: RegistrationAnswer {
                agent_id: 1,
                agent_name: "agents-1".into(),
                pool_id: 1,
                pool_name: "linux".into(),
                server_url: "https://dev.azure.com/org/".into(),
                client_id: "c".into(),
                authorization_url: "https://vstoken.dev.azure.com/x".into(),
            },
            at,
        };
        let at = Instant::now();
        let cell = |r: Option<Record>| Arc::new(tokio::sync::Mutex::new(r));
        // A request in progress holds its cell (and locks it).
        let held = cell(None);
        let mut records: HashMap<String, Cell> = HashMap::from([
            ("failed".into(), cell(None)),
            ("held".into(), held.clone()),
            ("recent".into(), cell(Some(record(at)))),
            ("old".into(), cell(Some(record(at)))),
        ]);
        // "old" is one second past REMEMBER_FOR; "recent" one second short of it.
        records
            .get_mut("recent")
            .unwrap()
            .try_lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .at = at + Duration::from_secs(2);
        prune(&mut records, at + REMEMBER_FOR + Duration::from_secs(1));
        let mut kept: Vec<_> = records.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["held", "recent"]);
        // Exactly REMEMBER_FOR old is forgotten.
        prune(&mut records, at + REMEMBER_FOR + Duration::from_secs(2));
        assert!(!records.contains_key("recent"));
    }

    fn pod(namespace: &str, service_account: &str) -> PodIdentity {
        PodIdentity {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod_name: "agents-1".into(),
            pod_uid: "uid-1".into(),
        }
    }

    #[test]
    fn the_registration_is_the_pods_own() {
        let request = parsed(key_json(256, &[1, 0, 1])).unwrap();
        let agent = registration(&pod("agents", "ado-agent"), &request);
        assert_eq!(agent.name, "agents-1");
        assert_eq!(agent.version.as_deref(), Some("4.266.2"));
        assert_eq!(agent.os_description.as_deref(), Some("Linux 6.8"));
        assert_eq!(
            (agent.enabled, agent.max_parallelism),
            (Some(true), Some(1))
        );
        let auth = agent.authorization.unwrap();
        assert_eq!(auth.public_key, request.public_key);
        assert_eq!((auth.client_id, auth.authorization_url), (None, None));
    }

    #[test]
    fn only_listed_namespaces_and_service_accounts_register() {
        let settings = RegistrarSettings {
            namespaces: vec!["agents".into()],
            service_accounts: vec!["ado-agent".into()],
            cleanup_interval: cleanup::CLEANUP_INTERVAL,
        };
        assert!(settings.admit(&pod("agents", "ado-agent")).is_ok());
        assert!(matches!(
            settings.admit(&pod("other", "ado-agent")),
            Err(Refused::Namespace(ns)) if ns == "other"
        ));
        assert!(matches!(
            settings.admit(&pod("agents", "default")),
            Err(Refused::ServiceAccount(sa)) if sa == "default"
        ));
    }

    #[test]
    fn the_pool_is_that_of_the_scaledjobs_one_admitted_trigger() {
        use crate::scaler::access::{NamespaceAllowlist, PoolAllowlist};
        let orgs = crate::scaler::allowlist::OrgAllowlist::default_cloud();
        let access = Access {
            namespaces: NamespaceAllowlist::parse(&["agents"]).unwrap(),
            pools: PoolAllowlist::default(),
            orgs,
        };
        let trigger = |kind: &str, org: &str, pool: &str| {
            (
                kind.to_owned(),
                HashMap::from([
                    ("organizationURL".to_owned(), org.to_owned()),
                    ("poolName".to_owned(), pool.to_owned()),
                ]),
            )
        };
        let of = |triggers: Vec<(String, HashMap<String, String>)>| {
            let workload = Workload {
                scaled_job: "agents".into(),
                triggers,
            };
            trigger_of(&access, &pod("agents", "ado-agent"), &workload)
        };
        let contoso = "https://dev.azure.com/contoso";
        let linux = of(vec![trigger("external", contoso, "linux")]).unwrap();
        assert_eq!(linux.pool, PoolRef::Name("linux".into()));
        // The same pool twice, or beside a trigger of another type, is still one pool.
        assert!(
            of(vec![
                trigger("cron", contoso, "gpu"),
                trigger("external-push", contoso, "linux"),
                trigger("external", contoso, "linux"),
            ])
            .is_ok()
        );
        let reason = |result: Result<Trigger, Refused>| match result {
            Err(Refused::Trigger { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(
            reason(of(vec![
                trigger("external", contoso, "linux"),
                trigger("external", contoso, "gpu"),
            ]))
            .contains("ambiguous")
        );
        assert!(
            reason(of(vec![trigger("cron", contoso, "linux")])).contains("no external trigger")
        );
        assert!(reason(of(vec![])).contains("no external trigger"));
        // A foreign organisation: the access policy's own words.
        assert!(
            reason(of(vec![trigger(
                "external",
                "https://dev.azure.com.evil.example/x",
                "linux"
            )]))
            .contains("allowed-orgs"),
        );
        // Another namespace's pod is refused by the policy too.
        let workload = Workload {
            scaled_job: "agents".into(),
            triggers: vec![trigger("external", contoso, "linux")],
        };
        assert!(trigger_of(&access, &pod("other", "ado-agent"), &workload).is_err());
    }

    #[test]
    fn the_bearer_token_is_required() {
        let mut headers = HeaderMap::new();
        assert!(matches!(bearer(&headers), Err(Refused::BadToken(_))));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(matches!(bearer(&headers), Err(Refused::BadToken(_))));
        headers.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap(), "tok");
        headers.insert(header::AUTHORIZATION, "Bearer   ".parse().unwrap());
        assert!(matches!(bearer(&headers), Err(Refused::BadToken(_))));
        // Up to 16 KiB: a projected token is about 1 KiB.
        let token = |len: usize| format!("Bearer {}", "t".repeat(len)).parse().unwrap();
        headers.insert(header::AUTHORIZATION, token(16 * 1024));
        assert_eq!(bearer(&headers).unwrap().len(), 16 * 1024);
        headers.insert(header::AUTHORIZATION, token(16 * 1024 + 1));
        assert!(matches!(bearer(&headers), Err(Refused::BadToken(_))));
    }
}
