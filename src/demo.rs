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
    config::DemoArgs,
    error::{Error, Result},
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
    /// `(offset from start, ScaledJob index)` pairs.
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
            drain_limit: Duration::from_secs(60),
            seed: 42,
            live_table: !args.quiet,
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

fn demand_of(config: &DemoConfig, scaled_job: usize) -> Option<String> {
    (config.scaled_jobs > 1).then(|| format!("team-{scaled_job}"))
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
    let pool_id = sim.ado.add_pool("linux");
    // ADO reports its rate-limit budget when an identity uses it; show it on the dashboard.
    sim.ado.simulate_rate_limit(200);
    let grpc = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    let settings = ServeSettings {
        allowlist: sim.allowlist(),
        poller: PollerSettings {
            interval: config.scaler_poll,
            max_staleness: config.scaler_poll * 30,
            ..Default::default()
        },
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

    let stats: Shared = Arc::default();
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut rng = StdRng::seed_from_u64(config.seed);

    for sj in 0..config.scaled_jobs {
        let mut meta = BTreeMap::from([
            ("organizationURL".to_owned(), sim.org_url.clone()),
            ("poolName".to_owned(), "linux".to_owned()),
            ("agentNamePrefix".to_owned(), format!("sj{sj}-")),
            (
                "teardownWindow".to_owned(),
                humantime::format_duration(config.teardown_window).to_string(),
            ),
        ]);
        if let Some(demand) = demand_of(&config, sj) {
            meta.insert("demands".into(), demand);
        }
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
            pool_id,
        };
        tokio::spawn(emulator.run(stop.clone()));
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

    // Arrivals.
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
                out.push((at, rng.random_range(0..config.scaled_jobs)));
            }
        }
    };
    for (at, sj) in schedule {
        tokio::time::sleep_until(started + at).await;
        let demands: Vec<String> = demand_of(&config, sj).into_iter().collect();
        let refs: Vec<&str> = demands.iter().map(String::as_str).collect();
        let id = sim.ado.enqueue(pool_id, &refs);
        let run_for = rng.random_range(config.job_run.0..=config.job_run.1);
        if rng.random_bool(config.cancel_share) {
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

    // Drain: wait until every job ran and every agent that has a job finished tearing down.
    let drain_deadline = Instant::now() + config.drain_limit;
    loop {
        let done = {
            let s = stats.lock().expect("stats");
            // With an idle timeout, agents started for nothing leave by themselves: wait for it.
            let waiting_ok = config.idle_timeout.is_zero();
            s.completed + s.cancelled == s.queued
                && s.agents.iter().all(|(_, p)| {
                    *p == Phase::Done || (waiting_ok && matches!(p, Phase::Idle | Phase::Starting))
                })
        };
        if done || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
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
        agents_started: s.agents.len() as u64,
        agents_ran_a_job: s.ran_a_job,
        agents_left_idle: s.left_idle,
        agents_idle_at_end: (s.phase_count(Phase::Idle) + s.phase_count(Phase::Starting)) as u64,
        max_wait: waits.last().copied().unwrap_or_default(),
        median_wait: waits.get(waits.len() / 2).copied().unwrap_or_default(),
        job_request_polls: sim.ado.requests(Endpoint::JobRequests),
        ado_requests: sim.ado.total_requests(),
        token_requests: sim.entra.requests(),
        elapsed,
    })
}

/// Emulates KEDA's ScaledJob controller for one ScaledJob.
struct KedaEmulator {
    index: usize,
    client: ExternalScalerClient<Channel>,
    scaled_object: ScaledObjectRef,
    config: DemoConfig,
    stats: Shared,
    ado: AdoSim,
    pool_id: u32,
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
                    demand_of(&self.config, self.index),
                    self.config.clone(),
                    self.stats.clone(),
                    self.ado.clone(),
                    self.pool_id,
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
    demand: Option<String>,
    config: DemoConfig,
    stats: Shared,
    ado: AdoSim,
    pool_id: u32,
    stop: tokio_util::sync::CancellationToken,
) {
    let set = |phase| stats.lock().expect("stats").agents[slot].1 = phase;
    tokio::select! {
        () = tokio::time::sleep(config.pod_start) => {}
        () = stop.cancelled() => return,
    }
    let capabilities: BTreeMap<String, String> =
        demand.into_iter().map(|d| (d, "1".to_owned())).collect();
    ado.register_agent(pool_id, &name, &capabilities);
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
            ado.remove_agent(pool_id, &name);
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
    ado.remove_agent(pool_id, &name);
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
