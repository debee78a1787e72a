//! `ado-scaler agent`: the command of each ephemeral agent pod. One pod, one job:
//! get a token with the pod's own identity, register, run exactly one job, deregister with a
//! *fresh* token, exit with the agent's code. The token reaches `config.sh` only through the
//! environment, never the command line, and SIGTERM/SIGINT reach the agent.

pub mod download;

use std::{path::Path, process::ExitStatus, time::Duration};

use azure_core::credentials::Secret;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    process::Command,
    signal::unix::{SignalKind, signal},
    time::Instant,
};

use crate::{
    ado::{AdoClient, OrgUrl},
    auth::{self, AuthMode, AuthSettings, TokenSource},
    config::AgentArgs,
    error::{Error, Result},
    telemetry::Metrics,
};

/// Prefixes of variables that must not become agent capabilities (they describe our
/// identity and configuration, and `VSTS_AGENT_INPUT_*` may hold the token).
const IGNORED_PREFIXES: [&str; 4] = ["AZURE_", "AZP_", "ADO_SCALER_", "VSTS_AGENT_INPUT_"];

/// SIGTERM and SIGINT, caught from the start so that no phase dies without cleaning up.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        let install = |kind| {
            signal(kind).map_err(|e| Error::Config(format!("installing signal handler: {e}")))
        };
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
        }
    }
}

/// Everything the phases share.
struct Agent {
    args: AgentArgs,
    org: OrgUrl,
    name: String,
    settings: AuthSettings,
    http: reqwest::Client,
    ignore: String,
}

/// Runs the entrypoint; the result is the process exit code.
pub async fn run(args: AgentArgs) -> Result<u8> {
    let started = Instant::now();
    let mut signals = Signals::install()?;
    let agent = Agent::new(args)?;
    tracing::info!(agent = %agent.name, org = %agent.org, pool = %agent.args.pool, "agent entrypoint starting");

    // 1. A token, with the pod's own identity.
    // A new credential: its token comes from Entra, not a cache. `--download` reuses it.
    let source = TokenSource::new(&agent.settings, &agent.http, None)?;
    let token = tokio::select! {
        token = source.token() => token?,
        sig = signals.recv() => return Ok(signal_code(sig)),
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "token acquired"
    );

    if !agent.args.agent_dir.join("config.sh").exists() {
        if !agent.args.download {
            return Err(Error::Agent(format!(
                "no agent in {} (config.sh missing): bake it into the image, or pass --download",
                agent.args.agent_dir.display()
            )));
        }
        let phase = Instant::now();
        let version = tokio::select! {
            v = agent.download(source) => v?,
            sig = signals.recv() => return Ok(signal_code(sig)),
        };
        tracing::info!(%version, elapsed_ms = phase.elapsed().as_millis() as u64, "agent downloaded");
    }

    // 2. Register.
    let phase = Instant::now();
    tracing::info!(
        since_start_ms = started.elapsed().as_millis() as u64,
        "running config.sh"
    );
    let (status, signalled) = agent
        .run_child(agent.configure_command(&token), &mut signals)
        .await?;
    drop(token);
    if !status.success() {
        return Err(Error::Agent(format!(
            "config.sh exited with {}: the agent is not registered (see its output above)",
            exit_code(status)
        )));
    }
    tracing::info!(
        elapsed_ms = phase.elapsed().as_millis() as u64,
        "agent registered"
    );

    // 3. Run exactly one job, unless we were told to stop while registering.
    let code = match signalled {
        Some(sig) => signal_code(sig),
        None => {
            let phase = Instant::now();
            match agent.run_child(agent.run_command(), &mut signals).await {
                Ok((status, forwarded)) => {
                    let code = exit_code(status);
                    tracing::info!(
                        code,
                        ?forwarded,
                        elapsed_ms = phase.elapsed().as_millis() as u64,
                        "run.sh exited"
                    );
                    code
                }
                Err(err) => {
                    tracing::error!(error = %err, "run.sh could not be started");
                    1
                }
            }
        }
    };

    // 4. Deregister with a fresh token, whatever happened.
    let phase = Instant::now();
    match agent.remove().await {
        Ok(attempts) => tracing::info!(
            attempts,
            elapsed_ms = phase.elapsed().as_millis() as u64,
            "agent removed"
        ),
        Err(err) => {
            tracing::error!(error = %err, "agent could not be removed; it stays registered offline")
        }
    }
    tracing::info!(
        code,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "agent entrypoint done"
    );
    Ok(code)
}

impl Agent {
    fn new(args: AgentArgs) -> Result<Self> {
        let org = OrgUrl::parse(&args.url).map_err(|e| Error::Config(format!("--url: {e}")))?;
        if org.url().scheme() == "http" && !org.is_loopback() {
            return Err(Error::Config(
                "--url must be https: the token must not travel in clear text".into(),
            ));
        }
        if args.token_file.is_some() && args.auth != AuthMode::Pat {
            return Err(Error::Config(
                "AZP_TOKEN_FILE is only used with --auth pat".into(),
            ));
        }
        let name = match &args.agent_name {
            Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| {
                    Error::Config("--agent-name not set and the hostname is unreadable".into())
                })?,
        };
        let settings = match args.auth {
            AuthMode::Pat => AuthSettings::Pat {
                file: args.token_file.clone().ok_or_else(|| {
                    Error::Config("--auth pat needs AZP_TOKEN_FILE (--token-file)".into())
                })?,
            },
            mode => AuthSettings::from_env(mode, None)?,
        };
        let ca = args
            .ca_file
            .as_deref()
            .map(auth::read_ca_file)
            .transpose()?;
        let http = auth::http_client(ca.as_deref())?;
        Ok(Self {
            ignore: ignored_variables(std::env::vars().map(|(k, _)| k)),
            args,
            org,
            name,
            settings,
            http,
        })
    }

    /// A new credential each time: a fresh token from Entra, not one from a cache.
    async fn fresh_token(&self) -> Result<Secret> {
        TokenSource::new(&self.settings, &self.http, None)?
            .token()
            .await
    }

    async fn download(&self, source: TokenSource) -> Result<String> {
        let ado = AdoClient::new(
            self.http.clone(),
            source,
            std::sync::Arc::new(Metrics::new()),
        );
        download::install(&ado, &self.http, &self.org, &self.args.agent_dir).await
    }

    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new(self.args.agent_dir.join(script));
        cmd.current_dir(&self.args.agent_dir)
            .env("VSO_AGENT_IGNORE", &self.ignore)
            .env_remove("VSTS_AGENT_INPUT_TOKEN")
            // Its own process group: a terminal's Ctrl-C does not reach it behind our back,
            // and we can signal the whole agent (run.sh and Agent.Listener) at once.
            .process_group(0);
        cmd
    }

    fn configure_command(&self, token: &Secret) -> Command {
        let mut cmd = self.command("config.sh");
        cmd.args([
            "--unattended",
            "--agent",
            &self.name,
            "--url",
            &self.org.to_string(),
            "--auth",
            "PAT",
        ])
        .args([
            "--pool",
            &self.args.pool,
            "--work",
            &self.args.work,
            "--replace",
            "--acceptTeeEula",
        ])
        // The agent reads `--token` from here and scrubs it; never on the command line.
        .env("VSTS_AGENT_INPUT_TOKEN", token.secret());
        cmd
    }

    fn run_command(&self) -> Command {
        let mut cmd = self.command("run.sh");
        cmd.arg("--once").args(&self.args.run_args);
        cmd
    }

    /// Runs a child to completion, forwarding SIGTERM/SIGINT to its process group.
    async fn run_child(
        &self,
        mut cmd: Command,
        signals: &mut Signals,
    ) -> Result<(ExitStatus, Option<Signal>)> {
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Agent(format!("cannot start {program}: {e}")))?;
        let group = child.id().map(|id| Pid::from_raw(id as i32));
        let mut forwarded = None;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(|e| Error::Agent(format!("waiting for {program}: {e}")))?;
                    return Ok((status, forwarded));
                }
                sig = signals.recv() => {
                    tracing::info!(signal = %sig, %program, "forwarding signal");
                    if let Some(group) = group {
                        let _ = nix::sys::signal::killpg(group, sig);
                    }
                    forwarded = Some(sig);
                }
            }
        }
    }

    /// `config.sh remove` with a fresh token, retried with backoff until `--remove-timeout`.
    async fn remove(&self) -> Result<u32> {
        let deadline = Instant::now() + self.args.remove_timeout;
        let mut delay = Duration::from_millis(500);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = match self.fresh_token().await {
                Ok(token) => {
                    let mut cmd = self.command("config.sh");
                    cmd.args(["remove", "--unattended", "--auth", "PAT"])
                        .env("VSTS_AGENT_INPUT_TOKEN", token.secret());
                    match cmd.status().await {
                        Ok(s) if s.success() => return Ok(attempts),
                        Ok(s) => format!("config.sh remove exited with {}", exit_code(s)),
                        Err(e) => format!("cannot start config.sh remove: {e}"),
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() + delay > deadline {
                return Err(Error::Agent(format!(
                    "giving up after {attempts} attempts: {outcome}"
                )));
            }
            tracing::warn!(attempt = attempts, error = %outcome, retry_in = ?delay, "deregistration failed");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

/// `VSO_AGENT_IGNORE`: every variable with one of [`IGNORED_PREFIXES`], plus any already listed.
fn ignored_variables(names: impl Iterator<Item = String>) -> String {
    let mut ignored: Vec<String> = names
        .filter(|n| IGNORED_PREFIXES.iter().any(|p| n.starts_with(p)))
        .chain(
            std::env::var("VSO_AGENT_IGNORE")
                .ok()
                .into_iter()
                .flat_map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                }),
        )
        .chain(["VSTS_AGENT_INPUT_TOKEN".to_owned()])
        .collect();
    ignored.sort();
    ignored.dedup();
    ignored.join(",")
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

fn signal_code(sig: Signal) -> u8 {
    (128 + sig as i32) as u8
}

/// `true` when `path` stays below its root: no `..`, no absolute part.
pub(crate) fn stays_inside(path: &Path) -> bool {
    use std::path::Component;
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_identity_and_config_variables() {
        let names = [
            "AZURE_CLIENT_ID",
            "AZP_URL",
            "HOME",
            "ADO_SCALER_CA_FILE",
            "VSTS_AGENT_INPUT_POOL",
            "PATH",
            "AZURE_FEDERATED_TOKEN_FILE",
        ]
        .map(String::from);
        let ignored = ignored_variables(names.into_iter());
        let list: Vec<&str> = ignored.split(',').collect();
        for name in [
            "AZURE_CLIENT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZP_URL",
            "ADO_SCALER_CA_FILE",
            "VSTS_AGENT_INPUT_POOL",
            "VSTS_AGENT_INPUT_TOKEN",
        ] {
            assert!(list.contains(&name), "{name} in {ignored}");
        }
        assert!(!list.contains(&"HOME") && !list.contains(&"PATH"));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(2 << 8)), 2);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(signal_code(Signal::SIGINT), 130);
    }

    #[test]
    fn paths_must_stay_inside() {
        assert!(stays_inside(Path::new("bin/Agent.Listener")));
        assert!(stays_inside(Path::new("./config.sh")));
        assert!(!stays_inside(Path::new("../etc/passwd")));
        assert!(!stays_inside(Path::new("bin/../../x")));
        assert!(!stays_inside(Path::new("/etc/passwd")));
    }
}
