//! What the pollers report beyond the queue itself: why polls failed, and whether an answer
//! may have been cut short by ADO.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use std::sync::atomic::AtomicU64;

use crate::{error::Error, telemetry::PoolLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollFailureLabels {
    pub org: String,
    pub pool: String,
    pub reason: &'static str,
}

#[derive(Debug, Default)]
pub struct PollMetrics {
    pub failures: Family<PollFailureLabels, Counter>,
    pub possibly_truncated: Family<PoolLabels, Gauge>,
    pub interval: Family<PoolLabels, Gauge<f64, AtomicU64>>,
}

impl PollMetrics {
    /// Registers under `ado_scaler_poll_*`.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let metrics = Self::default();
        let poll = registry.sub_registry_with_prefix("poll");
        poll.register(
            "failures",
            "Failed job-requests polls of a pool, by reason (the last good value stands until \
             --max-staleness)",
            metrics.failures.clone(),
        );
        poll.register(
            "possibly_truncated",
            "1 when the pool's last answer had exactly 200 rows and no continuation token: ADO \
             may have capped it (KEDA issue 6819)",
            metrics.possibly_truncated.clone(),
        );
        poll.register_with_unit(
            "interval",
            "Wait before the pool's next poll: the interval, doubled while ADO reports a low \
             budget, or the backoff after failures",
            Unit::Seconds,
            metrics.interval.clone(),
        );
        std::sync::Arc::new(metrics)
    }

    pub fn failed(&self, labels: &PoolLabels, error: &Error) {
        self.failures
            .get_or_create(&PollFailureLabels {
                org: labels.org.clone(),
                pool: labels.pool.clone(),
                reason: error.reason(),
            })
            .inc();
    }
}
