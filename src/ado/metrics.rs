//! What the REST client reports: every request by endpoint and status, its latency, and the
//! rate-limit budget ADO says the identity has left.

use std::sync::Arc;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::telemetry::{AdoRequestLabels, EndpointLabels, OrgLabels, latency_histogram};

#[derive(Debug)]
pub struct AdoMetrics {
    pub requests: Family<AdoRequestLabels, Counter>,
    pub request_duration: Family<EndpointLabels, Histogram>,
    pub rate_limit_remaining: Family<OrgLabels, Gauge>,
    pub rate_limit_limit: Family<OrgLabels, Gauge>,
    pub rate_limit_reset: Family<OrgLabels, Gauge>,
}

impl Default for AdoMetrics {
    /// Families registered nowhere: for clients whose process serves no `/metrics` (the
    /// agent entrypoint, `check`).
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            rate_limit_remaining: Family::default(),
            rate_limit_limit: Family::default(),
            rate_limit_reset: Family::default(),
        }
    }
}

impl AdoMetrics {
    /// Registers `ado_scaler_ado_requests_total`, `ado_scaler_ado_request_duration_seconds`
    /// and `ado_scaler_rate_limit_*`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        registry.register(
            "rate_limit_remaining",
            "Last X-RateLimit-Remaining reported by Azure DevOps",
            metrics.rate_limit_remaining.clone(),
        );
        registry.register(
            "rate_limit_limit",
            "Last X-RateLimit-Limit reported by Azure DevOps (TSTUs per window)",
            metrics.rate_limit_limit.clone(),
        );
        registry.register_with_unit(
            "rate_limit_reset_timestamp",
            "Last X-RateLimit-Reset reported by Azure DevOps, as a Unix time",
            Unit::Seconds,
            metrics.rate_limit_reset.clone(),
        );
        let ado = registry.sub_registry_with_prefix("ado");
        ado.register(
            "requests",
            "Requests sent to Azure DevOps, by endpoint and HTTP status",
            metrics.requests.clone(),
        );
        ado.register_with_unit(
            "request_duration",
            "Latency of Azure DevOps requests",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );
        Arc::new(metrics)
    }

    /// One answered (or failed) request.
    pub(super) fn request(&self, org: &str, endpoint: &'static str, code: String) {
        self.requests
            .get_or_create(&AdoRequestLabels {
                org: org.to_owned(),
                endpoint,
                code,
            })
            .inc();
    }

    /// The budget headers of an answer, those it carried.
    pub(super) fn rate_limit(&self, org: &str, rate: &super::RateLimit) {
        let labels = OrgLabels {
            org: org.to_owned(),
        };
        for (family, value) in [
            (&self.rate_limit_remaining, rate.remaining),
            (&self.rate_limit_limit, rate.limit),
            (&self.rate_limit_reset, rate.reset_epoch),
        ] {
            if let Some(value) = value {
                family.get_or_create(&labels).set(value);
            }
        }
    }
}
