//! Parallel-job awareness: start agents only for jobs that can run. An organisation runs at
//! most as many self-hosted jobs at once as it has private parallel jobs; a job queued beyond
//! them waits in its pool while `jobrequests` lists it as queued, and an agent started for it
//! would hold a node and wait too.
//!
//! One background read of the organisation's usage per `--parallelism-interval`, however many
//! of its pools are watched; the cap itself ([`crate::count::parallelism::cap`]) is computed
//! from that usage and the watched pools' latest snapshots, once per change of either. When
//! the usage cannot be read the cap is not applied (fail open): a metric and one log line
//! say so, and it is applied again from the next good read.

mod metrics;

pub use metrics::ParallelismMetrics;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    ado::{AdoClient, OrgUrl},
    count::parallelism::{self, Cap, PoolJobs, Usage},
    error::Error,
    poller::{Poller, Snapshot},
};

/// `--parallelism` and `--parallelism-interval`.
#[derive(Debug, Clone, Copy)]
pub struct ParallelismSettings {
    /// `false` (`--parallelism off`): no usage is read and no trigger is capped.
    pub enabled: bool,
    /// Time between two reads of an organisation's usage.
    pub interval: Duration,
    /// An organisation no trigger asked about for this long is no longer read.
    pub idle_timeout: Duration,
}

impl Default for ParallelismSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// How long a trigger's first call waits for its organisation's first read: past it, that
/// call is answered without the cap rather than late.
const FIRST_READ_WAIT: Duration = Duration::from_secs(10);

/// What the last read of an organisation's usage gave.
#[derive(Debug, Clone, Default)]
enum UsageState {
    #[default]
    Pending,
    /// `generation` counts the reads, so that a cap is recomputed after each.
    Read {
        usage: Arc<Usage>,
        generation: u64,
    },
    Unreadable,
}

/// One organisation: its usage, and the cap last computed from it.
struct OrgWatch {
    usage: watch::Sender<UsageState>,
    last_used: Mutex<Instant>,
    cached: Mutex<Option<Computed>>,
}

/// A cap and what it was computed from: the same read and the same snapshots give the same cap.
struct Computed {
    generation: u64,
    snapshots: Vec<Arc<Snapshot>>,
    cap: Arc<Cap>,
}

/// Cheap to clone; clones share the organisations' reads.
#[derive(Clone)]
pub struct Parallelism {
    inner: Arc<Inner>,
}

struct Inner {
    ado: AdoClient,
    poller: Poller,
    settings: ParallelismSettings,
    metrics: Arc<ParallelismMetrics>,
    orgs: Mutex<HashMap<OrgUrl, Arc<OrgWatch>>>,
    shutdown: CancellationToken,
}

impl Parallelism {
    pub fn new(
        ado: AdoClient,
        poller: Poller,
        settings: ParallelismSettings,
        metrics: Arc<ParallelismMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                ado,
                poller,
                settings,
                metrics,
                orgs: Mutex::default(),
                shutdown,
            }),
        }
    }

    /// Starts reading `org`'s usage if nobody asked before, and waits (at most
    /// [`FIRST_READ_WAIT`]) for its first read: a trigger's first answer is then capped too.
    pub async fn ready(&self, org: &OrgUrl) {
        let Some(watch) = self.watch(org) else {
            return;
        };
        let mut rx = watch.usage.subscribe();
        let first = rx.wait_for(|s| !matches!(s, UsageState::Pending));
        let _ = tokio::time::timeout(FIRST_READ_WAIT, first).await;
    }

    /// `org`'s cap now; `None` when it is not applied (off, not read yet, or unreadable).
    pub fn cap(&self, org: &OrgUrl) -> Option<Arc<Cap>> {
        let watch = self.watch(org)?;
        let UsageState::Read { usage, generation } = watch.usage.borrow().clone() else {
            return None;
        };
        let pools = self.inner.poller.snapshots_of(org);
        let mut cached = watch.cached.lock().expect("cap cache poisoned");
        let unchanged = cached.as_ref().is_some_and(|c| {
            c.generation == generation
                && c.snapshots.len() == pools.len()
                && c.snapshots
                    .iter()
                    .zip(&pools)
                    .all(|(a, (_, _, b))| Arc::ptr_eq(a, b))
        });
        if !unchanged {
            let jobs: Vec<PoolJobs<'_>> = pools
                .iter()
                .map(|(pool_id, _, snapshot)| PoolJobs {
                    pool_id: *pool_id,
                    jobs: &snapshot.jobs,
                })
                .collect();
            let cap = Arc::new(parallelism::cap(&usage, &jobs));
            self.inner.metrics.capped(org, &cap, &pools);
            *cached = Some(Computed {
                generation,
                snapshots: pools.iter().map(|(_, _, s)| s.clone()).collect(),
                cap,
            });
        }
        cached.as_ref().map(|c| c.cap.clone())
    }

    /// The organisation's watch, started on first use; `None` when the cap is off.
    fn watch(&self, org: &OrgUrl) -> Option<Arc<OrgWatch>> {
        if !self.inner.settings.enabled {
            return None;
        }
        let mut orgs = self.inner.orgs.lock().expect("orgs poisoned");
        let watch = orgs
            .entry(org.clone())
            .or_insert_with(|| {
                let watch = Arc::new(OrgWatch {
                    usage: watch::Sender::new(UsageState::Pending),
                    last_used: Mutex::new(Instant::now()),
                    cached: Mutex::default(),
                });
                tracing::info!(%org, "start reading the organisation's parallel jobs");
                tokio::spawn(read_loop(self.inner.clone(), org.clone(), watch.clone()));
                watch
            })
            .clone();
        *watch.last_used.lock().expect("last_used poisoned") = Instant::now();
        Some(watch)
    }
}

/// Reads `org`'s usage every interval until nobody asks about it or the scaler stops.
async fn read_loop(inner: Arc<Inner>, org: OrgUrl, watch: Arc<OrgWatch>) {
    let interval = inner.settings.interval;
    let mut generation = 0;
    let mut failing = false;
    loop {
        let result = inner.ado.resource_usage(&org).await;
        inner.metrics.read(&org, result.as_ref().err());
        let delay = match result {
            Ok(usage) => {
                if failing {
                    tracing::info!(%org, "the organisation's parallel jobs are readable again: queued jobs are capped");
                }
                failing = false;
                generation += 1;
                watch.usage.send_replace(UsageState::Read {
                    usage: Arc::new(usage),
                    generation,
                });
                if inner.ado.throttle(&org).budget_low(Instant::now()) {
                    interval.saturating_mul(2)
                } else {
                    interval
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(
                        %org,
                        error = %err,
                        "cannot read the organisation's parallel jobs: queued jobs are counted without the cap until they can be read (ado_scaler_parallelism_reads_total)"
                    );
                }
                failing = true;
                watch.usage.send_replace(UsageState::Unreadable);
                let pools = inner.poller.snapshots_of(&org);
                inner.metrics.uncapped(&org, &pools);
                match err {
                    Error::RateLimited { retry_after, .. } => retry_after.max(interval),
                    _ => interval,
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = inner.shutdown.cancelled() => return,
        }
        let mut orgs = inner.orgs.lock().expect("orgs poisoned");
        let idle = watch
            .last_used
            .lock()
            .expect("last_used poisoned")
            .elapsed()
            > inner.settings.idle_timeout;
        if idle {
            if orgs.get(&org).is_some_and(|w| Arc::ptr_eq(w, &watch)) {
                orgs.remove(&org);
            }
            tracing::info!(%org, "stop reading the parallel jobs of an organisation nobody asks about");
            return;
        }
    }
}
