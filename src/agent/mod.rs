//! `ado-scaler agent`: the command of each ephemeral agent pod. One pod, one job:
//! get a token with the pod's own identity, register, run exactly one job, stop it the way the
//! real agent expects, and deregister with a *fresh* token once every agent process has exited.
//! The token reaches `config.sh` only through the environment, never the command line.
//!
//! - [`listener`]: runs the listener; drain, cancel, kill on a stop request; the idle timeout.
//! - [`reaper`]: starts children and reaps every orphan (we are PID 1).
//! - [`proctable`]: `/proc` queries (is a job running, where is the listener).
//! - [`env`]: the agent's scrubbed environment.
//! - [`download`]: the `--download` flag.
//! - [`credentials`]: the agent's own files (`.agent`, `.credentials`, the key).
//! - [`prepare`]: `agent prepare`, the init container that has the registrar register the
//!   pod's key; with `--config-dir` the entrypoint then runs that registration, holding no
//!   credential that can register or deregister anything.

pub mod credentials;
pub mod download;
pub mod env;
pub mod listener;
pub mod prepare;
pub mod proctable;
pub mod reaper;
pub mod signals;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::Arc,
    time::Duration,
};

use azure_core::credentials::Secret;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::time::Instant;

use crate::{
    ado::{AdoClient, OrgUrl},
    auth::{AuthSettings, Connection, CredentialSettings, TokenSource},
    error::{Error, Result},
};
use listener::{ListenerRun, StopPolicy};
use reaper::Reaper;
use signals::{Signals, signal_code};

/// Where the agent keeps its local configuration once `config.sh` has registered it.
const LOCAL_CONFIG: &str = ".agent";

/// The entrypoint's settings, from its flags (`AZP_*`).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Organisation URL, validated when the entrypoint starts (errors name `--url`); not
    /// needed with `config_dir`.
    pub url: Option<String>,
    /// A registration made by `agent prepare`: run it, with no token of our own.
    pub config_dir: Option<PathBuf>,
    pub pool: String,
    /// Name registered in the pool; `None`: the pod's name.
    pub agent_name: Option<String>,
    pub work: String,
    /// Where the agent's `config.sh` and `run.sh` live.
    pub agent_dir: PathBuf,
    /// Download the agent from the organisation when it is missing.
    pub download: bool,
    pub credential: CredentialSettings,
    /// How long deregistration may retry.
    pub remove_timeout: Duration,
    pub drain_timeout: Duration,
    pub cancel_timeout: Duration,
    pub idle_timeout: Duration,
    /// Pass AZURE_* identity variables to the agent.
    pub keep_identity_env: bool,
    /// Extra arguments for the listener's `run --once`.
    pub run_args: Vec<String>,
}

/// Everything the phases share.
struct Agent {
    settings: AgentSettings,
    org: OrgUrl,
    name: String,
    auth: AuthSettings,
    http: reqwest::Client,
    /// The environment of every agent process: ours, scrubbed.
    env: Vec<(String, String)>,
    reaper: Reaper,
}

/// How `config.sh` ended.
enum Registration {
    Done,
    Failed(u8),
    Interrupted(Signal),
}

/// Runs the entrypoint; the result is the process exit code.
pub async fn run(settings: AgentSettings) -> Result<u8> {
    if let Some(dir) = settings.config_dir.clone() {
        return run_registered(settings, &dir).await;
    }
    let started = Instant::now();
    let mut signals = Signals::install()?;
    let agent = Agent::new(settings, Reaper::start()?)?;
    tracing::info!(agent = %agent.name, org = %agent.org, pool = %agent.settings.pool, "agent entrypoint starting");

    // 1. A token, with the pod's own identity.
    // A new credential: its token comes from Entra, not a cache. `--download` reuses it.
    let source = agent.fresh_source()?;
    let token = tokio::select! {
        token = source.token() => token?,
        sig = signals.recv() => return Ok(signal_code(sig)),
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "token acquired"
    );

    if !agent.settings.agent_dir.join("config.sh").exists() {
        if !agent.settings.download {
            return Err(Error::Agent(format!(
                "no agent in {} (config.sh missing): bake it into the image, or pass --download",
                agent.settings.agent_dir.display()
            )));
        }
        let phase = Instant::now();
        let version = tokio::select! {
            v = agent.download(source) => v?,
            sig = signals.recv() => return Ok(signal_code(sig)),
        };
        tracing::info!(%version, elapsed_ms = phase.elapsed().as_millis() as u64, "agent downloaded");
    }

    // 2. Register. It may have reached the server even if config.sh then fails.
    let phase = Instant::now();
    tracing::info!(
        since_start_ms = started.elapsed().as_millis() as u64,
        "running config.sh"
    );
    let registration = agent.configure(token, &mut signals).await?;
    let code = match registration {
        Registration::Done => {
            tracing::info!(
                elapsed_ms = phase.elapsed().as_millis() as u64,
                "agent registered"
            );
            // 3. Exactly one job, stopped gracefully if we are asked to stop.
            run_listener(&agent.settings, &agent.reaper, &mut signals, &agent.env).await
        }
        Registration::Failed(code) => {
            tracing::error!(
                code,
                "config.sh failed: removing any registration it made on the server"
            );
            code
        }
        Registration::Interrupted(sig) => {
            tracing::warn!(signal = %sig, "registration interrupted: removing any registration it made on the server");
            signal_code(sig)
        }
    };

    // 4. Deregister with a fresh token, once every agent process has exited.
    let phase = Instant::now();
    match agent.deregister().await {
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

/// With `--config-dir`: the files `agent prepare` wrote go into the agent directory and the
/// listener runs one job with today's whole lifecycle. There is no token here to register,
/// deregister or reach ADO with: the registrar removes the registration once this container
/// has ended, and the collector is the safety net.
async fn run_registered(settings: AgentSettings, config_dir: &Path) -> Result<u8> {
    let started = Instant::now();
    let mut signals = Signals::install()?;
    let reaper = Reaper::start()?;
    let registered = credentials::install(config_dir, &settings.agent_dir)?;
    tracing::info!(
        agent = %registered.agent_name,
        agent_id = registered.agent_id,
        pool = %registered.pool_name,
        "agent entrypoint starting with the registration its init container made"
    );
    let env = env::agent_environment(std::env::vars(), settings.keep_identity_env);
    let code = run_listener(&settings, &reaper, &mut signals, &env).await;
    tracing::info!(
        code,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "agent entrypoint done"
    );
    Ok(code)
}

/// Exactly one job, stopped gracefully if we are asked to stop; the exit code.
async fn run_listener(
    settings: &AgentSettings,
    reaper: &Reaper,
    signals: &mut Signals,
    env: &[(String, String)],
) -> u8 {
    let phase = Instant::now();
    let outcome = ListenerRun {
        reaper,
        signals,
        policy: StopPolicy {
            drain: settings.drain_timeout,
            cancel: settings.cancel_timeout,
            idle: settings.idle_timeout,
        },
        agent_dir: &settings.agent_dir,
    }
    .run(|| listener_command(&settings.agent_dir, env, &settings.run_args))
    .await;
    match outcome {
        Ok(outcome) => {
            let code = outcome.exit_code();
            tracing::info!(
                ending = outcome.ending.as_str(),
                code,
                listener_code = ?outcome.listener_code,
                job_seen = outcome.job_seen,
                elapsed_ms = phase.elapsed().as_millis() as u64,
                "agent stopped"
            );
            code
        }
        Err(err) => {
            tracing::error!(error = %err, "the listener could not be started");
            1
        }
    }
}

/// An agent program with the scrubbed environment, started in the agent directory.
fn agent_command(agent_dir: &Path, env: &[(String, String)], program: &str) -> Command {
    let mut cmd = Command::new(agent_dir.join(program));
    cmd.current_dir(agent_dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// `bin/Agent.Listener run --once …` directly, so that it is our child and SIGINT reaches
/// it alone (`run.sh` adds a shell in between and nothing else; exit code 4 is handled by
/// [`listener`] as `run.sh` would). `run.sh` for a layout without the listener binary.
fn listener_command(agent_dir: &Path, env: &[(String, String)], run_args: &[String]) -> Command {
    let mut cmd = if agent_dir.join("bin/Agent.Listener").exists() {
        let mut cmd = agent_command(agent_dir, env, "bin/Agent.Listener");
        cmd.arg("run");
        cmd
    } else {
        agent_command(agent_dir, env, "run.sh")
    };
    cmd.arg("--once").args(run_args);
    cmd
}

impl Agent {
    fn new(settings: AgentSettings, reaper: Reaper) -> Result<Self> {
        let url = settings.url.as_deref().ok_or_else(|| {
            Error::Config(
                "--url (AZP_URL) is required unless --config-dir (AZP_CONFIG_DIR) holds a registration made by `agent prepare`".into(),
            )
        })?;
        let org = OrgUrl::parse(url).map_err(|e| Error::Config(format!("--url: {e}")))?;
        let name = match &settings.agent_name {
            Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ => crate::k8s::pod_name().ok_or_else(|| {
                Error::Config("--agent-name not set and the hostname is unreadable".into())
            })?,
        };
        let Connection { auth, http } = settings.credential.connect()?;
        Ok(Self {
            env: env::agent_environment(std::env::vars(), settings.keep_identity_env),
            settings,
            org,
            name,
            auth,
            http,
            reaper,
        })
    }

    /// A new credential each time: a fresh token from Entra, not one from a cache.
    fn fresh_source(&self) -> Result<TokenSource> {
        TokenSource::new(&self.auth, &self.http, None)
    }

    fn client(&self, source: TokenSource) -> AdoClient {
        AdoClient::new(self.http.clone(), source, Arc::default())
    }

    async fn download(&self, source: TokenSource) -> Result<String> {
        let ado = self.client(source);
        download::install(&ado, &self.http, &self.org, &self.settings.agent_dir).await
    }

    fn command(&self, program: &str) -> Command {
        agent_command(&self.settings.agent_dir, &self.env, program)
    }

    /// `config.sh`; a stop request interrupts it with SIGINT (the agent's config stage exits
    /// 1 on Ctrl-C), and its group is killed at `--cancel-timeout`.
    async fn configure(&self, token: Secret, signals: &mut Signals) -> Result<Registration> {
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
            &self.settings.pool,
            "--work",
            &self.settings.work,
            "--replace",
            "--acceptTeeEula",
        ])
        // The agent reads `--token` from here and scrubs it; never on the command line.
        .env("VSTS_AGENT_INPUT_TOKEN", token.secret());
        let pid = self.reaper.spawn(&mut cmd)?;
        drop(cmd);
        drop(token);
        let mut interrupted = None;
        let mut kill_at = None;
        loop {
            tokio::select! {
                status = self.reaper.wait(pid) => {
                    return Ok(match (interrupted, exit_code(status)) {
                        (Some(sig), _) => Registration::Interrupted(sig),
                        (None, 0) => Registration::Done,
                        (None, code) => Registration::Failed(code),
                    });
                }
                sig = signals.recv(), if interrupted.is_none() => {
                    tracing::info!(signal = %sig, "stop requested during config.sh: interrupting it");
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGINT);
                    interrupted = Some(sig);
                    kill_at = Some(Instant::now() + self.settings.cancel_timeout);
                }
                () = listener::until(kill_at) => {
                    tracing::warn!("config.sh did not stop in time: killing it");
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    kill_at = None;
                }
            }
        }
    }

    /// Removes the registration with a fresh token each attempt, retried with backoff until
    /// `--remove-timeout`: `config.sh remove` where the agent's local configuration exists,
    /// else through the REST API (a registration `config.sh` made before failing).
    async fn deregister(&self) -> Result<u32> {
        let deadline = Instant::now() + self.settings.remove_timeout;
        let mut delay = Duration::from_millis(500);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = if self.settings.agent_dir.join(LOCAL_CONFIG).exists() {
                self.remove_with_config_sh().await
            } else {
                self.remove_through_rest().await
            };
            let error = match outcome {
                Ok(()) => return Ok(attempts),
                Err(e) => e.to_string(),
            };
            if Instant::now() + delay > deadline {
                return Err(Error::Agent(format!(
                    "giving up after {attempts} attempts: {error}"
                )));
            }
            tracing::warn!(attempt = attempts, %error, retry_in = ?delay, "deregistration failed");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    async fn remove_with_config_sh(&self) -> Result<()> {
        let token = self.fresh_source()?.token().await?;
        let mut cmd = self.command("config.sh");
        cmd.args(["remove", "--unattended", "--auth", "PAT"])
            .env("VSTS_AGENT_INPUT_TOKEN", token.secret());
        let pid = self.reaper.spawn(&mut cmd)?;
        drop(cmd);
        match exit_code(self.reaper.wait(pid).await) {
            0 => Ok(()),
            code => Err(Error::Agent(format!("config.sh remove exited with {code}"))),
        }
    }

    async fn remove_through_rest(&self) -> Result<()> {
        let ado = self.client(self.fresh_source()?);
        let pool = match ado.find_pool(&self.org, &self.settings.pool).await {
            Ok(pool) => pool,
            Err(Error::NotFound(what)) => {
                tracing::info!(%what, "no such pool: nothing was registered");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let agents = ado.agents_named(&self.org, pool.id, &self.name).await?;
        if agents.is_empty() {
            tracing::info!("no registration of this agent on the server");
        }
        for agent in agents {
            ado.delete_agent(&self.org, pool.id, agent.id).await?;
            tracing::info!(
                agent_id = agent.id,
                "registration deleted through the REST API"
            );
        }
        Ok(())
    }
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 1,
    }
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
