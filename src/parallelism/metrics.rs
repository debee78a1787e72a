//! What the cap reports: each organisation's parallel jobs (total, running, free), the queued
//! jobs of each pool that wait for one, whether the cap is applied, and how reads ended.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    ado::OrgUrl,
    count::parallelism::Cap,
    error::Error,
    poller::Snapshot,
    telemetry::{OrgLabels, PoolLabels},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParallelJobsLabels {
    pub org: String,
    /// `total`, `running` or `free`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    pub org: String,
    /// `success`, or the error's reason (`forbidden`, `decode`, `rate_limited`, …).
    pub result: &'static str,
}

#[derive(Debug, Default)]
pub struct ParallelismMetrics {
    pub parallel_jobs: Family<ParallelJobsLabels, Gauge>,
    pub waiting: Family<PoolLabels, Gauge>,
    pub applied: Family<OrgLabels, Gauge>,
    pub reads: Family<ReadLabels, Counter>,
}

impl ParallelismMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        registry.register(
            "parallel_jobs",
            "The organisation's private self-hosted parallel jobs as last read: total, running (watched pools from their polls, other pools from ADO), free",
            metrics.parallel_jobs.clone(),
        );
        registry.register(
            "jobs_waiting_for_parallelism",
            "Queued jobs of the pool past the organisation's free parallel jobs: no trigger counts them",
            metrics.waiting.clone(),
        );
        registry.register(
            "parallelism_cap_applied",
            "1 while queued jobs are capped by the organisation's parallel jobs, 0 while its usage cannot be read (not capped)",
            metrics.applied.clone(),
        );
        registry.register(
            "parallelism_reads",
            "Reads of an organisation's parallel-job usage, by result (success, or why not)",
            metrics.reads.clone(),
        );
        metrics
    }

    pub(super) fn read(&self, org: &OrgUrl, error: Option<&Error>) {
        let result = error.map_or("success", Error::reason);
        self.reads
            .get_or_create(&ReadLabels {
                org: org.to_string(),
                result,
            })
            .inc();
    }

    pub(super) fn capped(
        &self,
        org: &OrgUrl,
        cap: &Cap,
        pools: &[(u32, PoolLabels, Arc<Snapshot>)],
    ) {
        let org = org.to_string();
        for (kind, value) in [
            ("total", cap.total),
            ("running", cap.running),
            ("free", cap.free),
        ] {
            self.parallel_jobs
                .get_or_create(&ParallelJobsLabels {
                    org: org.clone(),
                    kind,
                })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        for (pool_id, labels, _) in pools {
            let waiting = cap.waiting_by_pool.get(pool_id).copied().unwrap_or(0);
            self.waiting
                .get_or_create(labels)
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
        self.applied.get_or_create(&OrgLabels { org }).set(1);
    }

    /// The usage cannot be read: nothing is held back.
    pub(super) fn uncapped(&self, org: &OrgUrl, pools: &[(u32, PoolLabels, Arc<Snapshot>)]) {
        for (_, labels, _) in pools {
            self.waiting.get_or_create(labels).set(0);
        }
        self.applied
            .get_or_create(&OrgLabels {
                org: org.to_string(),
            })
            .set(0);
    }
}
