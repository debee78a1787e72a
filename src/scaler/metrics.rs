//! What the gRPC service reports: KEDA's calls by method and status, their latency, the value
//! each trigger got last, and the open streams.

use std::sync::Arc;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::time::Instant;
use tonic::Status;

use crate::telemetry::{GrpcLabels, MethodLabels, TriggerLabels, latency_histogram};

#[derive(Debug)]
pub struct ScalerMetrics {
    pub trigger_value: Family<TriggerLabels, Gauge>,
    pub active_streams: Gauge,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_request_duration: Family<MethodLabels, Histogram>,
}

impl Default for ScalerMetrics {
    fn default() -> Self {
        Self {
            trigger_value: Family::default(),
            active_streams: Gauge::default(),
            grpc_requests: Family::default(),
            grpc_request_duration: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl ScalerMetrics {
    /// Registers `ado_scaler_trigger_value`, `ado_scaler_active_streams` and
    /// `ado_scaler_grpc_*`.
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

    /// One answered call: counted by its status, timed, and logged when it failed.
    pub(super) fn call<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: &Result<T, Status>,
    ) {
        let code = match result {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.grpc_requests
            .get_or_create(&GrpcLabels { method, code })
            .inc();
        self.grpc_request_duration
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        if let Err(status) = result {
            tracing::warn!(method, code = ?status.code(), message = status.message(), "request failed");
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
