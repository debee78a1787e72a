//! Shared per-pool watchers: however many triggers ask about a pool, one background task
//! polls its job requests once per interval and every caller counts from the same snapshot.

mod metrics;
mod snapshot;

pub use metrics::{PollFailureLabels, PollMetrics};
pub use snapshot::{Answer, FinishedRecord, Snapshot};

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use time::OffsetDateTime;
use tokio::{
    sync::{Notify, OnceCell, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    ado::{AdoClient, OrgUrl},
    count::{AgentNames, Job},
    error::{Error, Result},
    telemetry::PoolLabels,
};

/// The longest `teardownWindow` a trigger may ask for; departed jobs are kept this long.
pub const MAX_TEARDOWN_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct PollerSettings {
    pub interval: Duration,
    pub max_staleness: Duration,
    /// A watcher nobody asked about for this long stops polling.
    pub idle_timeout: Duration,
    /// Upper bound of the backoff after failed polls; a quarter of `max_staleness` bounds it
    /// too (see [`retry_delay`]).
    pub max_backoff: Duration,
    /// `--max-pools`: the most pools watched at once. Each costs the identity's ADO rate
    /// budget at every interval, and pool names come from anyone who can write a ScaledJob.
    pub max_pools: usize,
}

/// `--max-pools` unless set.
pub const DEFAULT_MAX_POOLS: usize = 50;

impl Default for PollerSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            max_staleness: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            max_backoff: Duration::from_secs(60),
            max_pools: DEFAULT_MAX_POOLS,
        }
    }
}

/// A pool as seen by one identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub org: OrgUrl,
    pub pool_id: u32,
    pub identity: Arc<str>,
}

/// What callers of a pool see: the last good snapshot and the last error since it.
#[derive(Debug, Clone, Default)]
pub struct PoolState {
    pub snapshot: Option<Arc<Snapshot>>,
    pub error: Option<Error>,
    /// When the poll now waiting for ADO (or Entra) started; `None` between polls.
    pub polling_since: Option<Instant>,
}

impl PoolState {
    /// The snapshot if it is fresh enough, the reason if not, `None` before the first poll ends.
    ///
    /// A trigger with a `parent` also waits (`None`) for a snapshot that was read for its
    /// parent: until then, no job says whether it matched the parent.
    pub fn usable(
        &self,
        key: &PoolKey,
        max_staleness: Duration,
        now: Instant,
        parent: Option<&str>,
    ) -> Option<Result<Arc<Snapshot>>> {
        match (&self.snapshot, &self.error) {
            (Some(s), err) if now.saturating_duration_since(s.fetched_at) <= max_staleness => {
                match (s.covers(parent), err) {
                    (true, _) => Some(Ok(s.clone())),
                    (false, None) => None,
                    (false, Some(err)) => Some(Err(err.clone())),
                }
            }
            (Some(s), err) => Some(Err(Error::Stale {
                pool: format!("{} #{}", key.org, key.pool_id),
                age: now.saturating_duration_since(s.fetched_at),
                limit: max_staleness,
                last_error: match (err, self.polling_since) {
                    (Some(err), _) => err.to_string(),
                    // A poll that hangs (an unreachable host, a stalled answer) has no error
                    // yet: say where the time goes.
                    (None, Some(since)) => format!(
                        "none yet; the current poll has been waiting {:.1?} for an answer",
                        now.saturating_duration_since(since)
                    ),
                    (None, None) => "none".into(),
                },
            })),
            (None, Some(err)) => Some(Err(err.clone())),
            (None, None) => None,
        }
    }
}

struct Watcher {
    state: watch::Sender<PoolState>,
    last_used: Mutex<Instant>,
    labels: PoolLabels,
    /// The `parent` names the pool's triggers asked about; the next poll reads matches for
    /// them. Replaced, not changed, so that a poll reads one consistent set.
    parents: Mutex<Arc<AgentNames>>,
    /// Poll now rather than at the end of the interval: a new `parent` is waiting.
    poll_now: Notify,
}

/// Cheap to clone; all clones share the watchers.
#[derive(Clone)]
pub struct Poller {
    inner: Arc<Inner>,
}

/// Filled once by the first successful pool-name lookup.
type PoolIdCell = Arc<OnceCell<u32>>;

struct Inner {
    ado: AdoClient,
    settings: PollerSettings,
    metrics: Arc<PollMetrics>,
    watchers: Mutex<HashMap<PoolKey, Arc<Watcher>>>,
    pool_ids: Mutex<HashMap<(OrgUrl, String), PoolIdCell>>,
    /// Pool names being looked up for the first time: each may become a watcher, so they
    /// count against `max_pools` until their lookup ends.
    lookups: AtomicUsize,
    /// Job demands ADO's own parser would refuse, each logged once.
    unknown_demands: Mutex<HashSet<String>>,
    shutdown: CancellationToken,
}

/// How many distinct unparsable demands are remembered (and so logged once each).
const MAX_UNKNOWN_DEMANDS: usize = 1000;

impl Poller {
    pub fn new(
        ado: AdoClient,
        settings: PollerSettings,
        metrics: Arc<PollMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        metrics
            .max_pools
            .set(i64::try_from(settings.max_pools).unwrap_or(i64::MAX));
        Self {
            inner: Arc::new(Inner {
                ado,
                settings,
                metrics,
                watchers: Mutex::default(),
                pool_ids: Mutex::default(),
                lookups: AtomicUsize::new(0),
                unknown_demands: Mutex::default(),
                shutdown,
            }),
        }
    }

    pub fn settings(&self) -> &PollerSettings {
        &self.inner.settings
    }

    pub fn identity(&self) -> Arc<str> {
        self.inner.ado.identity().into()
    }

    /// Resolves a pool name once per organisation; concurrent first callers share one request,
    /// and a failure is not cached.
    ///
    /// A name not resolved yet may become one more watcher: with `max_pools` pools watched or
    /// being looked up, it is refused before any request ([`Error::TooManyPools`]).
    pub async fn pool_id(&self, org: &OrgUrl, name: &str) -> Result<u32> {
        let (cell, _lookup) = {
            let mut ids = self.inner.pool_ids.lock().expect("pool id cache poisoned");
            match ids.get(&(org.clone(), name.to_owned())) {
                Some(cell) => (cell.clone(), None),
                None => {
                    let lookup = self.reserve_lookup()?;
                    let cell = PoolIdCell::default();
                    ids.insert((org.clone(), name.to_owned()), cell.clone());
                    (cell, Some(lookup))
                }
            }
        };
        let resolved = cell
            .get_or_try_init(|| async {
                let pool = self.inner.ado.find_pool(org, name).await?;
                tracing::info!(%org, pool = name, pool_id = pool.id, "resolved agent pool");
                Ok(pool.id)
            })
            .await
            .copied();
        if resolved.is_err() {
            // Keep no entry for a name that did not resolve: trigger metadata is user input.
            self.forget_pool_name(org, name);
        }
        resolved
    }

    /// Counts a first lookup against `max_pools` until the returned guard drops.
    fn reserve_lookup(&self) -> Result<LookupGuard<'_>> {
        let watched = self.inner.watchers.lock().expect("watchers poisoned").len();
        let lookups = &self.inner.lookups;
        if watched + lookups.load(Ordering::SeqCst) >= self.inner.settings.max_pools {
            return Err(Error::TooManyPools {
                max: self.inner.settings.max_pools,
            });
        }
        lookups.fetch_add(1, Ordering::SeqCst);
        Ok(LookupGuard(lookups))
    }

    /// Drops a cached name → id mapping, for a pool that was deleted (and maybe recreated).
    pub fn forget_pool_name(&self, org: &OrgUrl, name: &str) {
        self.inner
            .pool_ids
            .lock()
            .expect("pool id cache poisoned")
            .remove(&(org.clone(), name.to_owned()));
    }

    /// The pool's current snapshot from a [`Poller::subscribe`] receiver. A cold pool's first
    /// callers all wait for the same first poll.
    pub async fn snapshot(
        &self,
        rx: &mut watch::Receiver<PoolState>,
        key: &PoolKey,
        parent: Option<&str>,
    ) -> Result<Arc<Snapshot>> {
        loop {
            if let Some(result) = rx.borrow_and_update().usable(
                key,
                self.inner.settings.max_staleness,
                Instant::now(),
                parent,
            ) {
                return result;
            }
            rx.changed().await.map_err(|_| Error::ShuttingDown)?;
        }
    }

    /// A receiver that sees every poll of the pool; while it lives the watcher keeps polling.
    ///
    /// A `parent` the pool's polls do not read matches for yet is added, and the pool is
    /// polled at once rather than at the end of its interval. A pool not watched yet is
    /// refused when `max_pools` pools are watched or being looked up; the pools already
    /// watched go on.
    pub fn subscribe(
        &self,
        key: &PoolKey,
        pool_label: &str,
        parent: Option<&str>,
    ) -> Result<watch::Receiver<PoolState>> {
        let mut watchers = self.inner.watchers.lock().expect("watchers poisoned");
        let watcher = match watchers.get(key) {
            Some(watcher) => watcher.clone(),
            None => {
                let max = self.inner.settings.max_pools;
                if watchers.len() + self.inner.lookups.load(Ordering::SeqCst) >= max {
                    return Err(Error::TooManyPools { max });
                }
                let watcher = self.spawn_watcher(key.clone(), pool_label);
                watchers.insert(key.clone(), watcher.clone());
                self.inner.metrics.watched(watchers.len());
                watcher
            }
        };
        *watcher.last_used.lock().expect("last_used poisoned") = Instant::now();
        if let Some(parent) = parent {
            let mut parents = watcher.parents.lock().expect("parents poisoned");
            if !parents.contains(parent) {
                let mut more = AgentNames::clone(&parents);
                more.insert(parent.to_owned());
                *parents = Arc::new(more);
                watcher.poll_now.notify_one();
            }
        }
        Ok(watcher.state.subscribe())
    }

    /// Sets each pool's `poll_age_seconds`; called before each scrape so the gauge is current.
    pub fn update_age_gauges(&self) {
        let now = Instant::now();
        let watchers = self.inner.watchers.lock().expect("watchers poisoned");
        for watcher in watchers.values() {
            if let Some(s) = &watcher.state.borrow().snapshot {
                self.inner
                    .metrics
                    .age
                    .get_or_create(&watcher.labels)
                    .set(now.saturating_duration_since(s.fetched_at).as_secs_f64());
            }
        }
    }

    /// The last snapshot of each watched pool of `org` that has one, with the pool's id and
    /// label: what the organisation-wide parallel-job cap is computed from.
    pub fn snapshots_of(&self, org: &OrgUrl) -> Vec<(u32, PoolLabels, Arc<Snapshot>)> {
        let watchers = self.inner.watchers.lock().expect("watchers poisoned");
        let mut pools: Vec<(u32, PoolLabels, Arc<Snapshot>)> = watchers
            .iter()
            .filter(|(key, _)| key.org == *org)
            .filter_map(|(key, w)| {
                let snapshot = w.state.borrow().snapshot.clone()?;
                Some((key.pool_id, w.labels.clone(), snapshot))
            })
            .collect();
        // One pool watched under two identities is one pool.
        pools.sort_by_key(|(id, _, _)| *id);
        pools.dedup_by_key(|(id, _, _)| *id);
        pools
    }

    /// Number of pools being polled.
    pub fn watched_pools(&self) -> usize {
        self.inner.watchers.lock().expect("watchers poisoned").len()
    }

    fn spawn_watcher(&self, key: PoolKey, pool_label: &str) -> Arc<Watcher> {
        let watcher = Arc::new(Watcher {
            state: watch::Sender::new(PoolState::default()),
            last_used: Mutex::new(Instant::now()),
            labels: PoolLabels {
                org: key.org.to_string(),
                pool: pool_label.to_owned(),
            },
            parents: Mutex::default(),
            poll_now: Notify::new(),
        });
        tracing::info!(org = %key.org, pool = pool_label, "start polling pool");
        tokio::spawn(poll_loop(self.inner.clone(), key, watcher.clone()));
        watcher
    }
}

/// A first pool-name lookup in progress, counted against `max_pools`.
struct LookupGuard<'a>(&'a AtomicUsize);

impl Drop for LookupGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn poll_loop(inner: Arc<Inner>, key: PoolKey, watcher: Arc<Watcher>) {
    let settings = inner.settings;
    let mut failures: u32 = 0;
    let mut truncated_before = false;
    loop {
        // Recorded without waking anyone: it matters only to a caller that finds the value stale.
        watcher.state.send_if_modified(|s| {
            s.polling_since = Some(Instant::now());
            false
        });
        let read_for = watcher.parents.lock().expect("parents poisoned").clone();
        let mut answer = Answer::new(read_for.clone());
        let result = inner
            .ado
            .job_requests(&key.org, key.pool_id, &mut answer)
            .await;
        let now = Instant::now();
        let delay = match result {
            Ok(pages) => {
                failures = 0;
                let truncated = pages.possibly_truncated;
                if truncated && !truncated_before {
                    tracing::warn!(
                        org = %key.org,
                        pool = %watcher.labels.pool,
                        rows = pages.rows,
                        "the job-requests answer had exactly {} rows and no continuation token: \
                         ADO may have capped it, and jobs past it are not counted",
                        crate::ado::ADO_ROW_CAP
                    );
                }
                truncated_before = truncated;
                inner
                    .metrics
                    .possibly_truncated
                    .get_or_create(&watcher.labels)
                    .set(i64::from(truncated));
                let previous = watcher.state.borrow().snapshot.clone();
                let snapshot =
                    Snapshot::next(previous.as_deref(), answer, now, OffsetDateTime::now_utc());
                inner.metrics.published(&watcher.labels, &snapshot);
                log_unknown_demands(&inner, &watcher.labels, &snapshot);
                watcher.state.send_replace(PoolState {
                    snapshot: Some(Arc::new(snapshot)),
                    error: None,
                    polling_since: None,
                });
                if inner.ado.throttle(&key.org).budget_low(now) {
                    slowed_interval(&settings)
                } else {
                    settings.interval
                }
            }
            Err(err @ Error::NotFound(_)) => {
                // The pool is gone (or never existed): no snapshot of it is right any more.
                // Stop; a caller that resolves the name again starts a watcher for the new id.
                tracing::warn!(org = %key.org, pool = %watcher.labels.pool, error = %err, "pool not found; stop polling it");
                inner.metrics.failed(&watcher.labels, &err);
                let mut watchers = inner.watchers.lock().expect("watchers poisoned");
                watcher.state.send_replace(PoolState {
                    snapshot: None,
                    error: Some(err),
                    polling_since: None,
                });
                if watchers.get(&key).is_some_and(|w| Arc::ptr_eq(w, &watcher)) {
                    watchers.remove(&key);
                    inner.metrics.watched(watchers.len());
                }
                return;
            }
            Err(err) => {
                failures += 1;
                let delay = match &err {
                    Error::RateLimited { retry_after, .. } => (*retry_after).max(settings.interval),
                    _ => retry_delay(&settings, failures, rand::random()),
                };
                tracing::warn!(org = %key.org, pool = %watcher.labels.pool, error = %err, retry_in = ?delay, "poll failed");
                inner.metrics.failed(&watcher.labels, &err);
                watcher.state.send_modify(|s| {
                    s.error = Some(err);
                    s.polling_since = None;
                });
                delay
            }
        };
        inner
            .metrics
            .interval
            .get_or_create(&watcher.labels)
            .set(delay.as_secs_f64());
        let wake_at = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => break,
                () = watcher.poll_now.notified() => {
                    // A wake-up left from before this poll started is not a new parent.
                    let current = watcher.parents.lock().expect("parents poisoned").clone();
                    if !Arc::ptr_eq(&current, &read_for) {
                        break;
                    }
                }
                () = inner.shutdown.cancelled() => return,
            }
        }
        let mut watchers = inner.watchers.lock().expect("watchers poisoned");
        let idle = watcher
            .last_used
            .lock()
            .expect("last_used poisoned")
            .elapsed()
            > settings.idle_timeout;
        // Our own `state` sender does not count; any receiver is a caller or a stream.
        if idle && watcher.state.receiver_count() == 0 {
            if watchers.get(&key).is_some_and(|w| Arc::ptr_eq(w, &watcher)) {
                watchers.remove(&key);
                inner.metrics.watched(watchers.len());
            }
            tracing::info!(org = %key.org, pool = %watcher.labels.pool, "stop polling idle pool");
            return;
        }
    }
}

/// A demand whose operator or shape ADO's parser refuses is never met by `capabilities`:
/// say so once per distinct string, not at every poll.
fn log_unknown_demands(inner: &Inner, labels: &PoolLabels, snapshot: &Snapshot) {
    let mut seen = inner
        .unknown_demands
        .lock()
        .expect("unknown demands poisoned");
    for (request_id, demand) in newly_unknown(&mut seen, &snapshot.jobs) {
        tracing::warn!(
            pool = labels.pool,
            request_id,
            demand,
            "job demand in a shape ADO does not parse: no trigger with `capabilities` counts it"
        );
    }
}

/// Unparsable demands of `jobs` not in `seen` yet, recorded there (up to a bound).
fn newly_unknown<'a>(seen: &mut HashSet<String>, jobs: &'a [Job]) -> Vec<(u64, &'a str)> {
    let mut new = Vec::new();
    for job in jobs {
        for requirement in job.requirements.iter().filter(|r| !r.is_known()) {
            if seen.len() < MAX_UNKNOWN_DEMANDS && seen.insert(requirement.as_str().to_owned()) {
                new.push((job.request_id, requirement.as_str()));
            }
        }
    }
    new
}

/// The poll interval while ADO reports less than a fifth of the identity's budget left:
/// doubled, so the scaler's share of the budget halves, but never past half of
/// `max_staleness`, so callers keep getting values.
pub fn slowed_interval(settings: &PollerSettings) -> Duration {
    settings
        .interval
        .saturating_mul(2)
        .min(settings.max_staleness / 2)
        .max(settings.interval)
}

/// The wait before the next attempt after `failures` failed polls in a row: `interval ·
/// 2^(failures-1)`, capped by `max_backoff` and by a quarter of `max_staleness`, then jittered
/// into its upper half by `jitter` (uniform in [0, 1)).
///
/// The staleness cap is what lets a recovered ADO be seen before the last good snapshot
/// expires: at least three more attempts fit in the time callers still get a value. The
/// jitter keeps many pools of one scaler (and many scalers) from retrying in step.
pub fn retry_delay(settings: &PollerSettings, failures: u32, jitter: f64) -> Duration {
    let cap = settings.max_backoff.min(settings.max_staleness / 4);
    let full = settings
        .interval
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(cap);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ado::models::JobRequest;

    #[test]
    fn each_unparsable_demand_is_reported_once() {
        let job = |id: u64, demands: &[&str]| {
            let r: JobRequest = serde_json::from_value(serde_json::json!({
                "requestId": id,
                "queueTime": "2026-01-01T00:00:00Z",
                "demands": demands,
            }))
            .unwrap();
            snapshot::answer_of(&[r]).jobs.remove(0)
        };
        let jobs = [
            job(1, &["docker", "docker -exists"]),
            job(2, &["docker -exists", "java -like 17"]),
        ];
        let mut seen = HashSet::new();
        assert_eq!(
            newly_unknown(&mut seen, &jobs),
            [(1, "docker -exists"), (2, "java -like 17")]
        );
        assert!(newly_unknown(&mut seen, &jobs).is_empty(), "once");
        let more = [job(3, &["a -x y"])];
        seen.extend((0..MAX_UNKNOWN_DEMANDS).map(|i| i.to_string()));
        assert!(newly_unknown(&mut seen, &more).is_empty(), "bounded");
    }

    #[test]
    fn callers_get_a_fresh_snapshot_read_for_their_parent_else_the_reason_or_a_wait() {
        let key = PoolKey {
            org: OrgUrl::parse("https://dev.azure.com/org").unwrap(),
            pool_id: 7,
            identity: "id".into(),
        };
        let limit = Duration::from_secs(60);
        let t0 = Instant::now();
        let snapshot = |parents: &[&str]| {
            let answer = Answer::new(Arc::new(parents.iter().map(|p| p.to_string()).collect()));
            Some(Arc::new(Snapshot::next(
                None,
                answer,
                t0,
                OffsetDateTime::now_utc(),
            )))
        };
        let failed = || {
            Some(Error::Transport {
                org: "https://dev.azure.com/org".into(),
                reason: "connection reset".into(),
            })
        };
        let state = |snapshot, error| PoolState {
            snapshot,
            error,
            polling_since: None,
        };
        let outcome = |s: &PoolState, age: u64, parent: Option<&str>| match s.usable(
            &key,
            limit,
            t0 + Duration::from_secs(age),
            parent,
        ) {
            None => "wait".to_owned(),
            Some(Ok(_)) => "snapshot".to_owned(),
            Some(Err(e)) => e.reason().to_owned(),
        };
        let read_for_a = state(snapshot(&["a"]), None);
        assert_eq!(outcome(&read_for_a, 0, None), "snapshot");
        assert_eq!(
            outcome(&read_for_a, 60, Some("a")),
            "snapshot",
            "at the limit"
        );
        assert_eq!(outcome(&read_for_a, 61, None), "stale");
        assert_eq!(outcome(&read_for_a, 61, Some("b")), "stale");
        assert_eq!(
            outcome(&read_for_a, 0, Some("b")),
            "wait",
            "for the poll read for b"
        );
        let failing = state(snapshot(&["a"]), failed());
        assert_eq!(
            outcome(&failing, 10, Some("a")),
            "snapshot",
            "the last good one stands"
        );
        assert_eq!(
            outcome(&failing, 10, Some("b")),
            "transport",
            "no poll is coming soon"
        );
        assert_eq!(outcome(&state(None, failed()), 0, None), "transport");
        assert_eq!(
            outcome(&state(None, None), 0, None),
            "wait",
            "the first poll"
        );
    }

    #[test]
    fn retry_delay_doubles_caps_and_jitters_within_a_quarter_of_the_staleness() {
        let settings = |interval, max_staleness, max_backoff| PollerSettings {
            interval: Duration::from_secs(interval),
            max_staleness: Duration::from_secs(max_staleness),
            max_backoff: Duration::from_secs(max_backoff),
            ..PollerSettings::default()
        };
        let secs =
            |s: &PollerSettings, failures, jitter| retry_delay(s, failures, jitter).as_secs_f64();
        // Capped by max_backoff (60 s) when the staleness bound (400 s / 4) is looser.
        let loose = settings(5, 400, 60);
        let full: Vec<f64> = (1..=6).map(|f| secs(&loose, f, 1.0)).collect();
        assert_eq!(full, [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]);
        assert_eq!(secs(&loose, 1000, 1.0), 60.0);
        // Jitter spreads each delay over its upper half.
        assert_eq!(secs(&loose, 2, 0.0), 5.0);
        assert_eq!(secs(&loose, 2, 0.5), 7.5);
        assert_eq!(secs(&loose, 2, 7.0), 10.0, "jitter is clamped");
        assert_eq!(secs(&loose, 2, -1.0), 5.0, "jitter is clamped");
        // A quarter of the staleness bound wins over max_backoff: the case
        // (poll 1 s, max-staleness 5 s) never waits more than 1.25 s.
        let tight = settings(1, 5, 60);
        for failures in 1..=20 {
            assert!(secs(&tight, failures, 1.0) <= 1.25, "{failures}");
        }
        assert_eq!(secs(&tight, 3, 1.0), 1.25);
        assert_eq!(
            secs(&settings(5, 5, 60), 1, 1.0),
            1.25,
            "even below the interval"
        );
    }

    #[test]
    fn a_low_budget_doubles_the_interval_within_half_the_staleness() {
        let slowed = |interval, max_staleness| {
            slowed_interval(&PollerSettings {
                interval: Duration::from_secs(interval),
                max_staleness: Duration::from_secs(max_staleness),
                ..PollerSettings::default()
            })
            .as_secs()
        };
        assert_eq!(slowed(5, 60), 10);
        assert_eq!(slowed(5, 16), 8, "half the staleness bound");
        assert_eq!(slowed(5, 5), 5, "never faster than the interval");
    }
}
