//! A simulated Azure Pipelines agent package, for testing the entrypoint against the real
//! agent's process behaviour (see microsoft/azure-pipelines-agent: `run.sh`, `config.sh`,
//! `Agent.Listener`'s Ctrl-C and SIGTERM handlers, `Agent.Worker`'s Ctrl-C handler):
//!
//! - `run.sh` and `config.sh` are bash scripts that neither trap signals nor `exec`: the
//!   listener runs as their child; `run.sh` starts it again after exit code 4;
//! - `bin/Agent.Listener` (`/proc/PID/comm` is `Agent.Listener`, as for the native app host):
//!   `configure` registers through the simulated ADO's REST API (the token as HTTP Basic) and
//!   writes `.agent`; `remove` deletes the registration (fine if already gone); `run --once`
//!   starts one `Agent.Worker` per job. SIGINT cancels the worker with SIGINT, waits for it
//!   (killing it after 120 s), reports, exits 0. SIGTERM does the same but the process exits 30 s (here
//!   `sigterm_exit_ms`) later regardless. SIGINT during `configure` exits 1; SIGTERM is
//!   not handled there.
//! - `bin/Agent.Worker` runs the job's step as a child; SIGINT cancels it gracefully (exit
//!   103, the agent's code for a cancelled result), SIGTERM kills it (no handler).
//!
//! One binary plays every part, chosen by the name it was started as (symlinks in `bin/`).
//! What each part does is written to an event log the tests read.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use ado_scaler::ado::models::{Agent, List, Pool};

/// The control file in the agent directory: how this simulated agent behaves.
pub const CONTROL_FILE: &str = "sim-agent.json";

/// What the simulated agent does; written by a test, read by every part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Behaviour {
    /// Roots trusted for the simulated ADO (the real agent has `--sslcacert`).
    pub ca_file: PathBuf,
    /// Where the event log and recorded environments go.
    pub log_dir: PathBuf,
    /// The job this agent gets; `None`: its job was taken by another agent or cancelled.
    pub job: Option<Job>,
    /// How long the worker takes to cancel its step gracefully.
    pub cancel_ms: u64,
    /// How long the listener takes to report the job and exit after its worker ended.
    pub report_ms: u64,
    /// After SIGTERM the listener exits this long later, whatever it was doing (real: 30 s).
    pub sigterm_exit_ms: u64,
    /// Exit with 4 (run-once agent updating) this many times before running the job.
    pub updates: u32,
    /// `configure` waits this long after registering, before writing its local configuration.
    pub configure_ms: u64,
    /// `configure` fails after it has registered on the server.
    pub configure_fails: bool,
    /// The listener's exit code after its job.
    pub exit_code: u8,
    /// `remove` fails this many times before it works.
    pub remove_failures: u32,
    /// The job's step leaves a background process behind that lives this long.
    pub orphan_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Job {
    /// From the listener's start to the job's arrival.
    pub after_ms: u64,
    /// How long the job's step runs.
    pub run_ms: u64,
}

impl Behaviour {
    pub fn new(ca_file: &Path, log_dir: &Path) -> Self {
        Self {
            ca_file: ca_file.to_owned(),
            log_dir: log_dir.to_owned(),
            job: Some(Job {
                after_ms: 200,
                run_ms: 1000,
            }),
            cancel_ms: 300,
            report_ms: 300,
            sigterm_exit_ms: 30_000,
            updates: 0,
            configure_ms: 0,
            configure_fails: false,
            exit_code: 0,
            remove_failures: 0,
            orphan_ms: None,
        }
    }
}

/// Lays out a simulated agent in `dir`: the scripts, `bin/` links to `binary` (the
/// `ado-sim-agent` executable), and the control file.
pub fn install(dir: &Path, binary: &Path, behaviour: &Behaviour) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(&behaviour.log_dir)?;
    for (name, text) in [("run.sh", RUN_SH), ("config.sh", CONFIG_SH)] {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    for name in ["Agent.Listener", "Agent.Worker", "_update.sh"] {
        let link = dir.join("bin").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(binary, link)?;
    }
    std::fs::write(
        dir.join(CONTROL_FILE),
        serde_json::to_vec_pretty(behaviour).map_err(std::io::Error::other)?,
    )
}

/// Like the real `run.sh`: refuses root without AGENT_ALLOW_RUNASROOT, runs the listener as a
/// child (no `exec`, no `trap`), and after exit code 4 waits for the update, then runs it again.
const RUN_SH: &str = r#"#!/bin/bash
if [ "$(id -u)" -eq 0 ] && [ -z "$AGENT_ALLOW_RUNASROOT" ]; then
    echo "Must not run interactively with sudo"
    exit 1
fi
DIR="$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$DIR"/bin/Agent.Listener run $*
code=$?
if [[ $code == 4 ]]; then
    sleep 5
    tries=0
    while [[ $tries != 15 ]] && [ ! -x "$DIR"/bin/Agent.Listener ]; do
        sleep 1
        tries=$((tries + 1))
    done
    if [ ! -x "$DIR"/bin/Agent.Listener ]; then
        echo "Failed to update within 20 seconds." >&2
        exit 1
    fi
    "$DIR"/bin/Agent.Listener run $*
else
    exit $code
fi
"#;

/// Like the real `config.sh`: refuses root without AGENT_ALLOW_RUNASROOT, changes to its own
/// directory, and runs the listener's `configure` (or `remove`) as a child.
const CONFIG_SH: &str = r#"#!/bin/bash
if [ "$(id -u)" -eq 0 ] && [ -z "$AGENT_ALLOW_RUNASROOT" ]; then
    echo "Must not run with sudo"
    exit 1
fi
DIR="$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$DIR"
if [[ "$1" == "remove" ]]; then
    ./bin/Agent.Listener "$@"
else
    ./bin/Agent.Listener configure "$@"
fi
"#;

/// The `ado-sim-agent` executable, built on first use. Another package's tests cannot name it
/// with `CARGO_BIN_EXE_*`, so this asks the cargo that builds the tests (the `CARGO` it was
/// compiled by) to build it, in the same profile, and reads the path from cargo's own report.
pub fn binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--package=ado-sim",
                "--bin=ado-sim-agent",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo to build ado-sim-agent");
        assert!(
            out.status.success(),
            "cargo build --bin ado-sim-agent failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|msg| {
                (msg["target"]["name"] == "ado-sim-agent")
                    .then(|| msg["executable"].as_str().map(PathBuf::from))
                    .flatten()
            })
            .expect("cargo named the ado-sim-agent executable")
    })
}

/// Entry point of the `ado-sim-agent` binary.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let role = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        let Some(sim) = SimAgent::load() else {
            eprintln!("{role}: no {CONTROL_FILE} in the agent directory");
            return 2;
        };
        match (role.as_str(), args.get(1).map(String::as_str)) {
            ("Agent.Listener", Some("--version")) => {
                println!("{}", super::ado::SIM_AGENT_VERSION);
                0
            }
            ("Agent.Listener", Some("configure")) => sim.configure(&args[2..]).await,
            ("Agent.Listener", Some("remove")) => sim.remove().await,
            ("Agent.Listener", Some("run")) => sim.listen(&args[2..]).await,
            ("Agent.Worker", _) => sim.work().await,
            ("_update.sh", Some(pid)) => sim.update(pid.parse().unwrap_or(0)).await,
            _ => {
                eprintln!("{role}: unknown command {:?}", &args[1..]);
                1
            }
        }
    });
    ExitCode::from(code)
}

/// The agent's local configuration, as `configure` leaves it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalConfig {
    agent_id: u32,
    agent_name: String,
    pool_id: u32,
    pool_name: String,
    server_url: String,
    work_folder: String,
}

/// What `run` reads from the agent directory, checked as the real listener depends on it:
/// `.agent`'s members, the OAuth `.credentials` and the eight key members.
struct Registration {
    local: LocalConfig,
    client_id: String,
    authorization_url: String,
    oauth_endpoint_url: String,
    key: serde_json::Value,
}

impl Registration {
    fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| -> Result<serde_json::Value, String> {
            let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("{name}: {e}"))
        };
        let agent = read(".agent")?;
        let text = |v: &serde_json::Value, file: &str, name: &str| -> Result<String, String> {
            v[name]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("{file}: {name} is missing or empty"))
        };
        let id = |name: &str| -> Result<u32, String> {
            agent[name]
                .as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!(".agent: {name} is missing or not an id"))
        };
        let local = LocalConfig {
            agent_id: id("agentId")?,
            agent_name: text(&agent, ".agent", "agentName")?,
            pool_id: id("poolId")?,
            pool_name: text(&agent, ".agent", "poolName")?,
            server_url: text(&agent, ".agent", "serverUrl")?,
            work_folder: text(&agent, ".agent", "workFolder")?,
        };
        let credentials = read(".credentials")?;
        if credentials["scheme"] != "OAuth" {
            return Err(".credentials: scheme must be OAuth".into());
        }
        let data = &credentials["data"];
        let authorization_url = text(data, ".credentials", "authorizationUrl")?;
        let key = read(".credentials_rsaparams")?;
        for member in crate::jwt::RSA_MEMBERS {
            text(&key, ".credentials_rsaparams", member)?;
        }
        Ok(Self {
            local,
            client_id: text(data, ".credentials", "clientId")?,
            // Optional: the agent falls back to the authorization URL.
            oauth_endpoint_url: text(data, ".credentials", "oauthEndpointUrl")
                .unwrap_or_else(|_| authorization_url.clone()),
            authorization_url,
            key,
        })
    }

    /// Opens the session: the client assertion, posted as the listener does.
    async fn open_session(&self, http: &reqwest::Client) -> Result<(), String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let assertion =
            crate::jwt::sign_assertion(&self.key, &self.client_id, &self.authorization_url, now)?;
        let answer = http
            .post(&self.oauth_endpoint_url)
            .form(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "HTTP {}: {}",
                answer.status().as_u16(),
                answer.text().await.unwrap_or_default()
            ))
        }
    }
}

struct SimAgent {
    dir: PathBuf,
    behaviour: Behaviour,
}

impl SimAgent {
    /// The agent directory is the one holding `bin/` (where we were started from).
    fn load() -> Option<Self> {
        let exe = std::env::args().next()?;
        let bin = std::fs::canonicalize(Path::new(&exe).parent()?).ok()?;
        let dir = bin.parent()?.to_owned();
        let text = std::fs::read(dir.join(CONTROL_FILE)).ok()?;
        Some(Self {
            behaviour: serde_json::from_slice(&text).ok()?,
            dir,
        })
    }

    fn event(&self, line: &str) {
        event(&self.behaviour.log_dir, line);
    }

    fn record_env(&self, name: &str) {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let _ = std::fs::write(
            self.behaviour.log_dir.join(format!("env-{name}.json")),
            serde_json::to_vec_pretty(&env).unwrap_or_default(),
        );
    }

    fn http(&self) -> Option<reqwest::Client> {
        let ca = std::fs::read(&self.behaviour.ca_file).ok()?;
        ado_scaler::auth::http_client(Some(&ca)).ok()
    }

    /// `Basic base64(VstsAgent:<token>)`, as the agent sends a PAT (or an Entra token in its place).
    fn authorization(&self) -> Option<String> {
        use base64::Engine as _;
        let token = std::env::var("VSTS_AGENT_INPUT_TOKEN").ok()?;
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("VstsAgent:{token}"))
        ))
    }

    /// Processes that are running this token in their arguments (there must be none).
    fn token_leaks(&self) -> Vec<String> {
        let Ok(token) = std::env::var("VSTS_AGENT_INPUT_TOKEN") else {
            return Vec::new();
        };
        let Ok(all) = procfs::process::all_processes() else {
            return Vec::new();
        };
        all.filter_map(|p| p.ok())
            .filter(|p| {
                p.cmdline()
                    .is_ok_and(|c| c.iter().any(|a| a.contains(&token)))
            })
            .map(|p| p.pid.to_string())
            .collect()
    }

    async fn configure(&self, args: &[String]) -> u8 {
        self.record_env("configure");
        let option = |name: &str| {
            args.iter()
                .position(|a| a.eq_ignore_ascii_case(name))
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let (Some(url), Some(pool), Some(name)) =
            (option("--url"), option("--pool"), option("--agent"))
        else {
            self.event("configure missing --url, --pool or --agent");
            return 1;
        };
        self.event(&format!(
            "configure args={} leaks={}",
            args.join(" "),
            self.token_leaks().join(",")
        ));
        // The config stage's Ctrl-C handler exits 1; SIGTERM is not handled at all.
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let registered = tokio::select! {
            r = self.register(&url, &pool, &name) => r,
            _ = int.recv() => {
                self.event("configure interrupted");
                return 1;
            }
        };
        let (pool_id, created, key) = match registered {
            Ok(done) => done,
            Err(e) => {
                self.event(&format!("configure failed: {e}"));
                return 1;
            }
        };
        let agent_id = created.id;
        self.event(&format!("configure registered id={agent_id}"));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(self.behaviour.configure_ms)) => {}
            _ = int.recv() => {
                self.event("configure interrupted");
                return 1;
            }
        }
        if self.behaviour.configure_fails {
            self.event("configure failed after registering");
            return 1;
        }
        let local = LocalConfig {
            agent_id,
            agent_name: name,
            pool_id,
            pool_name: pool,
            server_url: url,
            work_folder: option("--work").unwrap_or_else(|| "_work".into()),
        };
        let authorization = created.authorization.unwrap_or_default();
        let credentials = serde_json::json!({
            "scheme": "OAuth",
            "data": {
                "clientId": authorization.client_id,
                "authorizationUrl": authorization.authorization_url,
                "oauthEndpointUrl": authorization.authorization_url,
            },
        });
        for (name, body) in [
            (".credentials_rsaparams", serde_json::to_vec(&key)),
            (".agent", serde_json::to_vec(&local)),
            (".credentials", serde_json::to_vec(&credentials)),
        ] {
            let _ = std::fs::write(self.dir.join(name), body.unwrap_or_default());
        }
        0
    }

    /// Registers `name` in `pool` (replacing an agent of that name) with a new key; returns
    /// the pool id, the registration as answered and the key.
    async fn register(
        &self,
        url: &str,
        pool: &str,
        name: &str,
    ) -> Result<(u32, Agent, ado_scaler::agent::credentials::RsaParams), String> {
        let http = self.http().ok_or("no http client")?;
        let auth = self.authorization().ok_or("no VSTS_AGENT_INPUT_TOKEN")?;
        let get = |u: String| {
            http.get(u)
                .header("authorization", &auth)
                .header("accept", "application/json")
                .send()
        };
        let pools: List<Pool> = json(
            get(format!(
                "{url}/_apis/distributedtask/pools?poolName={pool}&api-version=7.1"
            ))
            .await,
        )
        .await?;
        let pool_id = pools.value.first().ok_or("pool not found")?.id;
        let agents_url = format!("{url}/_apis/distributedtask/pools/{pool_id}/agents");
        let existing: List<Agent> =
            json(get(format!("{agents_url}?agentName={name}&api-version=7.1")).await).await?;
        for old in existing.value {
            // --replace: the real agent updates the registration in place.
            let _ = http
                .delete(format!("{agents_url}/{}?api-version=7.1", old.id))
                .header("authorization", &auth)
                .send()
                .await;
        }
        let key =
            ado_scaler::agent::credentials::RsaParams::generate().map_err(|e| e.to_string())?;
        let public = key.public_key();
        let body = serde_json::json!({
            "name": name,
            "version": super::ado::SIM_AGENT_VERSION,
            "enabled": true,
            "osDescription": "Linux (simulated)",
            "systemCapabilities": self.capabilities(name),
            "maxParallelism": 1,
            "authorization": { "publicKey": { "exponent": public.exponent, "modulus": public.modulus } },
        });
        let created: Agent = json(
            http.post(format!("{agents_url}?api-version=7.1"))
                .header("authorization", &auth)
                .json(&body)
                .send()
                .await,
        )
        .await?;
        Ok((pool_id, created, key))
    }

    /// Every environment variable but those `VSO_AGENT_IGNORE` names and values of 1024
    /// characters or more, plus the agent's own.
    fn capabilities(&self, name: &str) -> BTreeMap<String, String> {
        let ignored: Vec<String> = std::env::var("VSO_AGENT_IGNORE")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        let mut caps: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, v)| !ignored.contains(k) && v.len() < 1024)
            .collect();
        caps.extend(super::ado::system_capabilities(name).to_map());
        caps
    }

    async fn remove(&self) -> u8 {
        self.record_env("remove");
        self.event(&format!(
            "remove start leaks={} alive={}",
            self.token_leaks().join(","),
            self.alive_in_agent_dir().join(",")
        ));
        if self.count("remove-failures") < self.behaviour.remove_failures {
            self.bump("remove-failures");
            self.event("remove failed: simulated");
            return 1;
        }
        let Some(local) = std::fs::read(self.dir.join(".agent"))
            .ok()
            .and_then(|b| serde_json::from_slice::<LocalConfig>(&b).ok())
        else {
            self.event("remove: not configured");
            return 1;
        };
        let (Some(http), Some(auth)) = (self.http(), self.authorization()) else {
            return 1;
        };
        let sent = http
            .delete(format!(
                "{}/_apis/distributedtask/pools/{}/agents/{}?api-version=7.1",
                local.server_url, local.pool_id, local.agent_id
            ))
            .header("authorization", auth)
            .send()
            .await;
        match sent.map(|r| r.status().as_u16()) {
            // Gone already is fine: the real agent's unconfigure succeeds then too.
            Ok(200..=202 | 204 | 404) => {
                for file in [".agent", ".credentials", ".credentials_rsaparams"] {
                    let _ = std::fs::remove_file(self.dir.join(file));
                }
                self.event(&format!("remove deleted id={}", local.agent_id));
                0
            }
            other => {
                self.event(&format!("remove failed: {other:?}"));
                1
            }
        }
    }

    /// Other processes still working in the agent directory (not us, not our ancestors).
    fn alive_in_agent_dir(&self) -> Vec<String> {
        let me = std::process::id() as i32;
        let Ok(all) = procfs::process::all_processes() else {
            return Vec::new();
        };
        let procs: Vec<procfs::process::Process> = all.filter_map(|p| p.ok()).collect();
        let mut ancestors = vec![me];
        let mut cursor = me;
        while let Some(parent) = procs
            .iter()
            .find(|p| p.pid == cursor)
            .and_then(|p| p.stat().ok())
            .map(|s| s.ppid)
            .filter(|&pp| pp > 1)
        {
            ancestors.push(parent);
            cursor = parent;
        }
        procs
            .iter()
            .filter(|p| !ancestors.contains(&p.pid))
            .filter(|p| p.cwd().is_ok_and(|c| c == self.dir))
            .filter_map(|p| {
                let stat = p.stat().ok().filter(|s| s.state != 'Z')?;
                Some(format!("{}:{}", stat.comm, p.pid))
            })
            .collect()
    }

    /// `run --once`: one job, then exit.
    async fn listen(&self, args: &[String]) -> u8 {
        self.record_env("listener");
        self.event(&format!(
            "listener start pid={} args={}",
            std::process::id(),
            args.join(" ")
        ));
        let registration = match Registration::load(&self.dir) {
            Ok(r) => r,
            Err(e) => {
                self.event(&format!("listener not configured: {e}"));
                return 1;
            }
        };
        let Some(http) = self.http() else {
            self.event("listener has no http client");
            return 1;
        };
        if let Err(e) = registration.open_session(&http).await {
            self.event(&format!("listener session refused: {e}"));
            return 1;
        }
        self.event(&format!(
            "listener session opened agent={} id={}",
            registration.local.agent_name, registration.local.agent_id
        ));
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        if self.count("updates") < self.behaviour.updates {
            self.bump("updates");
            // The updater waits for us to exit, then swaps the binaries.
            let _ = tokio::process::Command::new(self.dir.join("bin/_update.sh"))
                .arg(std::process::id().to_string())
                .spawn();
            self.event("listener exit code=4");
            return 4;
        }

        let job = self.behaviour.job;
        let arrival = Duration::from_millis(job.map_or(0, |j| j.after_ms));
        let stop = tokio::select! {
            _ = tokio::time::sleep(arrival), if job.is_some() => None,
            _ = int.recv() => Some(Signal::SIGINT),
            _ = term.recv() => Some(Signal::SIGTERM),
        };
        if let Some(sig) = stop {
            self.event(&format!("listener got {sig} idle"));
            tokio::time::sleep(Duration::from_millis(self.behaviour.report_ms)).await;
            self.event("listener exit code=0");
            return 0;
        }

        let mut worker = match tokio::process::Command::new(self.dir.join("bin/Agent.Worker"))
            .args(["spawnclient", "3", "4"])
            .spawn()
        {
            Ok(w) => w,
            Err(e) => {
                self.event(&format!("listener cannot start worker: {e}"));
                return 1;
            }
        };
        let worker_pid = worker.id().unwrap_or_default() as i32;
        let status = tokio::select! {
            status = worker.wait() => status,
            _ = int.recv() => {
                self.event("listener got SIGINT");
                self.cancel(worker_pid);
                self.reap_cancelled(&mut worker).await
            }
            _ = term.recv() => {
                self.event("listener got SIGTERM");
                // The real listener waits 30 s for its shutdown, then the process ends anyway.
                let bound = Duration::from_millis(self.behaviour.sigterm_exit_ms);
                let log_dir = self.behaviour.log_dir.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(bound).await;
                    event(&log_dir, "listener exit code=143 after SIGTERM timeout");
                    std::process::exit(143);
                });
                self.cancel(worker_pid);
                self.reap_cancelled(&mut worker).await
            }
        };
        match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                self.event(&format!(
                    "listener worker exited code={} signal={}",
                    s.code().map_or("-".into(), |c| c.to_string()),
                    s.signal().map_or("-".into(), |c| c.to_string())
                ));
            }
            Err(e) => self.event(&format!("listener lost its worker: {e}")),
        }
        // Report the job's result, then leave (`--once`).
        tokio::time::sleep(Duration::from_millis(self.behaviour.report_ms)).await;
        let code = self.behaviour.exit_code;
        self.event(&format!("listener exit code={code}"));
        code
    }

    /// A counter kept in the log directory across processes.
    fn count(&self, name: &str) -> u32 {
        std::fs::read_to_string(self.behaviour.log_dir.join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn bump(&self, name: &str) {
        let next = self.count(name) + 1;
        let _ = std::fs::write(self.behaviour.log_dir.join(name), next.to_string());
    }

    /// Waits for a cancelled worker; like the real listener, which gives the job 60 s to
    /// cancel and kills the worker a minute later, it kills one that takes longer.
    async fn reap_cancelled(
        &self,
        worker: &mut tokio::process::Child,
    ) -> std::io::Result<std::process::ExitStatus> {
        const KILL_AFTER: Duration = Duration::from_secs(120);
        match tokio::time::timeout(KILL_AFTER, worker.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.event("listener kills the worker");
                let _ = worker.start_kill();
                worker.wait().await
            }
        }
    }

    /// Cancels the job: SIGINT to the worker (the real listener asks over its channel).
    fn cancel(&self, worker: i32) {
        self.event("listener cancels the job");
        let _ = kill(Pid::from_raw(worker), Signal::SIGINT);
    }

    /// The worker: one step as a child; Ctrl-C cancels it, SIGTERM is not handled.
    async fn work(&self) -> u8 {
        self.event(&format!("worker start pid={}", std::process::id()));
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        if let Some(ms) = self.behaviour.orphan_ms {
            // Like `nohup server &` in a step: outlives the job, in the agent's group.
            let _ = tokio::process::Command::new("sleep")
                .arg(format!("{:.3}", ms as f64 / 1000.0))
                .spawn();
        }
        let run = Duration::from_millis(self.behaviour.job.map_or(0, |j| j.run_ms));
        let mut step = match tokio::process::Command::new("sleep")
            .arg(format!("{:.3}", run.as_secs_f64()))
            .spawn()
        {
            Ok(s) => s,
            Err(e) => {
                self.event(&format!("worker cannot start step: {e}"));
                return 1;
            }
        };
        tokio::select! {
            _ = step.wait() => {
                self.event("worker finished");
                100
            }
            _ = int.recv() => {
                self.event("worker got SIGINT");
                let _ = kill(Pid::from_raw(step.id().unwrap_or_default() as i32), Signal::SIGINT);
                let _ = step.wait().await;
                tokio::time::sleep(Duration::from_millis(self.behaviour.cancel_ms)).await;
                self.event("worker cancelled");
                103
            }
        }
    }

    /// The self-update script: waits for the listener to exit, then swaps `bin/Agent.Listener`.
    async fn update(&self, listener: i32) -> u8 {
        self.event("update start");
        while Path::new(&format!("/proc/{listener}")).exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let link = self.dir.join("bin/Agent.Listener");
        let target = std::fs::read_link(&link).ok();
        let _ = std::fs::remove_file(&link);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(target) = target {
            let _ = std::os::unix::fs::symlink(target, &link);
        }
        self.event("update done");
        0
    }
}

/// Appends `line` to the event log, with the time in ms since the epoch.
fn event(log_dir: &Path, line: &str) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("events"))
    {
        let _ = writeln!(f, "{now} {line}");
    }
}

async fn json<T: serde::de::DeserializeOwned>(
    sent: reqwest::Result<reqwest::Response>,
) -> Result<T, String> {
    let response = sent.map_err(|e| e.to_string())?;
    let status = response.status();
    if status.as_u16() != 200 {
        return Err(format!("HTTP {status}"));
    }
    response.json().await.map_err(|e| e.to_string())
}
