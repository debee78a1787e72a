//! What the pollers report: each pool's queue (jobs by state, starts, finishes, how long
//! jobs waited), the age of the last good poll, why polls failed, whether an answer may
//! have been cut short by ADO, and how many pools are watched against `--max-pools`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use std::sync::atomic::AtomicU64;

use super::Snapshot;
use crate::{
    error::Error,
    telemetry::{PoolLabels, QueueLabels},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollFailureLabels {
    pub org: String,
    pub pool: String,
    pub reason: &'static str,
}

/// How long jobs wait for an agent: seconds to an hour.
fn queue_wait_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

#[derive(Debug)]
pub struct PollMetrics {
    pub job_queue_wait: Family<PoolLabels, Histogram>,
    pub jobs_started: Family<PoolLabels, Counter>,
    pub jobs_finished: Family<PoolLabels, Counter>,
    pub queue_jobs: Family<QueueLabels, Gauge>,
    pub age: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    pub failures: Family<PollFailureLabels, Counter>,
    pub possibly_truncated: Family<PoolLabels, Gauge>,
    pub interval: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    /// Pools polled now, to compare with `max_pools`.
    pub watched_pools: Gauge,
    /// `--max-pools`.
    pub max_pools: Gauge,
}

impl Default for PollMetrics {
    fn default() -> Self {
        Self {
            job_queue_wait: Family::new_with_constructor(queue_wait_histogram),
            jobs_started: Family::default(),
            jobs_finished: Family::default(),
            queue_jobs: Family::default(),
            age: Family::default(),
            failures: Family::default(),
            possibly_truncated: Family::default(),
            interval: Family::default(),
            watched_pools: Gauge::default(),
            max_pools: Gauge::default(),
        }
    }
}

impl PollMetrics {
    /// Registers the queue's families under `ado_scaler_` and the polls' under
    /// `ado_scaler_poll_*`.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let metrics = Self::default();
        registry.register_with_unit(
            "job_queue_wait",
            "Time from queueTime to assignTime of each job, observed when first seen assigned",
            Unit::Seconds,
            metrics.job_queue_wait.clone(),
        );
        registry.register(
            "jobs_started",
            "Jobs seen going from queued to assigned between two polls",
            metrics.jobs_started.clone(),
        );
        registry.register(
            "jobs_finished",
            "Assigned jobs seen finishing or vanishing between two polls",
            metrics.jobs_finished.clone(),
        );
        registry.register(
            "queue_jobs",
            "Unfinished job requests of a pool, by state",
            metrics.queue_jobs.clone(),
        );
        registry.register_with_unit(
            "poll_age",
            "Age of the last successful job-requests poll of a pool",
            Unit::Seconds,
            metrics.age.clone(),
        );
        registry.register(
            "watched_pools",
            "Pools polled now; a trigger that would add one past ado_scaler_max_pools is refused",
            metrics.watched_pools.clone(),
        );
        registry.register(
            "max_pools",
            "--max-pools: the most pools polled at once",
            metrics.max_pools.clone(),
        );
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

    /// What a good poll tells about the pool's queue.
    pub(super) fn published(&self, labels: &PoolLabels, snapshot: &Snapshot) {
        for wait in snapshot.started.iter().flatten() {
            self.job_queue_wait
                .get_or_create(labels)
                .observe(wait.as_secs_f64());
        }
        self.jobs_started
            .get_or_create(labels)
            .inc_by(snapshot.started.len() as u64);
        self.jobs_finished
            .get_or_create(labels)
            .inc_by(snapshot.finished as u64);
        let queued = snapshot.queued() as i64;
        let in_flight = snapshot.jobs.len() as i64 - queued;
        for (state, value) in [("queued", queued), ("in_flight", in_flight)] {
            self.queue_jobs
                .get_or_create(&QueueLabels {
                    org: labels.org.clone(),
                    pool: labels.pool.clone(),
                    state,
                })
                .set(value);
        }
    }

    /// The number of watchers, after one started or stopped.
    pub(super) fn watched(&self, pools: usize) {
        self.watched_pools
            .set(i64::try_from(pools).unwrap_or(i64::MAX));
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
