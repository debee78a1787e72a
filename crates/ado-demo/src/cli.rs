//! The demo's command line: the edge of the `ado-demo` binary. Every flag is also an
//! environment variable.

use std::{net::SocketAddr, time::Duration};

use ado_scaler::{cli::Switch, telemetry::LogFormat};
use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ado-demo",
    version,
    about = "The whole ado-scaler loop (Entra, ADO, scaler, KEDA, agents) on this machine, simulated"
)]
pub struct DemoArgs {
    /// Log output format; the level comes from RUST_LOG (warnings only by default: the demo
    /// prints its own table).
    #[arg(long, env = "ADO_SCALER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How long new pipeline jobs keep arriving; the demo then drains the queue.
    #[arg(long, env = "ADO_SCALER_DEMO_DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    pub duration: Duration,

    /// Arrival rate of simulated pipeline jobs.
    #[arg(long, env = "ADO_SCALER_DEMO_JOBS_PER_MINUTE", default_value_t = 60)]
    pub jobs_per_minute: u32,

    /// Number of ScaledJobs (each with its own demand) polling the same pool.
    #[arg(long, env = "ADO_SCALER_DEMO_SCALED_JOBS", default_value_t = 1)]
    pub scaled_jobs: u32,

    /// The triggers' teardownWindow; the simulated agents take 2.5 s to tear down.
    #[arg(long, env = "ADO_SCALER_DEMO_TEARDOWN_WINDOW", value_parser = humantime::parse_duration, default_value = "2500ms")]
    pub teardown_window: Duration,

    /// Simulated agents with no job this long after registering leave, as `agent --idle-timeout`.
    #[arg(long, env = "ADO_SCALER_DEMO_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    pub idle_timeout: Duration,

    /// Share of jobs their users cancel while still queued (0 to 1): their agents get no job.
    #[arg(long, env = "ADO_SCALER_DEMO_CANCEL_SHARE", default_value_t = 0.15)]
    pub cancel_share: f64,

    /// Run without placeholder registrations: every job ADO cannot match to a registered
    /// agent fails at once, as in a real organisation.
    #[arg(
        long,
        env = "ADO_SCALER_DEMO_NO_PLACEHOLDERS",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_placeholders: bool,

    /// Share of jobs (0 to 1) that demand `GPU` where the only GPU ScaledJob, migrated from
    /// KEDA, says `demands: gpu`: ADO queues them, no trigger counts them.
    #[arg(long, env = "ADO_SCALER_DEMO_ORPHAN_SHARE", default_value_t = 0.05)]
    pub orphan_share: f64,

    /// Kill a quarter of the agents without deregistering (during their job or their
    /// teardown) and watch the stale-agent collector clean the pool.
    #[arg(
        long,
        env = "ADO_SCALER_DEMO_CHAOS",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub chaos: bool,

    /// Run the `deploy/self-registration/` mode: each agent exchanges its own workload identity
    /// and registers itself. By default the scaler's registrar registers the key each agent
    /// pod made, and agents hold no credential.
    #[arg(
        long,
        env = "ADO_SCALER_DEMO_SELF_REGISTRATION",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub self_registration: bool,

    /// The organisation's self-hosted parallel jobs: simulated ADO runs at most this many
    /// jobs at once and keeps the rest queued (default: no limit).
    #[arg(long, env = "ADO_SCALER_DEMO_PARALLEL_JOBS", value_parser = clap::value_parser!(u64).range(1..))]
    pub parallel_jobs: Option<u64>,

    /// The scaler's `--parallelism`: `off` counts every queued job, as KEDA's scaler does.
    #[arg(long, env = "ADO_SCALER_DEMO_PARALLELISM", value_enum, default_value_t = Switch::On)]
    pub parallelism: Switch,

    /// The triggers' `parallelismHeadroom`: jobs next in line for a parallel job that count.
    #[arg(
        long,
        env = "ADO_SCALER_DEMO_PARALLELISM_HEADROOM",
        default_value_t = 0
    )]
    pub parallelism_headroom: u64,

    /// Where the demo's scaler serves /metrics (point a Prometheus at it while it runs).
    #[arg(
        long,
        env = "ADO_SCALER_DEMO_METRICS_ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub metrics_addr: SocketAddr,

    /// Print no live table, only the summary.
    #[arg(
        long,
        env = "ADO_SCALER_DEMO_QUIET",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub quiet: bool,
}
