//! The binary's edge: the command line (every flag is also an environment variable, so
//! manifests can use either), validated into each module's plain settings, and run. Only
//! `main.rs` uses this module; no module below it knows clap's structs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::{
    agent::{self, AgentSettings},
    auth::{AuthMode, CredentialSettings},
    check::{self, CheckAs, CheckSettings},
    error::{Error, Result},
    gc::{self, GcSettings, rules::Rules},
    k8s::{self, lease::LeaseTiming},
    placeholder, poller, refresh,
    scaler::{
        self,
        access::{Access, NamespaceAllowlist, PoolAllowlist},
        allowlist::{DEFAULT_ALLOWED_ORGS, OrgAllowlist},
    },
    serve,
    telemetry::LogFormat,
};

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
    Serve(Box<ServeArgs>),
    /// Entrypoint of an ephemeral agent pod: register, run one job, deregister; or, with
    /// --config-dir, run the registration `agent prepare` made.
    Agent(AgentCommand),
    /// Explain what is wrong with a setup: runs the real auth and REST calls, prints a checklist.
    Check(CheckArgs),
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

    /// `serve`'s access flags: printed, and the trigger judged by them as `serve` would.
    #[command(flatten)]
    pub access: AccessArgs,

    /// The namespace of the trigger's ScaledJob, judged against --allowed-namespaces.
    #[arg(long = "namespace", env = "ADO_SCALER_CHECK_NAMESPACE")]
    pub scaledjob_namespace: Option<String>,

    /// With --as agent: the registrar's base URL (just-in-time registration); the registrar,
    /// its CA and the token's audience are checked instead of Entra.
    #[arg(long, env = "AZP_REGISTRAR")]
    pub registrar: Option<String>,

    #[command(flatten)]
    pub registrar_files: RegistrarFileArgs,
}

/// The two files the agent pod's init container reads: `agent prepare` and `check --as agent`.
#[derive(Debug, Clone, Args)]
pub struct RegistrarFileArgs {
    /// The projected service-account token (audience ado-scaler), mounted in the init container only.
    #[arg(
        long,
        env = "AZP_REGISTRAR_TOKEN_FILE",
        default_value = "/var/run/secrets/ado-scaler/token"
    )]
    pub registrar_token_file: PathBuf,

    /// The CA that signed the registrar's certificate; nothing else is trusted.
    #[arg(
        long,
        env = "AZP_REGISTRAR_CA_FILE",
        default_value = "/var/run/ado-scaler-ca/ca.crt"
    )]
    pub registrar_ca_file: PathBuf,
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

/// Who may make the scaler act (README: "Security"); `check` takes them too, to say whether
/// its trigger would be served.
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// Organisation URLs trigger metadata may name; `*` matches one host label or path segment.
    #[arg(long, env = "ADO_SCALER_ALLOWED_ORGS", value_delimiter = ',', default_value = DEFAULT_ALLOWED_ORGS)]
    pub allowed_orgs: Vec<String>,

    /// Namespaces whose ScaledJobs are served (comma list); empty: every namespace (warned at start).
    #[arg(long, env = "ADO_SCALER_ALLOWED_NAMESPACES", value_delimiter = ',')]
    pub allowed_namespaces: Vec<String>,

    /// Pools triggers may name, per organisation: `ORG_URL=pool1,pool2;ORG_URL2=*` (`#42` for a
    /// poolID); empty: every pool of an allowed organisation (warned at start).
    #[arg(long, env = "ADO_SCALER_ALLOWED_POOLS", value_delimiter = ';')]
    pub allowed_pools: Vec<String>,

    /// The most pools watched at once; a trigger that would add one more is refused.
    #[arg(long, env = "ADO_SCALER_MAX_POOLS", default_value_t = poller::DEFAULT_MAX_POOLS)]
    pub max_pools: usize,
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

    #[command(flatten)]
    pub access: AccessArgs,

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

    #[command(flatten)]
    pub parallelism: ParallelismArgs,

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

    #[command(flatten)]
    pub registrar: RegistrarArgs,
}

/// Parallel-job awareness (README: "Parallel jobs").
#[derive(Debug, Clone, clap::Args)]
pub struct ParallelismArgs {
    /// Count only the queued jobs the organisation's free self-hosted parallel jobs can start
    /// (`off`: every queued job, as KEDA's scaler does). A trigger opts out with
    /// `parallelismAware: "false"`.
    #[arg(long, env = "ADO_SCALER_PARALLELISM", value_enum, default_value_t = Switch::On)]
    pub parallelism: Switch,

    /// One read of each organisation's parallel jobs per interval, shared by its pools.
    #[arg(long, env = "ADO_SCALER_PARALLELISM_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub parallelism_interval: Duration,
}

/// A feature's switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The registrar: agent pods' keys registered by the scaler (README: "Security").
#[derive(Debug, Clone, Args)]
pub struct RegistrarArgs {
    /// Serve the registrar (HTTPS, with --tls-cert/--tls-key) on this address, e.g. 0.0.0.0:9443.
    #[arg(long, env = "ADO_SCALER_REGISTRAR_ADDR")]
    pub registrar_addr: Option<SocketAddr>,

    /// Namespaces whose agent pods may register (comma list; required with --registrar-addr).
    #[arg(long, env = "ADO_SCALER_REGISTRAR_NAMESPACES", value_delimiter = ',')]
    pub registrar_namespaces: Vec<String>,

    /// Service accounts agent pods run as (comma list).
    #[arg(long, env = "ADO_SCALER_REGISTRAR_SERVICE_ACCOUNTS", value_delimiter = ',', default_value = crate::registrar::DEFAULT_SERVICE_ACCOUNT)]
    pub registrar_service_accounts: Vec<String>,

    /// Without --tls-cert: the scaler's namespace, where its certificate Secret is kept.
    #[arg(
        long,
        env = "ADO_SCALER_REGISTRAR_TLS_NAMESPACE",
        default_value = "ado-scaler"
    )]
    pub registrar_tls_namespace: String,

    /// Without --tls-cert: the Service the agents dial (its names go into the certificate).
    #[arg(
        long,
        env = "ADO_SCALER_REGISTRAR_SERVICE",
        default_value = "ado-scaler"
    )]
    pub registrar_service: String,

    /// Without --tls-cert: the Secret holding the registrar's certificate (shared by replicas).
    #[arg(
        long,
        env = "ADO_SCALER_REGISTRAR_TLS_SECRET",
        default_value = "ado-scaler-registrar-tls"
    )]
    pub registrar_tls_secret: String,

    /// Without --tls-cert: the ConfigMap (in each agents' namespace) holding the CA as `ca.crt`.
    #[arg(
        long,
        env = "ADO_SCALER_REGISTRAR_CA_CONFIGMAP",
        default_value = "ado-scaler-registrar-ca"
    )]
    pub registrar_ca_configmap: String,

    /// Without --tls-cert: where the certificate and key are written for serving (an emptyDir).
    #[arg(
        long,
        env = "ADO_SCALER_REGISTRAR_TLS_DIR",
        default_value = "/var/run/ado-scaler/registrar-tls"
    )]
    pub registrar_tls_dir: PathBuf,
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

/// `agent` and its `prepare` step.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentCommand {
    #[command(subcommand)]
    pub step: Option<AgentStep>,
    #[command(flatten)]
    pub args: AgentArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AgentStep {
    /// Init container: make the agent's key here, have the scaler's registrar register its
    /// public half, write the agent's files into --config-dir.
    Prepare(PrepareArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PrepareArgs {
    /// The registrar's base URL, e.g. https://ado-scaler.ado-scaler.svc:9443.
    #[arg(long, env = "AZP_REGISTRAR")]
    pub registrar: String,

    #[command(flatten)]
    pub files: RegistrarFileArgs,

    /// Where the agent's files are written (a volume shared with the agent container).
    #[arg(long, env = "AZP_CONFIG_DIR", default_value = "/azp/config")]
    pub config_dir: PathBuf,

    /// Where the agent's listener is (for its --version).
    #[arg(long, env = "AZP_AGENT_DIR", default_value = "/azp/agent")]
    pub agent_dir: PathBuf,

    /// Agent work folder, written into `.agent`.
    #[arg(long, env = "AZP_WORK", default_value = "_work")]
    pub work: String,

    /// How long registration may retry while the registrar, ADO or Entra fail.
    #[arg(long, env = "AZP_REGISTRAR_TIMEOUT", value_parser = humantime::parse_duration, default_value = "120s")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Organisation URL (not needed with --config-dir).
    #[arg(long, env = "AZP_URL")]
    pub url: Option<String>,

    /// The registration `agent prepare` wrote: run it, with no token of our own.
    #[arg(long, env = "AZP_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

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

impl AuthArgs {
    pub fn credential(&self) -> CredentialSettings {
        CredentialSettings {
            mode: self.auth,
            pat_file: self.pat_file.clone(),
            pat_flag: "--pat-file",
            ca_file: self.ca_file.clone(),
        }
    }
}

impl AccessArgs {
    /// The three lists, validated; errors name the flag.
    pub fn access(&self) -> std::result::Result<Access, String> {
        let orgs = OrgAllowlist::parse(&self.allowed_orgs)?;
        Ok(Access {
            namespaces: NamespaceAllowlist::parse(&self.allowed_namespaces)?,
            pools: PoolAllowlist::parse(&self.allowed_pools, &orgs)?,
            orgs,
        })
    }

    /// `--max-pools`, at least 1.
    pub fn max_pools(&self) -> std::result::Result<usize, String> {
        match self.max_pools {
            0 => Err("--max-pools must be at least 1".into()),
            n => Ok(n),
        }
    }
}

impl GcArgs {
    /// Validates the `--gc-*` flags; `None` when the collector is off. Errors name the flag.
    pub fn settings(&self) -> std::result::Result<Option<GcSettings>, String> {
        let args = self;
        if !args.enabled {
            return Ok(None);
        }
        let namespace = args
            .namespace
            .clone()
            .filter(|n| !n.trim().is_empty())
            .ok_or("--gc-namespace is required with --gc")?;
        let prefixes = args
            .agent_prefix
            .iter()
            .map(|p| p.trim().to_owned())
            .collect();
        let rules = Rules::new(prefixes, args.grace)?;
        let pools = gc::parse_pools(&args.pools)?;
        if args.interval < Duration::from_secs(10) {
            return Err("--gc-interval must be at least 10s".into());
        }
        let identity = match &args.lease_identity {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => k8s::pod_name().ok_or("--gc-lease-identity: no hostname to default to")?,
        };
        Ok(Some(GcSettings {
            pools,
            namespace,
            rules,
            interval: args.interval,
            lease_namespace: args
                .lease_namespace
                .clone()
                .filter(|n| !n.trim().is_empty()),
            identity,
            timing: LeaseTiming::default(),
            kubeconfig: args.kubeconfig.clone(),
            delete_pace: GcSettings::DELETE_PACE,
        }))
    }
}

impl AgentArgs {
    pub fn settings(self) -> AgentSettings {
        AgentSettings {
            credential: CredentialSettings {
                mode: self.auth,
                pat_file: self.token_file,
                pat_flag: "AZP_TOKEN_FILE (--token-file)",
                ca_file: self.ca_file,
            },
            url: self.url,
            config_dir: self.config_dir,
            pool: self.pool,
            agent_name: self.agent_name,
            work: self.work,
            agent_dir: self.agent_dir,
            download: self.download,
            remove_timeout: self.remove_timeout,
            drain_timeout: self.drain_timeout,
            cancel_timeout: self.cancel_timeout,
            idle_timeout: self.idle_timeout,
            keep_identity_env: self.keep_identity_env,
            run_args: self.run_args,
        }
    }
}

impl PrepareArgs {
    pub fn settings(self) -> agent::prepare::PrepareSettings {
        agent::prepare::PrepareSettings {
            registrar: self.registrar,
            token_file: self.files.registrar_token_file,
            ca_file: self.files.registrar_ca_file,
            config_dir: self.config_dir,
            agent_dir: self.agent_dir,
            work: self.work,
            timeout: self.timeout,
        }
    }
}

impl CheckArgs {
    pub fn settings(&self) -> CheckSettings {
        CheckSettings {
            org: self.org.clone(),
            pool: self.pool.clone(),
            demands: self.demands.clone(),
            capabilities: self.capabilities.clone(),
            agent_name_prefix: self.agent_name_prefix.clone(),
            placeholder: self.placeholder,
            as_: self.as_,
            service_account: self.service_account.clone(),
            scaler_metrics_url: self.scaler_metrics_url.clone(),
            credential: self.auth.credential(),
            gc: self.gc.settings(),
            access: self.access.access(),
            max_pools: self.access.max_pools(),
            namespace: self.scaledjob_namespace.clone(),
            registrar: self.registrar.clone().map(|url| check::RegistrarProbe {
                url,
                token_file: self.registrar_files.registrar_token_file.clone(),
                ca_file: self.registrar_files.registrar_ca_file.clone(),
            }),
        }
    }
}

/// Runs the command line's subcommand to completion; the result is the process exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Serve(args) => run_serve(*args).await.map(|()| 0),
        Command::Agent(AgentCommand {
            step: Some(AgentStep::Prepare(args)),
            ..
        }) => agent::prepare::run(args.settings()).await,
        Command::Agent(command) => agent::run(command.args.settings()).await,
        Command::Check(args) => check::run(args.settings()).await,
    }
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let settings = serve_settings(&args)?;
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))
    };
    let listeners = serve::Listeners {
        grpc: bind(args.grpc_addr).await?,
        http: bind(args.http_addr).await?,
        registrar: match args.registrar.registrar_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        },
    };
    serve::serve(settings, listeners, shutdown_signal()).await
}

/// Validates the `serve` flags into settings.
pub fn serve_settings(args: &ServeArgs) -> Result<serve::ServeSettings> {
    if args.poll_interval.is_zero() {
        return Err(Error::Config(
            "--poll-interval must be greater than 0".into(),
        ));
    }
    if args.placeholder_interval < Duration::from_secs(10) {
        return Err(Error::Config(
            "--placeholder-interval must be at least 10s".into(),
        ));
    }
    if args.max_staleness < args.poll_interval {
        return Err(Error::Config(
            "--max-staleness must be at least --poll-interval".into(),
        ));
    }
    if args.parallelism.parallelism_interval < Duration::from_secs(1) {
        return Err(Error::Config(
            "--parallelism-interval must be at least 1s".into(),
        ));
    }
    let access = args.access.access().map_err(Error::Config)?;
    let max_pools = args.access.max_pools().map_err(Error::Config)?;
    let gc = gc_settings(&args.gc, &access.orgs)?;
    let connection = args.auth.credential().connect()?;
    Ok(serve::ServeSettings {
        gc,
        poller: poller::PollerSettings {
            interval: args.poll_interval,
            max_staleness: args.max_staleness,
            max_pools,
            ..Default::default()
        },
        access,
        parallelism: crate::parallelism::ParallelismSettings {
            enabled: args.parallelism.parallelism == Switch::On,
            interval: args.parallelism.parallelism_interval,
            ..Default::default()
        },
        placeholders: placeholder::PlaceholderSettings {
            interval: args.placeholder_interval,
            ..Default::default()
        },
        auth: connection.auth,
        http: connection.http,
        max_body: args.max_body.as_u64(),
        grpc_tls: grpc_tls_settings(&args.tls)?,
        refresh: refresh_settings(args)?,
        registrar: registrar_settings(args)?,
    })
}

/// `--registrar-*`: namespaces required (no agent pod registers by default), the names
/// Kubernetes allows, and a certificate to serve.
fn registrar_settings(args: &ServeArgs) -> Result<Option<serve::RegistrarServe>> {
    let flags = &args.registrar;
    if flags.registrar_addr.is_none() {
        return Ok(None);
    }
    let names = |flag: &str, items: &[String]| -> Result<Vec<String>> {
        let names: Vec<String> = items
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Err(Error::Config(format!(
                "{flag} is required with --registrar-addr: list the agents' namespaces and service accounts"
            )));
        }
        NamespaceAllowlist::parse(&names).map_err(|e| Error::Config(format!("{flag}: {e}")))?;
        Ok(names)
    };
    let namespaces = names("--registrar-namespaces", &flags.registrar_namespaces)?;
    let service_accounts = names(
        "--registrar-service-accounts",
        &flags.registrar_service_accounts,
    )?;
    // HTTPS only: the gRPC certificate when there is one, else one the scaler makes.
    let tls = match grpc_tls_settings(&args.tls)? {
        Some(files) => serve::RegistrarTls::Files(files),
        None => {
            let namespace = flags.registrar_tls_namespace.trim().to_owned();
            NamespaceAllowlist::parse(std::slice::from_ref(&namespace))
                .map_err(|e| Error::Config(format!("--registrar-tls-namespace: {e}")))?;
            serve::RegistrarTls::SelfManaged(crate::registrar::certs::SelfManagedTls {
                dns_names: crate::registrar::certs::SelfManagedTls::service_names(
                    flags.registrar_service.trim(),
                    &namespace,
                ),
                namespace,
                secret: flags.registrar_tls_secret.trim().to_owned(),
                config_map: flags.registrar_ca_configmap.trim().to_owned(),
                ca_namespaces: namespaces.clone(),
                dir: flags.registrar_tls_dir.clone(),
                reload_interval: args.tls.reload_interval,
            })
        }
    };
    Ok(Some(serve::RegistrarServe {
        settings: crate::registrar::RegistrarSettings {
            namespaces,
            service_accounts,
            cleanup_interval: crate::registrar::cleanup::CLEANUP_INTERVAL,
        },
        tls,
        kubeconfig: args.gc.kubeconfig.clone(),
    }))
}

/// `--tls-*`: both the certificate and its key, or neither; a client CA only with them.
fn grpc_tls_settings(args: &TlsArgs) -> Result<Option<scaler::tls::TlsSettings>> {
    if args.reload_interval < Duration::from_secs(1) {
        return Err(Error::Config(
            "--tls-reload-interval must be at least 1s".into(),
        ));
    }
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Ok(Some(scaler::tls::TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.client_ca.clone(),
            reload_interval: args.reload_interval,
        })),
        (None, None) if args.client_ca.is_some() => Err(Error::Config(
            "--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)"
                .into(),
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::Config("--tls-cert needs --tls-key".into())),
        (None, Some(_)) => Err(Error::Config("--tls-key needs --tls-cert".into())),
    }
}

/// `--refresh-scaledjobs`: `None` when no ScaledJob is named.
fn refresh_settings(args: &ServeArgs) -> Result<Option<refresh::RefreshSettings>> {
    let scaled_jobs = refresh::RefreshSettings::parse_scaled_jobs(&args.refresh_scaledjobs)
        .map_err(Error::Config)?;
    if scaled_jobs.is_empty() {
        return Ok(None);
    }
    if args.refresh_interval < Duration::from_secs(1) {
        return Err(Error::Config(
            "--refresh-interval must be at least 1s".into(),
        ));
    }
    Ok(Some(refresh::RefreshSettings {
        scaled_jobs,
        interval: args.refresh_interval,
        kubeconfig: args.gc.kubeconfig.clone(),
    }))
}

/// Validates the `--gc-*` flags against the allowlist; `None` when the collector is off.
fn gc_settings(args: &GcArgs, allowlist: &OrgAllowlist) -> Result<Option<GcSettings>> {
    let Some(settings) = args.settings().map_err(Error::Config)? else {
        return Ok(None);
    };
    if let Some((org, _)) = settings
        .pools
        .iter()
        .find(|(org, _)| !allowlist.allows(org))
    {
        return Err(Error::Config(format!(
            "--gc-pools: organisation {org} is not in --allowed-orgs"
        )));
    }
    Ok(Some(settings))
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
