//! `ado-demo`: the whole loop on one machine. Simulated Entra and ADO, the real scaler
//! on loopback, a KEDA ScaledJob emulator that polls it the way KEDA does and applies the
//! `default` scaling strategy, and simulated `--once` agents that start, take one matching
//! job, run it, then deregister before their Kubernetes Job ends.

mod agents;
pub mod cli;
mod keda;
mod report;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{net::TcpListener, sync::oneshot, time::Instant};
use tonic::transport::Channel;

use agents::{Enrolment, JustInTime, Phase, SelfRegistration, Shared, World};
use cli::DemoArgs;
use keda::KedaEmulator;
pub use report::DemoReport;
use report::{print_table, watch_unclaimed};

use ado_scaler::{
    ado::OrgUrl,
    cli::Switch,
    error::{Error, Result},
    gc::{GcSettings, rules::Rules},
    k8s::lease::LeaseTiming,
    parallelism::ParallelismSettings,
    placeholder::PlaceholderSettings,
    poller::PollerSettings,
    registrar::{DEFAULT_SERVICE_ACCOUNT, RegistrarSettings},
    scaler::tls::TlsSettings,
    scaler::{
        access::{Access, NamespaceAllowlist, PoolAllowlist},
        proto::{ScaledObjectRef, external_scaler_client::ExternalScalerClient},
    },
    serve::{Listeners, RegistrarServe, RegistrarTls, ServeSettings, serve},
};
use ado_sim::{AdoSim, Endpoint, SIM_AGENT_NAMESPACE, SimCloud};

/// How jobs arrive.
#[derive(Debug, Clone)]
pub enum Arrivals {
    /// Poisson arrivals at this many jobs per minute, each for a random ScaledJob.
    Rate(u32),
    /// `(offset from start, ScaledJob index)` pairs; index `scaled_jobs` is a job no
    /// ScaledJob counts (see [`DemoConfig::orphan_share`]).
    Script(Vec<(Duration, usize)>),
}

/// Every knob of a simulated run. Times are wall-clock: the demo talks to real sockets.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// How long jobs keep arriving; the run then drains.
    pub duration: Duration,
    pub arrivals: Arrivals,
    pub scaled_jobs: usize,
    pub teardown_window: Duration,
    /// KEDA's `pollingInterval`.
    pub keda_polling: Duration,
    /// The scaler's `--poll-interval`.
    pub scaler_poll: Duration,
    /// From Job creation until the agent is registered and can take a job.
    pub pod_start: Duration,
    pub job_run: (Duration, Duration),
    /// From job end until the Kubernetes Job completes (deregistration, pod exit).
    pub teardown: Duration,
    pub max_replicas: u64,
    /// An agent with no job this long after it registered leaves (`--idle-timeout`); zero waits.
    pub idle_timeout: Duration,
    /// Share of jobs a user cancels while they are still queued, `cancel_after` after queueing:
    /// the agents started for them never get a job.
    pub cancel_share: f64,
    pub cancel_after: Duration,
    /// Whether the triggers keep placeholder registrations (`placeholder` metadata).
    pub placeholders: bool,
    /// Share of jobs that demand `GPU` while the only ScaledJob with GPUs, migrated from KEDA's
    /// scaler, lists `demands: gpu`: ADO matches names case-insensitively and queues them, the
    /// KEDA-compatible rule compares strings and counts none. Nobody runs them; the scaler
    /// reports them unclaimed, and the demo's users cancel them at the end.
    pub orphan_share: f64,
    /// Share of agents (0 to 1) killed without deregistering: half during their job, half
    /// while tearing down. The collector removes what they leave in the pool.
    pub chaos_share: f64,
    /// The collector's `--gc-grace` and `--gc-interval`.
    pub gc_grace: Duration,
    pub gc_interval: Duration,
    /// Give up draining after this long.
    pub drain_limit: Duration,
    pub seed: u64,
    pub live_table: bool,
    /// How agents are registered.
    pub registration: Registration,
    /// The organisation's self-hosted parallel jobs; `None`: as many as jobs.
    pub parallel_jobs: Option<u64>,
    /// Whether the scaler caps queued jobs by them (`--parallelism`).
    pub parallelism_cap: bool,
    /// The triggers' `parallelismHeadroom`.
    pub parallelism_headroom: u64,
}

/// The two modes of `deploy/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Registration {
    /// The default: the scaler's registrar registers the key each pod made; agent containers
    /// hold no credential.
    #[default]
    JustInTime,
    /// `deploy/self-registration/`: each agent exchanges its own workload identity.
    SelfRegistration,
}

impl DemoConfig {
    pub fn from_args(args: &DemoArgs) -> Self {
        Self {
            duration: args.duration,
            arrivals: Arrivals::Rate(args.jobs_per_minute),
            scaled_jobs: args.scaled_jobs.max(1) as usize,
            teardown_window: args.teardown_window,
            keda_polling: Duration::from_secs(1),
            scaler_poll: Duration::from_secs(1),
            pod_start: Duration::from_secs(2),
            job_run: (Duration::from_secs(2), Duration::from_secs(6)),
            teardown: Duration::from_millis(2500),
            max_replicas: 100,
            idle_timeout: args.idle_timeout,
            cancel_share: args.cancel_share.clamp(0.0, 1.0),
            // About when KEDA has started an agent for the job, before that agent is up.
            cancel_after: Duration::from_secs(2),
            placeholders: !args.no_placeholders,
            orphan_share: args.orphan_share.clamp(0.0, 1.0),
            chaos_share: if args.chaos { 0.25 } else { 0.0 },
            gc_grace: Duration::from_secs(2),
            gc_interval: Duration::from_secs(1),
            drain_limit: Duration::from_secs(60),
            seed: 42,
            live_table: !args.quiet,
            registration: if args.self_registration {
                Registration::SelfRegistration
            } else {
                Registration::JustInTime
            },
            parallel_jobs: args.parallel_jobs,
            parallelism_cap: args.parallelism == Switch::On,
            parallelism_headroom: args.parallelism_headroom,
        }
    }
}

impl Default for DemoConfig {
    /// The CLI's defaults.
    fn default() -> Self {
        use clap::Parser as _;
        Self::from_args(&DemoArgs::parse_from(["ado-demo"]))
    }
}

/// What ScaledJob `index` offers (its `capabilities` and its agents' user capabilities).
pub(crate) fn capabilities_of(scaled_job: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("docker".to_owned(), String::new()),
        (format!("team-{scaled_job}"), String::new()),
    ])
}

/// What a job for ScaledJob `index` demands; `index == scaled_jobs` is an orphan.
fn demands_of(config: &DemoConfig, scaled_job: usize) -> Vec<String> {
    if scaled_job >= config.scaled_jobs {
        vec!["GPU".into()]
    } else {
        vec!["docker".into(), format!("team-{scaled_job}")]
    }
}

fn trigger_metadata(config: &DemoConfig, org_url: &str, index: usize) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::from([
        ("organizationURL".to_owned(), org_url.to_owned()),
        ("poolName".to_owned(), "linux".to_owned()),
        (
            "teardownWindow".to_owned(),
            humantime::format_duration(config.teardown_window).to_string(),
        ),
        ("placeholder".to_owned(), config.placeholders.to_string()),
        (
            "parallelismHeadroom".to_owned(),
            config.parallelism_headroom.to_string(),
        ),
    ]);
    if index < config.scaled_jobs {
        meta.insert("agentNamePrefix".into(), format!("sj{index}-"));
        let caps: Vec<String> = capabilities_of(index).into_keys().collect();
        meta.insert("capabilities".into(), caps.join(","));
    } else {
        // Migrated from KEDA's azure-pipelines trigger as it was.
        meta.insert("agentNamePrefix".into(), "gpu-".into());
        meta.insert("demands".into(), "gpu".into());
    }
    meta
}

/// Runs the demo from the CLI and prints the summary.
pub async fn run(args: DemoArgs) -> Result<DemoReport> {
    let config = DemoConfig::from_args(&args);
    println!(
        "ado-scaler demo: {} ScaledJob(s) on one pool, ~{} jobs/min for {:?}, teardownWindow {:?}",
        config.scaled_jobs, args.jobs_per_minute, config.duration, config.teardown_window
    );
    let http = TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| Error::Config(format!("--metrics-addr {}: {e}", args.metrics_addr)))?;
    if let Ok(addr) = http.local_addr() {
        println!("scaler metrics: http://{addr}/metrics");
    }
    let report = simulate_on(config, http).await?;
    println!("{report}");
    Ok(report)
}

/// Runs one simulated scenario to completion.
pub async fn simulate(config: DemoConfig) -> Result<DemoReport> {
    let http = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    simulate_on(config, http).await
}

/// Like [`simulate`], with the scaler's `/metrics` served on `http` (for a Prometheus to scrape).
pub async fn simulate_on(config: DemoConfig, http: TcpListener) -> Result<DemoReport> {
    let sim = SimCloud::start().await?;
    // An empty pool, as a real one scaled to zero: ephemeral agents leave no registration.
    let pool_id = sim.ado.add_pool("linux");
    // ADO reports its rate-limit budget when an identity uses it; show it on the dashboard.
    sim.ado.simulate_rate_limit(200);
    sim.ado.set_parallel_jobs(config.parallel_jobs);
    let grpc = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    let metrics_url = format!(
        "http://{}/metrics",
        http.local_addr()
            .map_err(|e| Error::Config(e.to_string()))?
    );
    let org = OrgUrl::parse(&sim.org_url).map_err(|e| Error::Config(e.to_string()))?;
    let triggers = config.scaled_jobs + usize::from(config.orphan_share > 0.0);
    let prefixes = (0..triggers)
        .filter_map(|sj| trigger_metadata(&config, &sim.org_url, sj).remove("agentNamePrefix"))
        .collect();
    // As deploy/ sets them: the agents' namespace, the one pool.
    let access = Access {
        namespaces: NamespaceAllowlist::parse(&[SIM_AGENT_NAMESPACE]).map_err(Error::Config)?,
        pools: PoolAllowlist::parse(&[format!("{}=linux", sim.org_url)], &sim.allowlist())
            .map_err(Error::Config)?,
        orgs: sim.allowlist(),
    };
    let settings = ServeSettings {
        access,
        poller: PollerSettings {
            interval: config.scaler_poll,
            max_staleness: config.scaler_poll * 30,
            ..Default::default()
        },
        // Ten polls apart (serve: 60 s against 5 s): the pool's own polls say which of its jobs
        // run; the read adds only the organisation's other pools, which the demo has none of.
        parallelism: ParallelismSettings {
            enabled: config.parallelism_cap,
            interval: config.scaler_poll * 10,
            ..Default::default()
        },
        placeholders: PlaceholderSettings::default(),
        // The collector, as deploy/ runs it: the pool, the agents' namespace, the prefixes.
        gc: Some(GcSettings {
            pools: vec![(org, "linux".into())],
            namespace: SIM_AGENT_NAMESPACE.into(),
            rules: Rules::new(prefixes, config.gc_grace).map_err(Error::Config)?,
            interval: config.gc_interval,
            lease_namespace: None,
            identity: "ado-scaler-demo-0".into(),
            timing: LeaseTiming::default(),
            kubeconfig: Some(sim.kubeconfig.clone()),
            delete_pace: GcSettings::DELETE_PACE,
        }),
        auth: sim.auth_settings(),
        http: sim.http_client()?,
        max_body: ado_scaler::ado::DEFAULT_MAX_BODY,
        grpc_tls: None,
        refresh: None,
        registrar: None,
    };
    let (settings, registrar_listener, enrolment) =
        enrolment(&config, &sim, pool_id, settings, triggers).await?;
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let listeners = Listeners {
        grpc,
        http,
        registrar: registrar_listener,
    };
    let server = tokio::spawn(serve(settings, listeners, async move {
        let _ = server_stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))
        .map_err(|e| Error::Config(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Error::Config(format!("connect to scaler: {e}")))?;

    let stats: Shared = Arc::default();
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut rng = StdRng::seed_from_u64(config.seed);

    let world = World {
        config: config.clone(),
        stats: stats.clone(),
        ado: sim.ado.clone(),
        kube: sim.kube.clone(),
        pool_id,
        enrolment: enrolment.clone(),
        stop: stop.clone(),
    };
    // One emulator per ScaledJob, and one for the GPU ScaledJob migrated from KEDA.
    for sj in 0..triggers {
        let meta = trigger_metadata(&config, &sim.org_url, sj);
        let emulator = KedaEmulator {
            index: sj,
            client: ExternalScalerClient::new(channel.clone()),
            scaled_object: ScaledObjectRef {
                name: scaled_job_name(sj),
                namespace: SIM_AGENT_NAMESPACE.into(),
                scaler_metadata: meta.into_iter().collect(),
            },
            world: world.clone(),
        };
        tokio::spawn(emulator.run());
    }
    let unclaimed_max = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(watch_unclaimed(
        metrics_url,
        unclaimed_max.clone(),
        stop.clone(),
    ));

    if config.placeholders {
        // KEDA has deployed the ScaledJobs before the first pipeline runs: their triggers
        // have been seen and the scaler has registered each placeholder.
        let ready_by = Instant::now() + Duration::from_secs(10);
        while placeholders_in(&sim.ado, pool_id) < triggers as u64 && Instant::now() < ready_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    if config.live_table {
        tokio::spawn(print_table(
            stats.clone(),
            sim.ado.clone(),
            pool_id,
            sim.entra.clone(),
            started,
            stop.clone(),
        ));
    }

    // Arrivals, timed from when the ScaledJobs are ready.
    let run_started = started;
    let started = Instant::now();
    let schedule: Vec<(Duration, usize)> = match &config.arrivals {
        Arrivals::Script(s) => s.clone(),
        Arrivals::Rate(per_minute) => {
            let mut at = Duration::ZERO;
            let mean = 60.0 / f64::from((*per_minute).max(1));
            let mut out = Vec::new();
            loop {
                let gap: f64 = -mean * (1.0 - rng.random::<f64>()).ln();
                at += Duration::from_secs_f64(gap);
                if at >= config.duration {
                    break out;
                }
                let target = if rng.random_bool(config.orphan_share) {
                    config.scaled_jobs
                } else {
                    rng.random_range(0..config.scaled_jobs)
                };
                out.push((at, target));
            }
        }
    };
    let mut orphans = Vec::new();
    for (at, sj) in schedule {
        tokio::time::sleep_until(started + at).await;
        let demands = demands_of(&config, sj);
        let refs: Vec<&str> = demands.iter().map(String::as_str).collect();
        let id = sim.ado.enqueue(pool_id, &refs);
        let run_for = rng.random_range(config.job_run.0..=config.job_run.1);
        let failed = sim
            .ado
            .job(id)
            .is_some_and(|j| j.result.as_deref() == Some("failed"));
        if sj >= config.scaled_jobs && !failed {
            orphans.push(id);
        }
        if !failed && rng.random_bool(config.cancel_share) {
            let (ado, stats, after) = (sim.ado.clone(), stats.clone(), config.cancel_after);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if ado.cancel_if_queued(id) {
                    stats.lock().expect("stats").cancelled += 1;
                }
            });
        }
        let mut s = stats.lock().expect("stats");
        s.queued += 1;
        s.durations.insert(id, run_for);
    }
    tokio::time::sleep_until(started + config.duration).await;

    // Drain: wait until every job that can run ran and every agent that has a job finished
    // tearing down; unclaimed jobs would wait forever.
    let drain_deadline = Instant::now() + config.drain_limit;
    loop {
        let done = {
            let s = stats.lock().expect("stats");
            let stuck = orphans
                .iter()
                .filter(|id| sim.ado.job(**id).is_some_and(|j| j.result.is_none()))
                .count() as u64;
            // With an idle timeout, agents started for nothing leave by themselves: wait for it.
            let waiting_ok = config.idle_timeout.is_zero();
            s.completed + s.cancelled + s.lost + sim.ado.jobs_rejected_no_agent() + stuck
                == s.queued
                && s.agents.iter().all(|(_, p)| {
                    *p == Phase::Done || (waiting_ok && matches!(p, Phase::Idle | Phase::Starting))
                })
                // The collector has removed what the killed agents left behind, and the
                // registrar what the agents that ended left.
                && stale_in(&sim.ado, pool_id, &s.killed) == 0
                && agent_registrations(&sim.ado, pool_id) == registered_alive(&s)
        };
        if done || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = run_started.elapsed();
    // Their users give up on the jobs nobody runs.
    let abandoned = orphans
        .iter()
        .filter(|id| sim.ado.cancel_if_queued(**id))
        .count() as u64;
    stop.cancel();
    let _ = stop_server.send(());
    let _ = server.await;

    let s = stats.lock().expect("stats");
    let mut waits = s.waits.clone();
    waits.sort();
    let registrations = sim.ado.agents(pool_id).len() as u64;
    let agents_alive = s.agents.iter().filter(|(_, p)| *p != Phase::Done).count() as u64;
    Ok(DemoReport {
        agents_killed: s.killed.len() as u64,
        jobs_lost: s.lost,
        // Every killed agent had registered; what is not left was removed.
        stale_removed: (s.killed.len() as u64)
            .saturating_sub(stale_in(&sim.ado, pool_id, &s.killed)),
        stale_left: stale_in(&sim.ado, pool_id, &s.killed),
        registrations,
        agents_alive,
        jobs_queued: s.queued,
        jobs_completed: s.completed,
        jobs_cancelled: s.cancelled,
        jobs_failed_no_agent: sim.ado.jobs_rejected_no_agent(),
        jobs_unclaimed_max: unclaimed_max.load(std::sync::atomic::Ordering::SeqCst),
        jobs_unclaimed_abandoned: abandoned,
        placeholders: placeholders_in(&sim.ado, pool_id),
        agents_started: s.agents.len() as u64,
        agents_ran_a_job: s.ran_a_job,
        agents_left_idle: s.left_idle,
        agents_idle_at_end: (s.phase_count(Phase::Idle) + s.phase_count(Phase::Starting)) as u64,
        agents_without_parallel_job: s.without_parallel_job,
        idle_agent_seconds: s.idle.as_secs_f64(),
        max_wait: waits.last().copied().unwrap_or_default(),
        median_wait: waits.get(waits.len() / 2).copied().unwrap_or_default(),
        job_request_polls: sim.ado.requests(Endpoint::JobRequests),
        ado_requests: sim.ado.total_requests(),
        // The scaler's: self-registering agents share one token of their own.
        token_requests: sim
            .entra
            .requests()
            .saturating_sub(enrolment.agent_token_requests()),
        agent_token_requests: enrolment.agent_token_requests(),
        agents_registered: enrolment.registered(),
        registration: config.registration,
        elapsed,
    })
}

/// Registrations of killed agents still in the pool.
fn stale_in(ado: &AdoSim, pool_id: u32, killed: &[String]) -> u64 {
    ado.agents(pool_id)
        .iter()
        .filter(|a| killed.contains(&a.name))
        .count() as u64
}

/// Registrations of agents (not placeholders) in the pool.
fn agent_registrations(ado: &AdoSim, pool_id: u32) -> u64 {
    ado.agents(pool_id).len() as u64 - placeholders_in(ado, pool_id)
}

/// Agents whose pods run with a registration.
fn registered_alive(stats: &agents::Stats) -> u64 {
    stats
        .agents
        .iter()
        .filter(|(_, p)| matches!(p, Phase::Idle | Phase::Running | Phase::TearingDown))
        .count() as u64
}

/// The registrar (just in time: its listener, and the ScaledJobs KEDA would have created for
/// the triggers) or the agents' own identity.
async fn enrolment(
    config: &DemoConfig,
    sim: &SimCloud,
    pool_id: u32,
    mut settings: ServeSettings,
    triggers: usize,
) -> Result<(ServeSettings, Option<TcpListener>, Enrolment)> {
    if config.registration == Registration::SelfRegistration {
        let own = SelfRegistration::new(sim, pool_id)?;
        return Ok((settings, None, Enrolment::SelfRegistration(Box::new(own))));
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?
        .port();
    settings.registrar = Some(RegistrarServe {
        settings: RegistrarSettings {
            namespaces: vec![SIM_AGENT_NAMESPACE.into()],
            service_accounts: vec![DEFAULT_SERVICE_ACCOUNT.into()],
            cleanup_interval: REGISTRAR_CLEANUP,
        },
        // The simulators' certificate for 127.0.0.1, as `--tls-cert`/`--tls-key`.
        tls: RegistrarTls::Files(TlsSettings {
            cert: sim.server_cert_file.clone(),
            key: sim.server_key_file.clone(),
            client_ca: None,
            reload_interval: Duration::from_secs(10),
        }),
        kubeconfig: Some(sim.kubeconfig.clone()),
    });
    let scaled_jobs = (0..triggers)
        .map(|sj| {
            let name = scaled_job_name(sj);
            let triggers = serde_json::json!([{
                "type": "external",
                "metadata": trigger_metadata(config, &sim.org_url, sj),
            }]);
            let uid = sim
                .kube
                .create_scaled_job(SIM_AGENT_NAMESPACE, &name, triggers);
            (name, uid)
        })
        .collect();
    let jit = JustInTime {
        registrar: format!("https://127.0.0.1:{port}"),
        ca_file: sim.ca_file.clone(),
        pods_dir: sim.dir().join("pods"),
        scaled_jobs,
        registered: Arc::default(),
    };
    Ok((settings, Some(listener), Enrolment::JustInTime(jit)))
}

/// How often the demo's registrar looks for agents that ended (`serve` looks every 5 s).
const REGISTRAR_CLEANUP: Duration = Duration::from_secs(1);

fn scaled_job_name(index: usize) -> String {
    format!("agents-{index}")
}

fn placeholders_in(ado: &AdoSim, pool_id: u32) -> u64 {
    ado.agents(pool_id)
        .iter()
        .filter(|a| {
            a.name.ends_with("placeholder") || a.name.starts_with("ado-scaler-placeholder-")
        })
        .count() as u64
}
