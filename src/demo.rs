//! `ado-scaler demo`: the whole loop on one machine. Simulated Entra and ADO, the real scaler
//! on loopback, a KEDA ScaledJob emulator that polls it the way KEDA does and applies the
//! `default` scaling strategy, and simulated `--once` agents that start, take one matching
//! job, run it, then deregister before their Kubernetes Job ends.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{net::TcpListener, sync::oneshot, time::Instant};
use tonic::transport::Channel;

use crate::{
    ado::{
        AdoClient, OrgUrl,
        models::{Agent, AgentAuthorization},
    },
    auth::TokenSource,
    config::DemoArgs,
    error::{Error, Result},
    placeholder::PlaceholderSettings,
    poller::PollerSettings,
    scaler::{
        proto::{GetMetricsRequest, ScaledObjectRef, external_scaler_client::ExternalScalerClient},
        server::{ServeSettings, serve},
    },
    sim::{AdoSim, Endpoint, SimCloud},
};

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
    /// Give up draining after this long.
    pub drain_limit: Duration,
    pub seed: u64,
    pub live_table: bool,
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
            drain_limit: Duration::from_secs(60),
            seed: 42,
            live_table: !args.quiet,
        }
    }
}

impl Default for DemoConfig {
    /// The CLI's defaults.
    fn default() -> Self {
        use clap::Parser as _;
        let cli = crate::config::Cli::parse_from(["ado-scaler", "demo"]);
        match cli.command {
            crate::config::Command::Demo(args) => Self::from_args(&args),
            _ => unreachable!("parsed the demo subcommand"),
        }
    }
}

/// What a run achieved.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    pub jobs_queued: u64,
    pub jobs_completed: u64,
    /// Jobs cancelled by their user before an agent took them.
    pub jobs_cancelled: u64,
    /// Jobs ADO failed at once: no registration in the pool satisfied their demands.
    pub jobs_failed_no_agent: u64,
    /// Most queued jobs no trigger counted at once (`ado_scaler_jobs_unclaimed`).
    pub jobs_unclaimed_max: u64,
    /// Unclaimed jobs still queued when the demo's users gave up on them.
    pub jobs_unclaimed_abandoned: u64,
    /// Placeholder registrations in the pool at the end.
    pub placeholders: u64,
    pub agents_started: u64,
    /// Agents that ran their one job.
    pub agents_ran_a_job: u64,
    /// Agents that got no job and left at the idle timeout.
    pub agents_left_idle: u64,
    /// Agents still waiting for a job when the run ended (started for nothing).
    pub agents_idle_at_end: u64,
    pub max_wait: Duration,
    pub median_wait: Duration,
    pub job_request_polls: u64,
    pub ado_requests: u64,
    pub token_requests: u64,
    pub elapsed: Duration,
}

impl DemoReport {
    pub fn job_request_polls_per_minute(&self) -> f64 {
        self.job_request_polls as f64 * 60.0 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn ado_requests_per_minute(&self) -> f64 {
        self.ado_requests as f64 * 60.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "summary")?;
        writeln!(
            f,
            "  jobs completed        {} of {} ({} cancelled while queued)",
            self.jobs_completed, self.jobs_queued, self.jobs_cancelled
        )?;
        writeln!(
            f,
            "  jobs failed (no agent in pool)  {}",
            self.jobs_failed_no_agent
        )?;
        writeln!(
            f,
            "  jobs unclaimed        {} at most at once; {} never ran (no trigger counts them)",
            self.jobs_unclaimed_max, self.jobs_unclaimed_abandoned
        )?;
        writeln!(f, "  placeholders          {}", self.placeholders)?;
        writeln!(
            f,
            "  agents started        {}: {} ran a job, {} left at the idle timeout, {} still idle",
            self.agents_started,
            self.agents_ran_a_job,
            self.agents_left_idle,
            self.agents_idle_at_end
        )?;
        writeln!(
            f,
            "  wait for an agent     median {:.1}s, longest {:.1}s",
            self.median_wait.as_secs_f64(),
            self.max_wait.as_secs_f64()
        )?;
        writeln!(
            f,
            "  ADO requests          {} in {:.0}s = {:.1}/min (job-request polls {:.1}/min)",
            self.ado_requests,
            self.elapsed.as_secs_f64(),
            self.ado_requests_per_minute(),
            self.job_request_polls_per_minute()
        )?;
        write!(f, "  token requests        {}", self.token_requests)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Idle,
    Running,
    TearingDown,
    Done,
}

#[derive(Debug, Default)]
struct Stats {
    /// (ScaledJob index, phase) per agent.
    agents: Vec<(usize, Phase)>,
    waits: Vec<Duration>,
    completed: u64,
    queued: u64,
    cancelled: u64,
    ran_a_job: u64,
    left_idle: u64,
    durations: HashMap<u64, Duration>,
}

impl Stats {
    fn running_jobs(&self, scaled_job: usize) -> u64 {
        self.agents
            .iter()
            .filter(|(sj, p)| *sj == scaled_job && *p != Phase::Done)
            .count() as u64
    }

    fn phase_count(&self, phase: Phase) -> usize {
        self.agents.iter().filter(|(_, p)| *p == phase).count()
    }
}

type Shared = Arc<Mutex<Stats>>;

/// What ScaledJob `index` offers (its `capabilities` and its agents' user capabilities).
fn capabilities_of(scaled_job: usize) -> BTreeMap<String, String> {
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
    let settings = ServeSettings {
        allowlist: sim.allowlist(),
        poller: PollerSettings {
            interval: config.scaler_poll,
            max_staleness: config.scaler_poll * 30,
            ..Default::default()
        },
        placeholders: PlaceholderSettings::default(),
        gc: None,
        auth: sim.auth_settings(),
        http: sim.http_client()?,
    };
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(settings, grpc, http, async move {
        let _ = server_stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))
        .map_err(|e| Error::Config(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Error::Config(format!("connect to scaler: {e}")))?;
    let registrar = Registrar::new(&sim, pool_id)?;

    let stats: Shared = Arc::default();
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut rng = StdRng::seed_from_u64(config.seed);

    // One emulator per ScaledJob, and one for the GPU ScaledJob migrated from KEDA.
    let triggers = config.scaled_jobs + usize::from(config.orphan_share > 0.0);
    for sj in 0..triggers {
        let meta = trigger_metadata(&config, &sim.org_url, sj);
        let emulator = KedaEmulator {
            index: sj,
            client: ExternalScalerClient::new(channel.clone()),
            scaled_object: ScaledObjectRef {
                name: format!("agents-{sj}"),
                namespace: "demo".into(),
                scaler_metadata: meta.into_iter().collect(),
            },
            config: config.clone(),
            stats: stats.clone(),
            ado: sim.ado.clone(),
            registrar: registrar.clone(),
        };
        tokio::spawn(emulator.run(stop.clone()));
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
            s.completed + s.cancelled + sim.ado.jobs_rejected_no_agent() + stuck == s.queued
                && s.agents.iter().all(|(_, p)| {
                    *p == Phase::Done || (waiting_ok && matches!(p, Phase::Idle | Phase::Starting))
                })
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
    Ok(DemoReport {
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
        max_wait: waits.last().copied().unwrap_or_default(),
        median_wait: waits.get(waits.len() / 2).copied().unwrap_or_default(),
        job_request_polls: sim.ado.requests(Endpoint::JobRequests),
        ado_requests: sim.ado.total_requests(),
        // The scaler's: the simulated agents share one token of their own.
        token_requests: sim
            .entra
            .requests()
            .saturating_sub(registrar.token_requests()),
        elapsed,
    })
}

fn placeholders_in(ado: &AdoSim, pool_id: u32) -> u64 {
    ado.agents(pool_id)
        .iter()
        .filter(|a| {
            a.name.ends_with("placeholder") || a.name.starts_with("ado-scaler-placeholder-")
        })
        .count() as u64
}

/// Samples the scaler's `ado_scaler_jobs_unclaimed` as a Prometheus would.
async fn watch_unclaimed(
    url: String,
    max: Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    let http = reqwest::Client::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let Ok(response) = http.get(&url).send().await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        let now: u64 = text
            .lines()
            .filter(|l| l.starts_with("ado_scaler_jobs_unclaimed{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        max.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Registers and deregisters simulated agents through the simulated ADO's REST API, with
/// the production client, as `config.sh` does.
#[derive(Clone)]
struct Registrar {
    ado: AdoClient,
    metrics: Arc<crate::telemetry::Metrics>,
    org: OrgUrl,
    pool_id: u32,
    /// One key for every simulated agent: they never open a session that would use it.
    authorization: AgentAuthorization,
}

impl Registrar {
    fn new(sim: &SimCloud, pool_id: u32) -> Result<Self> {
        let http = sim.http_client()?;
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        let token = TokenSource::new(&sim.auth_settings(), &http, Some(metrics.clone()))?;
        Ok(Self {
            ado: AdoClient::new(http, token, metrics.clone()),
            metrics,
            org: OrgUrl::parse(&sim.org_url).map_err(Error::Config)?,
            pool_id,
            authorization: AgentAuthorization::fresh().map_err(Error::Config)?,
        })
    }

    async fn register(&self, name: &str, capabilities: &BTreeMap<String, String>) -> Result<u32> {
        let agent = Agent {
            name: name.to_owned(),
            version: Some(crate::sim::SIM_AGENT_VERSION.into()),
            enabled: Some(true),
            os_description: Some("Linux (simulated)".into()),
            authorization: Some(self.authorization.clone()),
            system_capabilities: crate::sim::system_capabilities(name).to_map(),
            user_capabilities: capabilities.clone(),
            ..Agent::default()
        };
        let created = self.ado.add_agent(&self.org, self.pool_id, &agent).await?;
        created
            .map(|a| a.id)
            .ok_or_else(|| Error::Config(format!("agent {name} already registered")))
    }

    /// Tokens the simulated agents requested.
    fn token_requests(&self) -> u64 {
        ["success", "error"]
            .into_iter()
            .map(|result| {
                self.metrics
                    .token_requests
                    .get_or_create(&crate::telemetry::ResultLabels { result })
                    .get()
            })
            .sum()
    }

    async fn deregister(&self, agent_id: u32) {
        if let Err(e) = self
            .ado
            .delete_agent(&self.org, self.pool_id, agent_id)
            .await
        {
            tracing::warn!(error = %e, "simulated agent could not deregister");
        }
    }
}

/// Emulates KEDA's ScaledJob controller for one ScaledJob.
struct KedaEmulator {
    index: usize,
    client: ExternalScalerClient<Channel>,
    scaled_object: ScaledObjectRef,
    config: DemoConfig,
    stats: Shared,
    ado: AdoSim,
    registrar: Registrar,
}

impl KedaEmulator {
    async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.keda_polling);
        let mut next_agent = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let Ok((queue, target, active)) = self.poll().await else {
                continue;
            };
            let running = self.stats.lock().expect("stats").running_jobs(self.index);
            // KEDA's `default` strategy.
            let max_scale =
                ((queue as f64 / target as f64).ceil() as u64).min(self.config.max_replicas);
            let create = if active {
                max_scale.saturating_sub(running).min(queue)
            } else {
                0
            };
            for _ in 0..create {
                next_agent += 1;
                let name = format!("sj{}-{next_agent:04}", self.index);
                let slot = {
                    let mut s = self.stats.lock().expect("stats");
                    s.agents.push((self.index, Phase::Starting));
                    s.agents.len() - 1
                };
                tokio::spawn(simulated_agent(
                    slot,
                    name,
                    capabilities_of(self.index),
                    self.config.clone(),
                    self.stats.clone(),
                    self.ado.clone(),
                    self.registrar.clone(),
                    stop.clone(),
                ));
            }
        }
    }

    /// One KEDA polling cycle: IsActive, GetMetricSpec, GetMetrics.
    async fn poll(&mut self) -> std::result::Result<(u64, u64, bool), tonic::Status> {
        let active = self
            .client
            .is_active(self.scaled_object.clone())
            .await?
            .into_inner()
            .result;
        let spec = self
            .client
            .get_metric_spec(self.scaled_object.clone())
            .await?
            .into_inner();
        let spec = spec.metric_specs.first().cloned().unwrap_or_default();
        let metrics = self
            .client
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(self.scaled_object.clone()),
                metric_name: spec.metric_name.clone(),
            })
            .await?
            .into_inner();
        let value = metrics
            .metric_values
            .first()
            .map_or(0, |m| m.metric_value.max(0) as u64);
        Ok((value, spec.target_size.max(1) as u64, active))
    }
}

#[allow(clippy::too_many_arguments)]
async fn simulated_agent(
    slot: usize,
    name: String,
    capabilities: BTreeMap<String, String>,
    config: DemoConfig,
    stats: Shared,
    ado: AdoSim,
    registrar: Registrar,
    stop: tokio_util::sync::CancellationToken,
) {
    let set = |phase| stats.lock().expect("stats").agents[slot].1 = phase;
    let pool_id = registrar.pool_id;
    tokio::select! {
        () = tokio::time::sleep(config.pod_start) => {}
        () = stop.cancelled() => return,
    }
    let agent_id = match registrar.register(&name, &capabilities).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(agent = name, error = %e, "simulated agent could not register");
            set(Phase::Done);
            return;
        }
    };
    set(Phase::Idle);
    // As `ado-scaler agent --idle-timeout`: an agent whose job was cancelled or taken leaves.
    let idle_until = (!config.idle_timeout.is_zero()).then(|| Instant::now() + config.idle_timeout);
    let request_id = loop {
        if let Some(id) = ado.assign_next(pool_id, &name, &capabilities) {
            break id;
        }
        if idle_until.is_some_and(|t| Instant::now() >= t) {
            set(Phase::TearingDown);
            tokio::time::sleep(config.teardown).await;
            registrar.deregister(agent_id).await;
            stats.lock().expect("stats").left_idle += 1;
            set(Phase::Done);
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = stop.cancelled() => return,
        }
    };
    set(Phase::Running);
    let run_for = {
        let mut s = stats.lock().expect("stats");
        if let Some(job) = ado.job(request_id)
            && let (Some(q), Some(a)) = (job.queue_time, job.assign_time)
        {
            s.waits.push((a - q).try_into().unwrap_or_default());
        }
        s.durations
            .get(&request_id)
            .copied()
            .unwrap_or(config.job_run.0)
    };
    tokio::time::sleep(run_for).await;
    ado.finish(request_id, "succeeded");
    set(Phase::TearingDown);
    {
        let mut s = stats.lock().expect("stats");
        s.completed += 1;
        s.ran_a_job += 1;
    }
    tokio::time::sleep(config.teardown).await;
    registrar.deregister(agent_id).await;
    set(Phase::Done);
}

async fn print_table(
    stats: Shared,
    ado: AdoSim,
    pool_id: u32,
    entra: crate::sim::Entra,
    started: Instant,
    stop: tokio_util::sync::CancellationToken,
) {
    println!(
        "{:>5} | {:>6} {:>9} | {:>8} {:>5} {:>7} {:>8} | {:>4} | {:>7} {:>6}",
        "t",
        "queued",
        "in-flight",
        "starting",
        "idle",
        "running",
        "teardown",
        "done",
        "ADO req",
        "tokens"
    );
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        // ADO's view (what the scaler polls), then the agents' (what KEDA counts).
        let (queued, in_flight) = ado.queue_counts(pool_id);
        let (starting, idle, running, teardown, done) = {
            let s = stats.lock().expect("stats");
            (
                s.phase_count(Phase::Starting),
                s.phase_count(Phase::Idle),
                s.phase_count(Phase::Running),
                s.phase_count(Phase::TearingDown),
                s.completed,
            )
        };
        println!(
            "{:>4}s | {queued:>6} {in_flight:>9} | {starting:>8} {idle:>5} {running:>7} {teardown:>8} | {done:>4} | {:>7} {:>6}",
            started.elapsed().as_secs(),
            ado.total_requests(),
            entra.requests(),
        );
    }
}
