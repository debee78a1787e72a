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
    ado::AdoClient,
    auth::{AuthSettings, TokenSource},
    claims::ClaimTracker,
    error::{Error, Result},
    gc::GcSettings,
    placeholder::{PlaceholderSettings, Placeholders},
    poller::{Poller, PollerSettings},
    refresh::{RefreshMetrics, RefreshSettings},
    scaler::{
        ScalerService,
        allowlist::OrgAllowlist,
        proto::external_scaler_server::ExternalScalerServer,
        tls::{ReloadingConfig, TlsMetrics, TlsSettings},
    },
    telemetry::Metrics,
};

/// How long calls still open at shutdown may run: within Kubernetes' default grace period,
/// and short enough that a rolling update is not held up.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(4);

/// Everything `serve` needs, already parsed.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub allowlist: OrgAllowlist,
    pub poller: PollerSettings,
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
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    poller: Poller,
    ready: Arc<AtomicBool>,
}

/// Runs the scaler on two bound listeners until `shutdown` resolves, then drains.
pub async fn serve(
    settings: ServeSettings,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut metrics = Metrics::new();
    let tls_metrics = TlsMetrics::register(metrics.registry_for_concern());
    let refresh_metrics = RefreshMetrics::register(metrics.registry_for_concern());
    let metrics = Arc::new(metrics);
    let grpc_tls = settings
        .grpc_tls
        .clone()
        .map(|tls| ReloadingConfig::load(tls, tls_metrics))
        .transpose()?;
    let token = TokenSource::new(&settings.auth, &settings.http, Some(metrics.clone()))?;
    if matches!(settings.auth, AuthSettings::Pat { .. }) {
        tracing::warn!(
            "authenticating with a PAT file: for local development only; use workload identity in clusters"
        );
    }
    let ado = AdoClient::new(settings.http.clone(), token, metrics.clone())
        .with_max_body(settings.max_body);
    let stop_polling = CancellationToken::new();
    let placeholders = Placeholders::new(
        ado.clone(),
        settings.placeholders,
        metrics.placeholders.clone(),
        stop_polling.clone(),
    );
    let stop = CancellationToken::new();
    // The collector stops (and hands its Lease on) as soon as shutdown starts.
    let collector = match settings.gc {
        Some(gc) => {
            Some(crate::gc::start(gc, ado.clone(), metrics.gc.clone(), stop.clone()).await?)
        }
        None => None,
    };
    if let Some(refresh) = settings.refresh {
        crate::refresh::start(refresh, refresh_metrics, stop.clone()).await?;
    }
    let poller = Poller::new(ado, settings.poller, metrics.clone(), stop_polling.clone());
    let claims = ClaimTracker::new(poller.clone(), metrics.claims.clone(), stop_polling.clone());
    let streams_end = CancellationToken::new();
    let service = ScalerService::new(
        poller.clone(),
        settings.allowlist,
        metrics.clone(),
        streams_end.clone(),
        placeholders,
        claims,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExternalScalerServer<ScalerService>>()
        .await;
    let ready = Arc::new(AtomicBool::new(true));

    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    tokio::spawn({
        let (stop, ready, streams_end, health) = (
            stop.clone(),
            ready.clone(),
            streams_end.clone(),
            health.clone(),
        );
        async move {
            stop.cancelled().await;
            tracing::info!("shutting down: health NOT_SERVING, draining calls");
            ready.store(false, Ordering::SeqCst);
            health
                .set_not_serving::<ExternalScalerServer<ScalerService>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            streams_end.cancel();
        }
    });

    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(grpc_addr = %addr(&grpc), http_addr = %addr(&http), "ado-scaler serving");

    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(HttpState {
            metrics,
            poller,
            ready,
        });
    let http_server = axum::serve(http, app).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });

    let grpc_router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(ExternalScalerServer::new(service));
    let grpc_stopped = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let grpc_server = async {
        match grpc_tls {
            Some(tls) => {
                tokio::spawn(tls.clone().watch(stop.clone()));
                let incoming = crate::scaler::tls::incoming(grpc, tls, stop.clone());
                grpc_router
                    .serve_with_incoming_shutdown(incoming, grpc_stopped)
                    .await
            }
            None => {
                // No Nagle: a small gRPC answer must not wait for the client's delayed ACK
                // (40 ms stalls at the tail).
                let incoming =
                    tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
                grpc_router
                    .serve_with_incoming_shutdown(incoming, grpc_stopped)
                    .await
            }
        }
    };

    // Calls in flight finish; a stream that never ends by itself (a health Watch) must not
    // hold the process until the kubelet's SIGKILL.
    let drained = async {
        let deadline = async {
            stop.cancelled().await;
            tokio::time::sleep(DRAIN_DEADLINE).await;
            tracing::warn!(deadline = ?DRAIN_DEADLINE, "drain deadline passed; closing the calls still open");
        };
        tokio::select! {
            results = async { tokio::join!(grpc_server, http_server) } => results,
            () = deadline => (Ok(()), Ok(())),
        }
    };
    let (grpc_result, http_result) = drained.await;
    stop_polling.cancel();
    if let Some(collector) = collector
        && let Err(e) = collector.await
    {
        tracing::error!(error = %e, "stale-agent collector panicked");
    }
    grpc_result.map_err(|e| Error::Config(format!("gRPC server: {e}")))?;
    http_result.map_err(|e| Error::Config(format!("HTTP server: {e}")))?;
    tracing::info!("ado-scaler stopped");
    Ok(())
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
