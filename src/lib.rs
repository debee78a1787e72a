//! ado-scaler: autoscale ephemeral Azure DevOps agents on Kubernetes through KEDA, with no PAT.
//!
//! The data path, one module per step:
//!
//! - [`scaler`]: KEDA's external-scaler gRPC service; parses trigger metadata, answers from
//! - [`poller`]: one background poll per pool, shared by every trigger on it, using
//! - [`ado`]: the Azure DevOps REST client and its serde models (big answers decoded as they
//!   arrive, in bounded memory); each trigger's value comes from
//! - [`count`]: the pure rules of which job requests count (demands, capabilities, states,
//!   teardown), and [`standby`]: idle agents to keep ready, by schedule.
//!
//! Beside the data path, `serve` keeps [`placeholder`] registrations so that ADO queues jobs
//! for a pool scaled to zero, [`claims`] reports queued jobs no trigger (or several) counts,
//! and [`gc`] deletes the registrations of agents that died without deregistering, on the
//! one replica [`k8s`] elects, and [`refresh`] changes ScaledJobs whose TLS material KEDA
//! read before it existed or was renewed.
//!
//! The agent side: [`agent`] is the entrypoint of each ephemeral agent pod (token exchange,
//! register, one job, deregister).
//!
//! Operations: [`check`] explains setup mistakes with the real calls.
//!
//! Around it: [`auth`] (workload identity, managed identity, PAT file), [`telemetry`]
//! (logging, Prometheus registry), [`config`] (the CLI), [`sim`] (simulated Entra, ADO and
//! Kubernetes API used by the demo, tests and benchmarks) and [`demo`] (the whole loop with a KEDA emulator).

#![forbid(unsafe_code)]

pub mod ado;
pub mod agent;
pub mod auth;
pub mod check;
pub mod claims;
pub mod config;
pub mod count;
pub mod demo;
pub mod error;
pub mod gc;
pub mod k8s;
pub mod placeholder;
pub mod poller;
pub mod refresh;
pub mod scaler;
pub mod sim;
pub mod standby;
pub mod telemetry;

pub use error::{Error, Result};

use std::time::Duration;

use config::{Cli, Command, ServeArgs};
use tokio::net::TcpListener;

/// Runs the command line's subcommand to completion; the result is the process exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Serve(args) => run_serve(args).await.map(|()| 0),
        Command::Demo(args) => demo::run(args).await.map(|_| 0),
        Command::Agent(args) => agent::run(args).await,
        Command::Check(args) => check::run(args).await,
    }
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let settings = serve_settings(&args)?;
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))
    };
    let grpc = bind(args.grpc_addr).await?;
    let http = bind(args.http_addr).await?;
    scaler::server::serve(settings, grpc, http, shutdown_signal()).await
}

/// Validates the `serve` flags into settings.
pub fn serve_settings(args: &ServeArgs) -> Result<scaler::server::ServeSettings> {
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
    if args.auth.pat_file.is_some() && args.auth.auth != auth::AuthMode::Pat {
        return Err(Error::Config(
            "--pat-file is only used with --auth pat".into(),
        ));
    }
    let allowlist =
        scaler::allowlist::OrgAllowlist::parse(&args.allowed_orgs).map_err(Error::Config)?;
    let ca = args
        .auth
        .ca_file
        .as_deref()
        .map(auth::read_ca_file)
        .transpose()?;
    let gc = gc_settings(&args.gc, &allowlist)?;
    Ok(scaler::server::ServeSettings {
        gc,
        allowlist,
        poller: poller::PollerSettings {
            interval: args.poll_interval,
            max_staleness: args.max_staleness,
            ..Default::default()
        },
        placeholders: placeholder::PlaceholderSettings {
            interval: args.placeholder_interval,
            ..Default::default()
        },
        auth: auth::AuthSettings::from_env(args.auth.auth, args.auth.pat_file.clone())?,
        http: auth::http_client(ca.as_deref())?,
        max_body: args.max_body.as_u64(),
        grpc_tls: grpc_tls_settings(&args.tls)?,
        refresh: refresh_settings(args)?,
    })
}

/// `--tls-*`: both the certificate and its key, or neither; a client CA only with them.
fn grpc_tls_settings(args: &config::TlsArgs) -> Result<Option<scaler::tls::TlsSettings>> {
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
fn gc_settings(
    args: &config::GcArgs,
    allowlist: &scaler::allowlist::OrgAllowlist,
) -> Result<Option<gc::GcSettings>> {
    let Some(settings) = gc::GcSettings::from_args(args).map_err(Error::Config)? else {
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
