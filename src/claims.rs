//! Jobs nobody will run, and jobs two ScaledJobs will run. The scaler knows every trigger
//! that asked about a pool recently; after each poll it counts the queued jobs no trigger
//! counts (no agent will ever start for them) and those counted by more than one (two agents
//! start, one is wasted), and logs each such job once with the reason of every trigger.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    count::{Claim, Filter, claims},
    poller::{Poller, PoolKey, Snapshot},
    telemetry::PoolLabels,
};

/// A trigger that has not asked for this long no longer claims anything.
pub const RECENT: Duration = Duration::from_secs(300);

/// `ado_scaler_jobs_unclaimed` and `ado_scaler_jobs_multiclaimed`.
#[derive(Debug, Default)]
pub struct ClaimMetrics {
    pub unclaimed: Family<PoolLabels, Gauge>,
    pub multiclaimed: Family<PoolLabels, Gauge>,
}

impl ClaimMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        registry.register(
            "jobs_unclaimed",
            "Queued jobs no recently seen trigger counts: no agent will start for them",
            metrics.unclaimed.clone(),
        );
        registry.register(
            "jobs_multiclaimed",
            "Queued jobs counted by more than one trigger: each starts an agent",
            metrics.multiclaimed.clone(),
        );
        metrics
    }
}

struct PoolClaims {
    /// Trigger name → its filter and when it last asked.
    triggers: HashMap<String, (Filter, Instant)>,
    /// Request ids already logged as unclaimed or multiclaimed.
    logged: HashSet<u64>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ClaimTracker {
    inner: Arc<Inner>,
}

struct Inner {
    poller: Poller,
    metrics: Arc<ClaimMetrics>,
    pools: Mutex<HashMap<PoolKey, PoolClaims>>,
    shutdown: CancellationToken,
}

impl ClaimTracker {
    pub fn new(poller: Poller, metrics: Arc<ClaimMetrics>, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                poller,
                metrics,
                pools: Mutex::default(),
                shutdown,
            }),
        }
    }

    /// Records that `trigger` asked about the pool with this filter.
    pub fn observe(&self, key: &PoolKey, pool_label: &str, trigger: &str, filter: &Filter) {
        let mut pools = self.inner.pools.lock().expect("claims poisoned");
        let first = !pools.contains_key(key);
        let pool = pools.entry(key.clone()).or_insert_with(|| PoolClaims {
            triggers: HashMap::new(),
            logged: HashSet::new(),
        });
        match pool.triggers.get_mut(trigger) {
            Some((f, seen)) => {
                *seen = Instant::now();
                if f != filter {
                    *f = filter.clone();
                }
            }
            None => {
                pool.triggers
                    .insert(trigger.to_owned(), (filter.clone(), Instant::now()));
            }
        }
        if first {
            let labels = PoolLabels {
                org: key.org.to_string(),
                pool: pool_label.to_owned(),
            };
            tokio::spawn(watch_pool(self.inner.clone(), key.clone(), labels));
        }
    }
}

async fn watch_pool(inner: Arc<Inner>, key: PoolKey, labels: PoolLabels) {
    follow(&inner, &key, &labels).await;
    // However the watch ended, forget the pool (a trigger asking again starts a new watch)
    // and leave no stale counts behind.
    inner.pools.lock().expect("claims poisoned").remove(&key);
    inner.metrics.unclaimed.get_or_create(&labels).set(0);
    inner.metrics.multiclaimed.get_or_create(&labels).set(0);
}

/// Recounts the pool's claims after each poll, until no trigger asked recently, the pool is
/// gone, or the server stops.
async fn follow(inner: &Inner, key: &PoolKey, labels: &PoolLabels) {
    // The trigger that noticed the pool subscribed first, so this finds its watcher; a pool
    // refused by --max-pools was never noticed.
    let Ok(mut state) = inner.poller.subscribe(key, &labels.pool, None) else {
        return;
    };
    // Never keep an unused pool's watcher alive longer than the poller would.
    let recent = RECENT.min(inner.poller.settings().idle_timeout);
    loop {
        let (snapshot, gone) = {
            let s = state.borrow_and_update();
            let gone =
                s.snapshot.is_none() && matches!(s.error, Some(crate::error::Error::NotFound(_)));
            (s.snapshot.clone(), gone)
        };
        if gone {
            return;
        }
        if let Some(snapshot) = snapshot {
            let mut pools = inner.pools.lock().expect("claims poisoned");
            let Some(pool) = pools.get_mut(key) else {
                return;
            };
            pool.triggers
                .retain(|_, (_, seen)| seen.elapsed() <= recent);
            if pool.triggers.is_empty() {
                return;
            }
            let mut named: Vec<(String, Filter)> = pool
                .triggers
                .iter()
                .map(|(n, (f, _))| (n.clone(), f.clone()))
                .collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            // A `parent` trigger newer than the snapshot would refuse every job: wait for the
            // poll its evaluation asked for.
            let covered = named
                .iter()
                .all(|(_, f)| snapshot.covers(f.parent.as_deref()));
            if covered {
                recount(inner, labels, pool, &snapshot, &named);
            }
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            () = inner.shutdown.cancelled() => return,
        }
    }
}

/// Publishes the pool's claims in `snapshot` and logs each newly unclaimed or multiclaimed job.
fn recount(
    inner: &Inner,
    labels: &PoolLabels,
    pool: &mut PoolClaims,
    snapshot: &Snapshot,
    named: &[(String, Filter)],
) {
    let found = claims(&snapshot.jobs, named);
    let unclaimed = found.iter().filter(|c| c.is_unclaimed()).count();
    let multiclaimed = found.iter().filter(|c| c.is_multiclaimed()).count();
    inner
        .metrics
        .unclaimed
        .get_or_create(labels)
        .set(unclaimed as i64);
    inner
        .metrics
        .multiclaimed
        .get_or_create(labels)
        .set(multiclaimed as i64);
    let queued: HashSet<u64> = found.iter().map(|c| c.job.request_id).collect();
    pool.logged.retain(|id| queued.contains(id));
    for claim in found
        .iter()
        .filter(|c| c.is_unclaimed() || c.is_multiclaimed())
    {
        if pool.logged.insert(claim.job.request_id) {
            log_claim(labels, claim);
        }
    }
}

fn log_claim(labels: &PoolLabels, claim: &Claim<'_>) {
    let job = claim.job;
    let demands: Vec<&str> = job.requirements.iter().map(|r| r.as_str()).collect();
    let definition = job.definition.as_deref().unwrap_or("?");
    if claim.is_unclaimed() {
        let reasons: Vec<String> = claim
            .refused_by
            .iter()
            .map(|(trigger, why)| format!("{trigger}: {why}"))
            .collect();
        tracing::warn!(
            pool = labels.pool, request_id = job.request_id, definition, demands = ?demands, reasons = ?reasons,
            "queued job no trigger counts: no agent will start for it"
        );
    } else {
        tracing::warn!(
            pool = labels.pool, request_id = job.request_id, definition, demands = ?demands, triggers = ?claim.claimed_by,
            "queued job counted by several triggers: each starts an agent for it"
        );
    }
}
