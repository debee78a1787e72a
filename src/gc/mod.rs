//! The stale-agent collector. Agents killed without deregistering (OOM, eviction, node loss,
//! SIGKILL at the end of the grace period) stay in their pool as offline registrations
//! forever. One replica, elected on a Lease, lists the pools named by `--gc-pools` and the
//! agent pods, and deletes the registrations [`rules`] condemns, a few per second, yielding to
//! polls whenever ADO throttles the identity.
//!
//! It works from its flags alone: KEDA keeps one gRPC connection, so the leader may be a
//! replica that has seen no trigger at all.

pub mod rules;

use std::{path::PathBuf, sync::Arc, time::Duration};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use time::OffsetDateTime;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    ado::{AdoClient, OrgUrl, models::Agent},
    error::{Error, Result},
    k8s::{
        self,
        lease::{Elector, LeaseSettings, LeaseTiming},
    },
    telemetry::{PoolLabels, ResultLabels},
};
use rules::{Rules, Verdict};

/// The Lease every replica campaigns for.
pub const LEASE_NAME: &str = "ado-scaler-gc";

/// Parsed `--gc-*` flags.
#[derive(Debug, Clone)]
pub struct GcSettings {
    /// `(organisation, pool name)` pairs to clean.
    pub pools: Vec<(OrgUrl, String)>,
    /// Where the agent pods run.
    pub namespace: String,
    pub rules: Rules,
    pub interval: Duration,
    /// Where the Lease lives; `None`: the client's namespace (the pod's own, in a cluster).
    pub lease_namespace: Option<String>,
    /// This replica's name in the Lease.
    pub identity: String,
    pub timing: LeaseTiming,
    /// `None`: in-cluster (or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Least time between two deletions.
    pub delete_pace: Duration,
}

impl GcSettings {
    /// At most four deletions a second: a backlog of thousands drains in minutes without
    /// spending the identity's rate-limit budget that polls need.
    pub const DELETE_PACE: Duration = Duration::from_millis(250);
}

/// Parses `--gc-pools`: `ORG_URL=POOL_NAME`, comma-separated.
pub fn parse_pools(items: &[String]) -> std::result::Result<Vec<(OrgUrl, String)>, String> {
    let mut pools = Vec::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let (org, pool) = item
            .split_once('=')
            .ok_or_else(|| format!("--gc-pools: {item:?} is not ORG_URL=POOL_NAME"))?;
        let org = OrgUrl::parse(org).map_err(|e| format!("--gc-pools: {e}"))?;
        let pool = pool.trim();
        if pool.is_empty() {
            return Err(format!("--gc-pools: {item:?} has no pool name"));
        }
        if !pools.iter().any(|(o, p)| *o == org && p == pool) {
            pools.push((org, pool.to_owned()));
        }
    }
    if pools.is_empty() {
        return Err("--gc-pools: at least one ORG_URL=POOL_NAME is required".into());
    }
    Ok(pools)
}

/// The collector's metrics, under `ado_scaler_gc_`.
#[derive(Debug, Default)]
pub struct GcMetrics {
    pub deleted: Family<PoolLabels, Counter>,
    pub runs: Family<ResultLabels, Counter>,
    pub leader: Gauge,
}

impl GcMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        let gc = registry.sub_registry_with_prefix("gc");
        gc.register(
            "deleted_agents",
            "Stale agent registrations the collector deleted",
            metrics.deleted.clone(),
        );
        gc.register(
            "runs",
            "Collector runs, by result (success, error: nothing deleted or a deletion failed, rate_limited, lost_lease)",
            metrics.runs.clone(),
        );
        gc.register(
            "leader",
            "1 on the replica that holds the collector's Lease, else 0",
            metrics.leader.clone(),
        );
        metrics
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    Success,
    /// A list could not be read (nothing deleted), or a deletion failed.
    Error,
    /// ADO throttled the identity, or its budget ran low: the rest waits for the next run.
    RateLimited,
    /// Leadership was lost mid-run: the rest is the new leader's.
    LostLease,
}

impl RunResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::RateLimited => "rate_limited",
            Self::LostLease => "lost_lease",
        }
    }
}

/// Connects to the Kubernetes API (a configuration error fails here, at startup), then
/// campaigns and collects in the background until `shutdown`; the task ends once the Lease
/// is released.
pub async fn start(
    settings: GcSettings,
    ado: AdoClient,
    metrics: Arc<GcMetrics>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let client = k8s::client(settings.kubeconfig.as_deref()).await?;
    // Every result from the start: "no run succeeded" is then a query, and the counters tell
    // an enabled collector from a disabled one.
    for result in [
        RunResult::Success,
        RunResult::Error,
        RunResult::RateLimited,
        RunResult::LostLease,
    ] {
        metrics
            .runs
            .get_or_create(&ResultLabels {
                result: result.label(),
            })
            .inc_by(0);
    }
    // And every pool's deletions: a pool kept clean by the registrar shows 0, not no data.
    for (org, pool) in &settings.pools {
        metrics
            .deleted
            .get_or_create(&PoolLabels {
                org: org.to_string(),
                pool: pool.clone(),
            })
            .inc_by(0);
    }
    Ok(tokio::spawn(run(settings, client, ado, metrics, shutdown)))
}

/// Campaigns for the Lease and collects while leading, until `shutdown`; then releases the
/// Lease (so another replica takes over at once) and returns.
pub async fn run(
    settings: GcSettings,
    client: kube::Client,
    ado: AdoClient,
    metrics: Arc<GcMetrics>,
    shutdown: CancellationToken,
) {
    let lease = LeaseSettings {
        namespace: settings
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        name: LEASE_NAME.into(),
        identity: settings.identity.clone(),
        timing: settings.timing,
    };
    tracing::info!(
        lease_namespace = %lease.namespace,
        identity = %lease.identity,
        agent_namespace = %settings.namespace,
        pools = settings.pools.len(),
        "stale-agent collector campaigning for the lease"
    );
    let (leader_tx, mut leader) = watch::channel(false);
    let elector =
        tokio::spawn(Elector::new(client.clone(), lease).run(leader_tx, shutdown.clone()));
    let collector = Collector {
        settings,
        ado,
        client,
        metrics: metrics.clone(),
    };
    loop {
        metrics.leader.set(0);
        tokio::select! {
            led = leader.wait_for(|l| *l) => if led.is_err() { break },
            () = shutdown.cancelled() => break,
        }
        metrics.leader.set(1);
        // Lead until the lease is lost; a run is cut short the moment it is.
        let mut lost = leader.clone();
        loop {
            let result = tokio::select! {
                r = collector.collect(&leader) => r,
                _ = lost.wait_for(|l| !*l) => RunResult::LostLease,
                () = shutdown.cancelled() => break,
            };
            metrics
                .runs
                .get_or_create(&ResultLabels {
                    result: result.label(),
                })
                .inc();
            if result == RunResult::LostLease {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(collector.settings.interval) => {}
                _ = leader.wait_for(|l| !*l) => break,
                () = shutdown.cancelled() => break,
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    metrics.leader.set(0);
    // The elector releases the lease on shutdown; wait for it so the process exits after.
    let _ = elector.await;
}

struct Collector {
    settings: GcSettings,
    ado: AdoClient,
    client: kube::Client,
    metrics: Arc<GcMetrics>,
}

/// A registration the rules condemn.
#[derive(Debug, Clone)]
pub struct Stale {
    pub org: OrgUrl,
    pub pool: String,
    pub pool_id: u32,
    pub agent: Agent,
    pub offline_for: Duration,
}

/// What a run would delete now. Everything is read before anything is judged: if any list
/// cannot be read, this is an error and nothing is deleted. The pools' agents are read before
/// the pods, so that a pod created meanwhile is still seen.
pub async fn plan(
    settings: &GcSettings,
    ado: &AdoClient,
    client: &kube::Client,
) -> Result<Vec<Stale>> {
    let mut views = Vec::with_capacity(settings.pools.len());
    for (org, name) in &settings.pools {
        let id = ado.find_pool(org, name).await?.id;
        let agents = ado.agents_with_assigned_requests(org, id).await?;
        views.push((org, name, id, agents));
    }
    let pods: rules::PodNames = k8s::pod_names(client, &settings.namespace)
        .await?
        .into_iter()
        .collect();
    let now = OffsetDateTime::now_utc();
    let mut stale = Vec::new();
    for (org, pool, pool_id, agents) in views {
        for agent in agents {
            if let Verdict::Delete { offline_for } = settings.rules.verdict(&agent, &pods, now) {
                stale.push(Stale {
                    org: org.clone(),
                    pool: pool.clone(),
                    pool_id,
                    agent,
                    offline_for,
                });
            }
        }
    }
    Ok(stale)
}

impl Collector {
    /// One pass: plan, then delete, paced, while leading and while ADO has budget.
    async fn collect(&self, leader: &watch::Receiver<bool>) -> RunResult {
        let stale = match plan(&self.settings, &self.ado, &self.client).await {
            Ok(stale) => stale,
            Err(e) => {
                tracing::warn!(error = %e, "stale-agent collector could not read; deleting nothing this run");
                return RunResult::Error;
            }
        };
        let mut last_delete: Option<Instant> = None;
        let mut failed = false;
        for Stale {
            org,
            pool,
            pool_id,
            agent,
            offline_for,
        } in stale
        {
            if !*leader.borrow() {
                return RunResult::LostLease;
            }
            if self.ado.throttle(&org).should_yield(Instant::now()) {
                tracing::info!(%org, "Azure DevOps is throttling this identity; the collector waits for its next run");
                return RunResult::RateLimited;
            }
            if let Some(at) = last_delete {
                tokio::time::sleep_until(at + self.settings.delete_pace).await;
            }
            last_delete = Some(Instant::now());
            match self.ado.delete_agent(&org, pool_id, agent.id).await {
                Ok(()) => {
                    self.metrics
                        .deleted
                        .get_or_create(&PoolLabels {
                            org: org.to_string(),
                            pool: pool.clone(),
                        })
                        .inc();
                    tracing::info!(
                        %org,
                        %pool,
                        agent = %agent.name,
                        agent_id = agent.id,
                        offline_for = %humantime::format_duration(Duration::from_secs(offline_for.as_secs())),
                        "deleted a stale agent registration (offline, no job, no pod)"
                    );
                }
                // Deregistered meanwhile: nothing left to do.
                Err(Error::NotFound(_)) => {}
                Err(Error::RateLimited { .. }) => return RunResult::RateLimited,
                Err(e) => {
                    tracing::warn!(%org, %pool, agent = %agent.name, agent_id = agent.id, error = %e, "could not delete a stale agent registration");
                    failed = true;
                }
            }
        }
        if failed {
            RunResult::Error
        } else {
            RunResult::Success
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_pools_parse_and_name_the_flag_on_errors() {
        let pools = parse_pools(&[
            "https://dev.azure.com/Contoso/=aks-linux".into(),
            " https://dev.azure.com/contoso=gpu ".into(),
            "https://dev.azure.com/contoso=aks-linux".into(),
            "".into(),
        ])
        .unwrap();
        let shown: Vec<String> = pools.iter().map(|(o, p)| format!("{o} {p}")).collect();
        assert_eq!(
            shown,
            [
                "https://dev.azure.com/Contoso aks-linux",
                "https://dev.azure.com/contoso gpu",
                "https://dev.azure.com/contoso aks-linux"
            ]
        );
        for bad in [
            "https://dev.azure.com/contoso",
            "https://dev.azure.com/contoso=",
            "nope=pool",
        ] {
            let err = parse_pools(&[bad.into()]).unwrap_err();
            assert!(err.starts_with("--gc-pools: "), "{bad}: {err}");
        }
        assert!(parse_pools(&[]).unwrap_err().contains("at least one"));
        // An organisation URL has no `=` (no query): the rest is the pool's name.
        let with_equals = parse_pools(&["https://dev.azure.com/contoso=a=b".into()]).unwrap();
        assert_eq!(with_equals[0].1, "a=b");
    }
}
