//! Command line. Every flag is also an environment variable, so manifests can use either.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{auth::AuthMode, scaler::allowlist::DEFAULT_ALLOWED_ORGS, telemetry::LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "ado-scaler",
    version,
    about = "KEDA external scaler for ephemeral Azure DevOps agents, with no PAT"
)]
pub struct Cli {
    /// Log output format; the level comes from RUST_LOG.
    #[arg(long, env = "ADO_SCALER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve KEDA's external-scaler gRPC API.
    Serve(ServeArgs),
    /// Run the whole loop (Entra, ADO, scaler, KEDA, agents) on this machine, simulated.
    Demo(DemoArgs),
    /// Entrypoint of an ephemeral agent pod: register, run one job, deregister.
    Agent(AgentArgs),
    /// Explain what is wrong with a setup: runs the real auth and REST calls, prints a checklist.
    Check(CheckArgs),
}

/// Which pod `check` runs as: decides the expected service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckAs {
    Scaler,
    Agent,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Organisation URL.
    #[arg(long, env = "AZP_URL")]
    pub org: String,

    /// Agent pool name.
    #[arg(long, env = "AZP_POOL")]
    pub pool: String,

    /// The trigger's demands (comma list), to explain which queued jobs it would count.
    #[arg(long, env = "ADO_SCALER_CHECK_DEMANDS", default_value = "")]
    pub demands: String,

    /// A trigger's `capabilities` (comma list); repeat once per ScaledJob on the pool (`;`
    /// between them in the variable) to list the queued jobs none of them counts.
    #[arg(long, env = "ADO_SCALER_CHECK_CAPABILITIES", value_delimiter = ';')]
    pub capabilities: Vec<String>,

    /// The trigger's `agentNamePrefix`: names the placeholder registration checked.
    #[arg(long, env = "ADO_SCALER_CHECK_AGENT_NAME_PREFIX")]
    pub agent_name_prefix: Option<String>,

    /// Check (and if missing, register) each trigger's placeholder, as `serve` would.
    #[arg(
        long,
        env = "ADO_SCALER_CHECK_PLACEHOLDER",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "true",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub placeholder: bool,

    /// Check as the scaler's or as an agent's pod.
    #[arg(long = "as", env = "ADO_SCALER_CHECK_AS", value_enum, default_value_t = CheckAs::Scaler)]
    pub as_: CheckAs,

    /// Expected service account as `namespace:name`; defaults to deploy/'s for --as.
    #[arg(long, env = "ADO_SCALER_CHECK_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// The running scaler's metrics (the Deployment sets http://127.0.0.1:8080/metrics, so
    /// `check` in its pod reads its own replica): whether KEDA's calls arrive, refused TLS
    /// handshakes by cause, and the state of each --refresh-scaledjobs ScaledJob.
    #[arg(long, env = "ADO_SCALER_CHECK_SCALER_METRICS")]
    pub scaler_metrics_url: Option<String>,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// The collector's flags, as `serve` takes them: with `--gc`, check its rights and list
    /// what its next run would delete (nothing is deleted).
    #[command(flatten)]
    pub gc: GcArgs,
}

/// gRPC over TLS for KEDA's `enableTLS` / `caCert`, and mTLS for `tlsClientCert`/`tlsClientKey`
/// (README: "Security").
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain served on the gRPC port (with --tls-key); re-read when it changes.
    #[arg(long = "tls-cert", env = "ADO_SCALER_TLS_CERT")]
    pub cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "ADO_SCALER_TLS_KEY")]
    pub key: Option<PathBuf>,

    /// PEM CA bundle: gRPC clients must present a certificate it signed (mTLS).
    #[arg(long = "tls-client-ca", env = "ADO_SCALER_TLS_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for a change (cert-manager rotates them in place).
    #[arg(long = "tls-reload-interval", env = "ADO_SCALER_TLS_RELOAD_INTERVAL", value_parser = humantime::parse_duration, default_value = "10s")]
    pub reload_interval: Duration,
}

/// How to authenticate to Azure DevOps.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Credential: workload identity (AKS), managed identity, or a PAT file (development only).
    #[arg(long, env = "ADO_SCALER_AUTH", value_enum, default_value_t = AuthMode::WorkloadIdentity)]
    pub auth: AuthMode,

    /// File holding a PAT; only with --auth pat.
    #[arg(long, env = "ADO_SCALER_PAT_FILE")]
    pub pat_file: Option<PathBuf>,

    /// Extra PEM roots trusted for ADO and Entra (corporate CAs); system roots stay trusted.
    #[arg(long, env = "ADO_SCALER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// KEDA-facing gRPC and grpc.health.v1.
    #[arg(long, env = "ADO_SCALER_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: SocketAddr,

    /// /metrics, /healthz, /readyz.
    #[arg(long, env = "ADO_SCALER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Organisation URLs trigger metadata may name; `*` matches one host label or path segment.
    #[arg(long, env = "ADO_SCALER_ALLOWED_ORGS", value_delimiter = ',', default_value = DEFAULT_ALLOWED_ORGS)]
    pub allowed_orgs: Vec<String>,

    /// One job-requests call per pool per interval.
    #[arg(long, env = "ADO_SCALER_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "5s")]
    pub poll_interval: Duration,

    /// How old the last good poll may be before calls fail with UNAVAILABLE.
    #[arg(long, env = "ADO_SCALER_MAX_STALENESS", value_parser = humantime::parse_duration, default_value = "60s")]
    pub max_staleness: Duration,

    /// The largest ADO answer read (e.g. 64MiB, 500MB); a larger one fails that poll, and the
    /// last good value stands until --max-staleness.
    #[arg(long, env = "ADO_SCALER_MAX_BODY", default_value = "64MiB", value_parser = parse_byte_size)]
    pub max_body: bytesize::ByteSize,

    /// How often each placeholder registration is checked (and re-created if deleted).
    #[arg(long, env = "ADO_SCALER_PLACEHOLDER_INTERVAL", value_parser = humantime::parse_duration, default_value = "5m")]
    pub placeholder_interval: Duration,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// ScaledJobs (NAMESPACE/NAME, comma list) to change whenever the TriggerAuthentication
    /// or cert-manager Certificate their triggers' TLS comes from appears or is renewed: KEDA
    /// reads those only when a ScaledJob changes (README: "mTLS and install order").
    #[arg(long, env = "ADO_SCALER_REFRESH_SCALEDJOBS", value_delimiter = ',')]
    pub refresh_scaledjobs: Vec<String>,

    /// How often those are checked.
    #[arg(long, env = "ADO_SCALER_REFRESH_INTERVAL", value_parser = humantime::parse_duration, default_value = "10s")]
    pub refresh_interval: Duration,

    #[command(flatten)]
    pub gc: GcArgs,
}

/// The stale-agent collector (README: "Cleaning the pool").
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Delete registrations of agents that died without deregistering (one replica collects).
    #[arg(
        long = "gc",
        env = "ADO_SCALER_GC",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub enabled: bool,

    /// Namespace of the agent pods; required with --gc.
    #[arg(long = "gc-namespace", env = "ADO_SCALER_GC_NAMESPACE")]
    pub namespace: Option<String>,

    /// Only agents whose name starts with one of these (comma list) are ever deleted; required with --gc.
    #[arg(
        long = "gc-agent-prefix",
        env = "ADO_SCALER_GC_AGENT_PREFIX",
        value_delimiter = ','
    )]
    pub agent_prefix: Vec<String>,

    /// Pools to clean, comma list of ORG_URL=POOL_NAME (each org must pass --allowed-orgs); required with --gc.
    #[arg(long = "gc-pools", env = "ADO_SCALER_GC_POOLS", value_delimiter = ',')]
    pub pools: Vec<String>,

    /// How long an agent must have been offline before it is deleted.
    #[arg(long = "gc-grace", env = "ADO_SCALER_GC_GRACE", value_parser = humantime::parse_duration, default_value = "10m")]
    pub grace: Duration,

    /// Time between two collector runs.
    #[arg(long = "gc-interval", env = "ADO_SCALER_GC_INTERVAL", value_parser = humantime::parse_duration, default_value = "2m")]
    pub interval: Duration,

    /// Namespace of the Lease `ado-scaler-gc`; defaults to the pod's own namespace.
    #[arg(long = "gc-lease-namespace", env = "ADO_SCALER_GC_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's name in the Lease; defaults to the hostname (the pod name).
    #[arg(long = "gc-lease-identity", env = "ADO_SCALER_GC_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,

    /// Kubeconfig for the collector; defaults to KUBECONFIG, then the pod's service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
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

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Organisation URL.
    #[arg(long, env = "AZP_URL")]
    pub url: String,

    /// Agent pool name.
    #[arg(long, env = "AZP_POOL", default_value = "Default")]
    pub pool: String,

    /// Name registered in the pool; defaults to the hostname (the pod name).
    #[arg(long, env = "AZP_AGENT_NAME")]
    pub agent_name: Option<String>,

    /// Agent work folder.
    #[arg(long, env = "AZP_WORK", default_value = "_work")]
    pub work: String,

    /// Where the agent's `config.sh` and `run.sh` live.
    #[arg(long, env = "AZP_AGENT_DIR", default_value = "/azp/agent")]
    pub agent_dir: PathBuf,

    /// If the agent is missing, download it from the organisation instead of failing.
    #[arg(
        long,
        env = "AZP_AGENT_DOWNLOAD",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub download: bool,

    /// Credential: workload identity (AKS), managed identity, or a PAT file (legacy).
    #[arg(long, env = "ADO_SCALER_AUTH", value_enum, default_value_t = AuthMode::WorkloadIdentity)]
    pub auth: AuthMode,

    /// File holding a PAT; only with --auth pat.
    #[arg(long, env = "AZP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Extra PEM roots trusted for ADO and Entra.
    #[arg(long, env = "ADO_SCALER_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// How long deregistration may retry.
    #[arg(long, env = "AZP_REMOVE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub remove_timeout: Duration,

    /// On SIGTERM/SIGINT while a job runs, how long the job may go on before it is cancelled.
    #[arg(long, env = "AZP_DRAIN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "0s")]
    pub drain_timeout: Duration,

    /// After SIGINT to the listener, how long before the agent's processes are killed.
    #[arg(long, env = "AZP_CANCEL_TIMEOUT", value_parser = humantime::parse_duration, default_value = "120s")]
    pub cancel_timeout: Duration,

    /// No job started this long after the listener came up: stop, deregister, exit 0 (0s: wait forever).
    #[arg(long, env = "AZP_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "15m")]
    pub idle_timeout: Duration,

    /// Pass AZURE_* identity variables to the agent (pipelines that use the pod's identity).
    #[arg(
        long,
        env = "AZP_KEEP_IDENTITY_ENV",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub keep_identity_env: bool,

    /// Extra arguments for the listener's `run --once`, after `--`.
    #[arg(last = true)]
    pub run_args: Vec<String>,
}

/// A byte size such as `64MiB`, `500MB` or `1048576`, at least 1 KiB (a smaller limit would
/// refuse every answer).
fn parse_byte_size(raw: &str) -> Result<bytesize::ByteSize, String> {
    let size: bytesize::ByteSize = raw
        .trim()
        .parse()
        .map_err(|e| format!("{raw:?} is not a byte size such as 64MiB ({e})"))?;
    if size.as_u64() < 1024 {
        return Err(format!("{raw:?} is below 1KiB"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_take_binary_and_decimal_units() {
        let parse = |raw| parse_byte_size(raw).map(|s| s.as_u64());
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("64 MiB"), Ok(64 << 20));
        assert_eq!(parse("500MB"), Ok(500_000_000));
        assert_eq!(parse("1048576"), Ok(1 << 20));
        assert_eq!(parse("1KiB"), Ok(1024));
        assert!(parse("1023").unwrap_err().contains("below 1KiB"));
        assert!(
            parse("lots")
                .unwrap_err()
                .contains("\"lots\" is not a byte size")
        );
    }
}
