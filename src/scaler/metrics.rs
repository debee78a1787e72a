//! What the gRPC service reports: KEDA's calls by method and status, their latency, the value
//! each trigger got last, the open streams, and the calls its policy refused.

use std::sync::Arc;

use crate::{
    error::Error,
    telemetry::{GrpcLabels, MethodLabels, ReasonLabels, TriggerLabels, latency_histogram},
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::time::Instant;

#[derive(Debug)]
pub struct ScalerMetrics {
    pub trigger_value: Family<TriggerLabels, Gauge>,
    pub active_streams: Gauge,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_request_duration: Family<MethodLabels, Histogram>,
    pub denied: Family<ReasonLabels, Counter>,
}

impl Default for ScalerMetrics {
    fn default() -> Self {
        Self {
            trigger_value: Family::default(),
            active_streams: Gauge::default(),
            grpc_requests: Family::default(),
            grpc_request_duration: Family::new_with_constructor(latency_histogram),
            denied: Family::default(),
        }
    }
}

impl ScalerMetrics {
    /// Registers `ado_scaler_trigger_value`, `ado_scaler_active_streams`,
    /// `ado_scaler_denied` and `ado_scaler_grpc_*`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        registry.register(
            "trigger_value",
            "Last value answered to KEDA for a ScaledJob/ScaledObject trigger",
            metrics.trigger_value.clone(),
        );
        registry.register(
            "active_streams",
            "Open StreamIsActive/StreamMetricSpec streams",
            metrics.active_streams.clone(),
        );
        registry.register(
            "denied",
            "KEDA calls refused by --allowed-namespaces, --allowed-orgs, --allowed-pools or \
             --max-pools, by reason",
            metrics.denied.clone(),
        );
        // Zero series from the start: the dashboard and `increase()` see the first refusal.
        for reason in Error::REFUSAL_REASONS {
            let _ = metrics.denied.get_or_create(&ReasonLabels { reason });
        }
        let grpc = registry.sub_registry_with_prefix("grpc");
        grpc.register(
            "requests",
            "KEDA gRPC calls, by method and status code",
            metrics.grpc_requests.clone(),
        );
        grpc.register_with_unit(
            "request_duration",
            "Latency of KEDA gRPC calls",
            Unit::Seconds,
            metrics.grpc_request_duration.clone(),
        );
        Arc::new(metrics)
    }

    /// One answered call: counted by its status, timed, and logged when it failed. A refusal
    /// is counted in `denied` too, and logged by the caller, once per ScaledJob.
    pub(super) fn call<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: &Result<T, Error>,
    ) {
        let code = match result {
            Ok(_) => "OK".to_owned(),
            Err(e) => format!("{:?}", e.grpc_code()),
        };
        self.grpc_requests
            .get_or_create(&GrpcLabels { method, code })
            .inc();
        self.grpc_request_duration
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        match result {
            Err(e) if e.is_refusal() => {
                self.denied
                    .get_or_create(&ReasonLabels { reason: e.reason() })
                    .inc();
            }
            Err(e) => {
                tracing::warn!(method, code = ?e.grpc_code(), message = %e, "request failed");
            }
            Ok(_) => {}
        }
    }
}

/// Counts an open stream in `active_streams` until the stream's task ends, however it ends.
pub(super) struct StreamGuard(Arc<ScalerMetrics>);

impl StreamGuard {
    pub(super) fn new(metrics: &Arc<ScalerMetrics>) -> Self {
        metrics.active_streams.inc();
        Self(metrics.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.active_streams.dec();
    }
}
