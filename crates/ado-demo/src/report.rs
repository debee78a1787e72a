//! What a run achieved: the summary, the live table, and the scaler metrics sampled for them.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    Registration,
    agents::{Phase, Shared},
};
use ado_sim::AdoSim;

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
    /// Agents killed without deregistering (`--chaos`).
    pub agents_killed: u64,
    /// Jobs failed because their agent was killed.
    pub jobs_lost: u64,
    /// Registrations of killed agents deleted since (by the registrar once their pod was gone,
    /// or by the collector).
    pub stale_removed: u64,
    /// Registrations of killed agents still in the pool at the end.
    pub stale_left: u64,
    /// Every registration in the pool at the end.
    pub registrations: u64,
    /// Agents whose pods still ran at the end.
    pub agents_alive: u64,
    /// Agents that ran their one job.
    pub agents_ran_a_job: u64,
    /// Agents that got no job and left at the idle timeout.
    pub agents_left_idle: u64,
    /// Agents still waiting for a job when the run ended (started for nothing).
    pub agents_idle_at_end: u64,
    /// Agents that found every job they could run waiting for one of the organisation's
    /// parallel jobs.
    pub agents_without_parallel_job: u64,
    /// Seconds agents spent registered with no job (until they took one or left).
    pub idle_agent_seconds: f64,
    pub max_wait: Duration,
    pub median_wait: Duration,
    pub job_request_polls: u64,
    pub ado_requests: u64,
    /// The scaler's token requests.
    pub token_requests: u64,
    /// Token requests the agents made themselves (none just in time).
    pub agent_token_requests: u64,
    /// Agents registered (by the registrar, or by themselves).
    pub agents_registered: u64,
    pub registration: Registration,
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
            "  agents started for jobs that had no parallel job: {} ({:.1} idle agent-seconds in all)",
            self.agents_without_parallel_job, self.idle_agent_seconds
        )?;
        writeln!(
            f,
            "  agents killed         {} without deregistering ({} jobs lost with them): \
             {} of their registrations removed, {} left",
            self.agents_killed, self.jobs_lost, self.stale_removed, self.stale_left
        )?;
        writeln!(
            f,
            "  pool registrations    {} at the end = {} placeholders + {} agents still running + {} stale",
            self.registrations, self.placeholders, self.agents_alive, self.stale_left
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
        writeln!(f, "  token requests        {}", self.token_requests)?;
        match self.registration {
            Registration::JustInTime => write!(
                f,
                "  registration          just in time: the registrar registered {} agents; \
                 the agents requested {} tokens and held no credential",
                self.agents_registered, self.agent_token_requests
            ),
            Registration::SelfRegistration => write!(
                f,
                "  registration          self-registration: {} agents registered themselves \
                 (token requests of their own identity: {})",
                self.agents_registered, self.agent_token_requests
            ),
        }
    }
}

/// Samples the scaler's `ado_scaler_jobs_unclaimed` as a Prometheus would.
pub(super) async fn watch_unclaimed(
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

pub(super) async fn print_table(
    stats: Shared,
    ado: AdoSim,
    pool_id: u32,
    entra: ado_sim::Entra,
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
