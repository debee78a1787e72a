//! Wires auth, ADO client, poller and the gRPC + HTTP listeners together, and shuts them down
//! in order: readiness and health go NOT_SERVING, streams end, in-flight calls finish.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    ado::{AdoClient, AdoMetrics},
    auth::{AuthSettings, TokenMetrics, TokenSource},
    claims::{ClaimMetrics, ClaimTracker},
    error::{Error, Result},
    gc::{GcMetrics, GcSettings},
    parallelism::{Parallelism, ParallelismMetrics, ParallelismSettings},
    placeholder::{PlaceholderMetrics, PlaceholderSettings, Placeholders},
    poller::{PollMetrics, Poller, PollerSettings},
    refresh::{RefreshMetrics, RefreshSettings},
    registrar::{Registrar, RegistrarMetrics, RegistrarSettings, certs::SelfManagedTls},
    scaler::{
        ScalerMetrics, ScalerService,
        access::Access,
        proto::external_scaler_server::ExternalScalerServer,
        tls::{ReloadingConfig, TlsMetrics, TlsSettings},
    },
    telemetry::MetricsRegistry,
};

/// How long calls still open at shutdown may run: within Kubernetes' default grace period,
/// and short enough that a rolling update is not held up.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(4);

/// Everything `serve` needs, already parsed.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Who may make the scaler act: organisations, namespaces, pools.
    pub access: Access,
    pub poller: PollerSettings,
    /// Capping queued jobs by the organisation's parallel jobs.
    pub parallelism: ParallelismSettings,
    pub placeholders: PlaceholderSettings,
    /// The stale-agent collector; `None`: off.
    pub gc: Option<GcSettings>,
    pub auth: AuthSettings,
    /// The shared HTTP client (with `--ca-file` roots) for ADO and Entra.
    pub http: reqwest::Client,
    /// `--max-body`: the largest ADO answer read.
    pub max_body: u64,
    /// gRPC over TLS (and mTLS); `None`: plaintext.
    pub grpc_tls: Option<TlsSettings>,
    /// ScaledJobs kept refreshed for KEDA's trigger TLS; `None`: off.
    pub refresh: Option<RefreshSettings>,
    /// The registrar (HTTPS); `None`: off.
    pub registrar: Option<RegistrarServe>,
}

/// What the registrar needs beyond its own settings.
#[derive(Debug, Clone)]
pub struct RegistrarServe {
    pub settings: RegistrarSettings,
    /// Its certificate (client certificates are never asked for).
    pub tls: RegistrarTls,
    /// The Kubernetes API for TokenReviews and owner checks; `None`: in-cluster.
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// Where the registrar's certificate comes from.
#[derive(Debug, Clone)]
pub enum RegistrarTls {
    /// Files (`--tls-cert`/`--tls-key`, e.g. cert-manager's), reloaded when they change.
    Files(TlsSettings),
    /// Made by the scaler and kept in a Secret; the CA published in a ConfigMap.
    SelfManaged(SelfManagedTls),
}

/// The bound listeners: KEDA's gRPC, metrics and probes, and the registrar's when it is on.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub registrar: Option<TcpListener>,
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<MetricsRegistry>,
    poller: Poller,
    ready: Arc<AtomicBool>,
}

/// Runs the scaler on two bound listeners until `shutdown` resolves, then drains.
///
/// One root token ends everything, and its children end in order: `serving` when shutdown
/// begins (servers stop accepting, the collector hands its Lease on), `streams` once health
/// says NOT_SERVING; the root itself after the drain (polls, placeholders, claims), or
/// whenever this function returns early.
pub async fn serve(
    settings: ServeSettings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let root = CancellationToken::new();
    let _stop_everything_on_return = root.clone().drop_guard();
    let serving = root.child_token();
    let streams = root.child_token();

    let mut registry = MetricsRegistry::new();
    // Registered with TLS off too: the dashboard shows the handshakes' zero series.
    let tls_metrics = TlsMetrics::register(registry.concern());
    let grpc_tls = settings
        .grpc_tls
        .clone()
        .map(|tls| ReloadingConfig::load(tls, tls_metrics))
        .transpose()?;
    let Listeners {
        grpc,
        http,
        registrar,
    } = listeners;
    let parts = Parts::start(
        settings,
        registrar,
        &mut registry,
        &root,
        &serving,
        &streams,
    )
    .await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExternalScalerServer<ScalerService>>()
        .await;
    let ready = Arc::new(AtomicBool::new(true));
    tokio::spawn(begin_shutdown(
        shutdown,
        serving.clone(),
        streams.clone(),
        ready.clone(),
        health,
    ));

    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(grpc_addr = %addr(&grpc), http_addr = %addr(&http), "ado-scaler serving");
    let http_server = serve_http(
        http,
        HttpState {
            metrics: Arc::new(registry),
            poller: parts.poller,
            ready,
        },
        serving.clone(),
    );
    let grpc_router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(ExternalScalerServer::new(parts.service));
    let grpc_server = serve_grpc(grpc_router, grpc, grpc_tls, serving.clone());
    let served = drain(
        async {
            grpc_server
                .await
                .map_err(|e| Error::Config(format!("gRPC server: {e}")))
        },
        async {
            http_server
                .await
                .map_err(|e| Error::Config(format!("HTTP server: {e}")))
        },
        &serving,
    )
    .await;

    root.cancel();
    if let Some(collector) = parts.collector
        && let Err(e) = collector.await
    {
        tracing::error!(error = %e, "stale-agent collector panicked");
    }
    served?;
    tracing::info!("ado-scaler stopped");
    Ok(())
}

/// The concerns behind the two listeners, each registering its own metrics.
struct Parts {
    service: ScalerService,
    poller: Poller,
    collector: Option<tokio::task::JoinHandle<()>>,
}

impl Parts {
    async fn start(
        settings: ServeSettings,
        registrar_listener: Option<TcpListener>,
        registry: &mut MetricsRegistry,
        root: &CancellationToken,
        serving: &CancellationToken,
        streams: &CancellationToken,
    ) -> Result<Self> {
        let concern = registry.concern();
        let token = TokenSource::new(
            &settings.auth,
            &settings.http,
            Some(TokenMetrics::register(concern)),
        )?;
        if matches!(settings.auth, AuthSettings::Pat { .. }) {
            tracing::warn!(
                "authenticating with a PAT file: for local development only; use workload identity in clusters"
            );
        }
        settings.access.warn_if_open();
        let ado = AdoClient::new(settings.http.clone(), token, AdoMetrics::register(concern))
            .with_max_body(settings.max_body);
        let placeholders = Placeholders::new(
            ado.clone(),
            settings.placeholders,
            PlaceholderMetrics::register(concern),
            root.clone(),
        );
        let gc_metrics = GcMetrics::register(concern);
        // The collector stops (and hands its Lease on) as soon as shutdown starts.
        let collector = match settings.gc {
            Some(gc) => Some(crate::gc::start(gc, ado.clone(), gc_metrics, serving.clone()).await?),
            None => None,
        };
        let refresh_metrics = RefreshMetrics::register(concern);
        if let Some(refresh) = settings.refresh {
            crate::refresh::start(refresh, refresh_metrics, serving.clone()).await?;
        }
        let registrar_metrics = RegistrarMetrics::register(concern);
        match (settings.registrar, registrar_listener) {
            (Some(registrar), Some(listener)) => {
                let kube = crate::k8s::client(registrar.kubeconfig.as_deref()).await?;
                let files = match registrar.tls {
                    RegistrarTls::Files(files) => files,
                    RegistrarTls::SelfManaged(managed) => {
                        crate::registrar::certs::ensure(&kube, &managed).await?
                    }
                };
                let tls = ReloadingConfig::load_https(
                    files,
                    TlsMetrics::register(concern.sub_registry_with_prefix("registrar")),
                )?;
                let server = Registrar::new(
                    registrar.settings,
                    settings.access.clone(),
                    ado.clone(),
                    kube,
                    registrar_metrics,
                );
                // Deregistration goes on through the drain: a pod ending now is still cleaned.
                tokio::spawn(server.clone().clean_up(root.clone()));
                let stop = serving.clone();
                tokio::spawn(async move {
                    if let Err(e) = server.serve(listener, tls, stop).await {
                        tracing::error!(error = %e, "registrar stopped");
                    }
                });
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "the registrar needs both its settings and a bound listener".into(),
                ));
            }
        }
        let poller = Poller::new(
            ado.clone(),
            settings.poller,
            PollMetrics::register(concern),
            root.clone(),
        );
        let parallelism = Parallelism::new(
            ado,
            poller.clone(),
            ParallelismSettings {
                idle_timeout: settings.poller.idle_timeout,
                ..settings.parallelism
            },
            ParallelismMetrics::register(concern),
            root.clone(),
        );
        let claims = ClaimTracker::new(
            poller.clone(),
            ClaimMetrics::register(concern),
            root.clone(),
        );
        let service = ScalerService::new(
            poller.clone(),
            settings.access,
            ScalerMetrics::register(concern),
            streams.clone(),
            placeholders,
            claims,
            parallelism,
        );
        Ok(Self {
            service,
            poller,
            collector,
        })
    }
}

/// When `shutdown` resolves: readiness fails, health says NOT_SERVING, then open streams end
/// (KEDA falls back to polling a replica that still serves).
async fn begin_shutdown(
    shutdown: impl Future<Output = ()>,
    serving: CancellationToken,
    streams: CancellationToken,
    ready: Arc<AtomicBool>,
    health: tonic_health::server::HealthReporter,
) {
    tokio::select! {
        () = shutdown => serving.cancel(),
        () = serving.cancelled() => {}
    }
    tracing::info!("shutting down: health NOT_SERVING, draining calls");
    ready.store(false, Ordering::SeqCst);
    health
        .set_not_serving::<ExternalScalerServer<ScalerService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    streams.cancel();
}

/// `/metrics`, `/healthz` and `/readyz` until shutdown begins.
async fn serve_http(
    listener: TcpListener,
    state: HttpState,
    serving: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(serving.cancelled_owned())
        .await
}

/// KEDA's gRPC API, over TLS when configured, until shutdown begins.
async fn serve_grpc(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<ReloadingConfig>>,
    serving: CancellationToken,
) -> std::result::Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            tokio::spawn(tls.clone().watch(serving.clone()));
            let incoming = crate::scaler::tls::incoming(listener, tls, serving.clone());
            router
                .serve_with_incoming_shutdown(incoming, serving.cancelled_owned())
                .await
        }
        None => {
            // No Nagle: a small gRPC answer must not wait for the client's delayed ACK
            // (40 ms stalls at the tail).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, serving.cancelled_owned())
                .await
        }
    }
}

/// Calls in flight finish; a stream that never ends by itself (a health Watch) must not hold
/// the process until the kubelet's SIGKILL: [`DRAIN_DEADLINE`] after shutdown began, the
/// servers are dropped with what is still open.
async fn drain(
    grpc: impl Future<Output = Result<()>>,
    http: impl Future<Output = Result<()>>,
    serving: &CancellationToken,
) -> Result<()> {
    let deadline = async {
        serving.cancelled().await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
        tracing::warn!(deadline = ?DRAIN_DEADLINE, "drain deadline passed; closing the calls still open");
    };
    tokio::select! {
        (grpc, http) = async { tokio::join!(grpc, http) } => grpc.and(http),
        () = deadline => Ok(()),
    }
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    state.poller.update_age_gauges();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn ready_handler(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    }
}
