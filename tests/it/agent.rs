//! `ado-scaler agent` as a pod runs it: the real binary, the simulated Entra and ADO over TLS,
//! and a simulated agent package that behaves like the real agent (`sim::agent`): `run.sh` and
//! `config.sh` without trap or exec, a listener that shuts down gracefully only on SIGINT, a
//! worker per job that SIGTERM kills outright, and a `config.sh` that registers on the server.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use ado_scaler::agent::download::package;
use ado_sim::{
    SimCloud,
    agent::{Behaviour, Job, install},
};
use nix::{sys::signal::Signal, unistd::Pid};

fn sim_agent() -> &'static Path {
    ado_sim::agent::binary()
}
const NAME: &str = "agents-abc12";

/// A pod: the simulated cloud, a pool, and a simulated agent in its own directory.
struct Pod {
    sim: SimCloud,
    pool_id: u32,
    dir: PathBuf,
    log: PathBuf,
}

impl Pod {
    async fn start(tune: impl FnOnce(&mut Behaviour)) -> Self {
        let sim = SimCloud::start().await.unwrap();
        let pool_id = sim.ado.add_pool("linux");
        let dir = sim.dir().join("pod/agent");
        let log = sim.dir().join("pod/log");
        let mut behaviour = Behaviour::new(&sim.ca_file, &log);
        tune(&mut behaviour);
        install(&dir, sim_agent(), &behaviour).unwrap();
        Self {
            sim,
            pool_id,
            dir,
            log,
        }
    }

    /// A pod whose job arrives 100 ms after the listener starts and runs `run_ms`.
    async fn with_job(run_ms: u64, tune: impl FnOnce(&mut Behaviour)) -> Self {
        Self::start(|b| {
            b.job = Some(Job {
                after_ms: 100,
                run_ms,
            });
            tune(b);
        })
        .await
    }

    /// Starts the entrypoint with extra variables and returns once its job runs.
    async fn run_until_the_job_runs(&self, env: &[(&str, &str)]) -> Child {
        let mut cmd = self.command();
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().unwrap();
        self.wait_for("worker start").await;
        child
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ado-scaler"));
        cmd.arg("agent")
            .envs(self.sim.pod_env())
            .env("AZP_URL", &self.sim.org_url)
            .env("AZP_POOL", "linux")
            .env("AZP_AGENT_NAME", NAME)
            .env("AZP_AGENT_DIR", &self.dir)
            .env("AZP_REMOVE_TIMEOUT", "10s")
            .env("AZP_CANCEL_TIMEOUT", "20s")
            // Tests run as root; so does the agent here, as the real one allows with this.
            .env("AGENT_ALLOW_RUNASROOT", "1")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Event lines with their time (ms since the epoch), in order.
    fn events(&self) -> Vec<(u128, String)> {
        std::fs::read_to_string(self.log.join("events"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, rest) = l.split_once(' ')?;
                Some((t.parse().ok()?, rest.to_owned()))
            })
            .collect()
    }

    fn has(&self, event: &str) -> bool {
        self.events().iter().any(|(_, e)| e.starts_with(event))
    }

    /// When `event` first happened.
    fn at(&self, event: &str) -> u128 {
        self.events()
            .iter()
            .find(|(_, e)| e.starts_with(event))
            .unwrap_or_else(|| panic!("no event {event:?} in {:#?}", self.events()))
            .0
    }

    fn count(&self, event: &str) -> usize {
        self.events()
            .iter()
            .filter(|(_, e)| e.starts_with(event))
            .count()
    }

    async fn wait_for(&self, event: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.has(event) {
            assert!(
                Instant::now() < deadline,
                "no {event:?} within 30 s: {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn env_of(&self, part: &str) -> BTreeMap<String, String> {
        let text = std::fs::read(self.log.join(format!("env-{part}.json")))
            .unwrap_or_else(|_| panic!("{part} never ran"));
        serde_json::from_slice(&text).unwrap()
    }

    fn registered(&self) -> Vec<String> {
        self.sim
            .ado
            .agents(self.pool_id)
            .into_iter()
            .map(|a| a.name)
            .collect()
    }

    /// `remove` ran after every process in the agent directory had exited.
    fn assert_removed_after_everything_exited(&self) {
        let start = self
            .events()
            .into_iter()
            .find(|(_, e)| e.starts_with("remove start"))
            .unwrap_or_else(|| panic!("no remove: {:#?}", self.events()))
            .1;
        assert!(
            start.ends_with("alive="),
            "processes still alive at remove: {start}"
        );
        assert!(self.registered().is_empty(), "{:?}", self.registered());
    }
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn finish(child: Child) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SIGTERM to the entrypoint alone, as the kubelet sends it to the container's PID 1.
fn terminate(child: &Child) -> u128 {
    nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u128 / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_then_removed_with_a_fresh_token_after_everything_exited() {
    let pod = Pod::start(|_| {}).await;
    // The token used to register has expired by the time the agent deregisters.
    pod.sim.entra.set_token_lifetime(Duration::from_secs(1));
    let mut cmd = pod.command();
    cmd.args(["--", "--startuptype", "service"]);
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr} {:#?}", pod.events());

    let configure = &pod.events()[0].1;
    assert_eq!(
        configure,
        &format!(
            "configure args=--unattended --agent {NAME} --url {} --auth PAT --pool linux --work _work --replace --acceptTeeEula leaks=",
            pod.sim.org_url
        ),
        "the token is in no process's arguments"
    );
    assert!(pod.has("configure registered"));
    assert!(pod.has("listener start pid="));
    let listener = pod
        .events()
        .into_iter()
        .find(|(_, e)| e.starts_with("listener start"))
        .unwrap()
        .1;
    assert!(
        listener.ends_with("args=--once --startuptype service"),
        "{listener}"
    );
    assert!(pod.has("worker finished"));
    assert!(pod.has("listener worker exited code=100"));
    assert!(!pod.has("listener got"), "nobody interrupted the listener");
    assert!(pod.at("listener exit code=0") < pod.at("remove start"));
    pod.assert_removed_after_everything_exited();

    // Registration and removal each used a token of their own, issued for them.
    let (configure_env, remove_env) = (pod.env_of("configure"), pod.env_of("remove"));
    let (t1, t2) = (
        &configure_env["VSTS_AGENT_INPUT_TOKEN"],
        &remove_env["VSTS_AGENT_INPUT_TOKEN"],
    );
    assert!(t1.starts_with("sim-") && t2.starts_with("sim-") && t1 != t2);
    assert_eq!(pod.sim.entra.issued(), 2);
    assert!(!pod.sim.token_is_valid(t1), "the first token has expired");
    assert!(
        !pod.env_of("listener")
            .contains_key("VSTS_AGENT_INPUT_TOKEN"),
        "the listener never sees a token"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for token in pod.sim.issued_tokens() {
        assert!(!stderr.contains(&token) && !stdout.contains(&token));
    }
    for phase in [
        "token acquired",
        "agent registered",
        "job started",
        "listener exited",
        "ending=\"finished\"",
        "agent removed",
    ] {
        assert!(stderr.contains(phase), "phase {phase} logged: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_job_cancels_it_through_sigint_to_the_listener_alone() {
    let pod = Pod::with_job(60_000, |_| {}).await;
    let child = pod.run_until_the_job_runs(&[]).await;
    terminate(&child);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(143), "{stderr}");

    assert!(pod.has("listener got SIGINT"), "{:#?}", pod.events());
    assert!(!pod.has("listener got SIGTERM"), "never SIGTERM");
    assert!(pod.has("worker got SIGINT") && pod.has("worker cancelled"));
    assert!(
        pod.has("listener worker exited code=103 signal=-"),
        "the job was cancelled, not killed: {:#?}",
        pod.events()
    );
    assert!(pod.at("listener exit code=0") < pod.at("remove start"));
    pod.assert_removed_after_everything_exited();
    assert!(stderr.contains("ending=\"cancelled\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_the_job_lets_it_finish() {
    let pod = Pod::with_job(1500, |_| {}).await;
    let child = pod
        .run_until_the_job_runs(&[("AZP_DRAIN_TIMEOUT", "30s")])
        .await;
    terminate(&child);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "a drained job that finished: {stderr}");
    assert!(pod.has("worker finished"));
    assert!(!pod.has("listener got"), "nothing was cancelled");
    assert!(!pod.has("worker got"), "nothing was cancelled");
    pod.assert_removed_after_everything_exited();
    assert!(stderr.contains("ending=\"drained\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_shorter_than_the_job_cancels_it_when_it_ends() {
    let pod = Pod::with_job(60_000, |_| {}).await;
    let child = pod
        .run_until_the_job_runs(&[("AZP_DRAIN_TIMEOUT", "1500ms")])
        .await;
    let sent = terminate(&child);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(143), "{stderr}");
    let waited = pod.at("listener got SIGINT") - sent;
    assert!(
        (1500..4000).contains(&waited),
        "SIGINT {waited} ms after SIGTERM, the drain is 1.5 s"
    );
    assert!(pod.has("worker cancelled"));
    pod.assert_removed_after_everything_exited();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_cuts_the_drain_short() {
    let pod = Pod::with_job(60_000, |_| {}).await;
    let child = pod
        .run_until_the_job_runs(&[("AZP_DRAIN_TIMEOUT", "10m")])
        .await;
    terminate(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pod.has("listener got"), "draining");
    let second = terminate(&child);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(143), "{stderr}");
    assert!(pod.at("listener got SIGINT") - second < 2000);
    assert!(pod.has("worker cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_outlasts_the_cancel_timeout_is_killed() {
    // The job ignores the cancel for far longer than we wait.
    let pod = Pod::with_job(60_000, |b| b.cancel_ms = 60_000).await;
    let child = pod
        .run_until_the_job_runs(&[("AZP_CANCEL_TIMEOUT", "1s")])
        .await;
    let sent = terminate(&child);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(143), "{stderr}");
    assert!(pod.has("worker got SIGINT"));
    assert!(!pod.has("worker cancelled"), "killed before it finished");
    assert!(pod.at("remove start") - sent < 8000);
    pod.assert_removed_after_everything_exited();
    assert!(stderr.contains("ending=\"killed\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_a_job_left_behind_are_waited_for_then_killed_before_removal() {
    // A step started a background process that outlives the job by a minute.
    let pod = Pod::start(|b| b.orphan_ms = Some(60_000)).await;
    let mut cmd = pod.command();
    cmd.env("AZP_CANCEL_TIMEOUT", "1500ms");
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "the job finished: {stderr}");
    let waited = pod.at("remove start") - pod.at("listener exit code=0");
    assert!(
        (1500..6000).contains(&waited),
        "left-overs get the grace, then SIGKILL: {waited} ms"
    );
    assert!(stderr.contains("still running: killing them"), "{stderr}");
    pod.assert_removed_after_everything_exited();

    // One that ends by itself within the grace is simply waited for.
    let pod = Pod::start(|b| b.orphan_ms = Some(2_000)).await;
    let out = output(pod.command()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("killing them"), "{stderr}");
    pod.assert_removed_after_everything_exited();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_job_never_comes_leaves_at_the_idle_timeout() {
    let pod = Pod::start(|b| b.job = None).await;
    let mut cmd = pod.command();
    cmd.env("AZP_IDLE_TIMEOUT", "1s");
    let started = Instant::now();
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(pod.has("listener got SIGINT idle"), "{:#?}", pod.events());
    assert!(!pod.has("worker start"));
    pod.assert_removed_after_everything_exited();
    assert!(stderr.contains("ending=\"idle\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_made_before_config_sh_failed_is_deleted() {
    let pod = Pod::start(|b| b.configure_fails = true).await;
    let out = output(pod.command()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "config.sh's code: {stderr}");
    assert!(pod.has("configure registered") && pod.has("configure failed after registering"));
    assert!(!pod.has("listener start"), "no listener");
    assert!(
        pod.registered().is_empty(),
        "deleted through the REST API: {:?}",
        pod.registered()
    );
    assert!(
        stderr.contains("registration deleted through the REST API"),
        "{stderr}"
    );
    assert_eq!(pod.sim.entra.issued(), 2, "a fresh token for the cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_registration_interrupts_it_and_cleans_up() {
    let pod = Pod::start(|b| b.configure_ms = 60_000).await;
    let child = pod.command().spawn().unwrap();
    pod.wait_for("configure registered").await;
    terminate(&child);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(143), "{stderr}");
    assert!(pod.has("configure interrupted"), "{:#?}", pod.events());
    assert!(!pod.has("listener start"));
    assert!(pod.registered().is_empty(), "{:?}", pod.registered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_once_update_restarts_the_listener_in_the_same_pod() {
    let pod = Pod::start(|b| b.updates = 1).await;
    let out = output(pod.command()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(pod.count("listener start"), 2, "{:#?}", pod.events());
    assert!(pod.has("listener exit code=4"));
    // Started again only once the updater (in the listener's group) had finished.
    let second_start = pod
        .events()
        .into_iter()
        .filter(|(_, e)| e.starts_with("listener start"))
        .nth(1)
        .unwrap()
        .0;
    assert!(pod.at("update done") <= second_start);
    assert!(pod.has("worker finished"));
    pod.assert_removed_after_everything_exited();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_never_sees_our_configuration_or_identity() {
    let pod = Pod::start(|_| {}).await;
    let mut cmd = pod.command();
    cmd.env("AZP_WORK", "_work").env("maven", "3.9");
    let out = output(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in ["configure", "listener", "remove"] {
        let env = pod.env_of(part);
        let leaked: Vec<&String> = env
            .keys()
            .filter(|k| {
                k.starts_with("AZP_")
                    || k.starts_with("ADO_SCALER_")
                    || (k.starts_with("VSTS_AGENT_INPUT_")
                        && k.as_str() != "VSTS_AGENT_INPUT_TOKEN")
                    || [
                        "AZURE_CLIENT_ID",
                        "AZURE_TENANT_ID",
                        "AZURE_FEDERATED_TOKEN_FILE",
                        "AZURE_AUTHORITY_HOST",
                    ]
                    .contains(&k.as_str())
            })
            .collect();
        assert!(leaked.is_empty(), "{part} sees {leaked:?}");
        assert_eq!(env["maven"], "3.9", "other variables pass");
        let ignore: Vec<&str> = env["VSO_AGENT_IGNORE"].split(',').collect();
        assert!(ignore.contains(&"VSO_AGENT_IGNORE") && ignore.contains(&"VSTS_AGENT_INPUT_TOKEN"));
    }

    let pod = Pod::start(|_| {}).await;
    let mut cmd = pod.command();
    cmd.env("AZP_KEEP_IDENTITY_ENV", "true");
    let out = output(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = pod.env_of("listener");
    assert_eq!(env["AZURE_CLIENT_ID"], ado_sim::SIM_CLIENT_ID);
    assert_eq!(
        env["AZURE_FEDERATED_TOKEN_FILE"],
        pod.sim.token_file.display().to_string()
    );
    assert!(!env.contains_key("AZP_URL") && !env.contains_key("ADO_SCALER_CA_FILE"));
    let ignore: Vec<&str> = env["VSO_AGENT_IGNORE"].split(',').collect();
    assert!(
        ignore.contains(&"AZURE_CLIENT_ID"),
        "kept, but never a capability: {ignore:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_code_is_kept_and_removal_retried_with_new_tokens() {
    let pod = Pod::start(|b| {
        b.exit_code = 2;
        b.remove_failures = 1;
    })
    .await;
    let out = output(pod.command()).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pod.count("remove start"), 2, "{:#?}", pod.events());
    assert!(pod.has("remove deleted"));
    assert_eq!(pod.sim.entra.issued(), 3, "register, and one per removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_assertion_names_the_federated_credential_to_fix() {
    let pod = Pod::start(|_| {}).await;
    pod.sim.entra.refuse_assertions(true);
    let out = output(pod.command()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("AADSTS700213"), "{stderr}");
    assert!(
        stderr.contains("subject 'system:serviceaccount:ado-scaler:ado-scaler'"),
        "{stderr}"
    );
    assert!(stderr.contains("add a federated credential"), "{stderr}");
    let assertion = std::fs::read_to_string(&pod.sim.token_file).unwrap();
    assert!(
        !stderr.contains(&assertion),
        "the assertion itself is never printed"
    );
    assert!(pod.events().is_empty(), "no config.sh call");
}

/// A package of the simulated agent: the scripts, and a listener that runs the simulator
/// under its own name (links cannot travel in our test packages).
fn sim_package(pod: &Pod) -> Vec<u8> {
    let listener = format!(
        "#!/bin/bash\nexec -a \"$0\" {} \"$@\"\n",
        sim_agent().display()
    );
    let run = std::fs::read_to_string(pod.dir.join("run.sh")).unwrap();
    let config = std::fs::read_to_string(pod.dir.join("config.sh")).unwrap();
    let control = std::fs::read_to_string(pod.dir.join("sim-agent.json")).unwrap();
    package(&[
        ("config.sh", &config, 0o755),
        ("run.sh", &run, 0o755),
        ("bin/Agent.Listener", &listener, 0o755),
        ("bin/Agent.Worker", &listener, 0o755),
        ("sim-agent.json", &control, 0o644),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_agent_is_downloaded_when_asked() {
    let pod = Pod::start(|_| {}).await;
    pod.sim.ado.set_agent_package("4.261.0", sim_package(&pod));
    std::fs::remove_dir_all(&pod.dir).unwrap();

    let out = output(pod.command()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "without --download a missing agent is an error"
    );
    assert!(stderr.contains("--download"), "{stderr}");

    let mut cmd = pod.command();
    cmd.env("AZP_AGENT_DOWNLOAD", "true");
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(pod.dir.join("bin/Agent.Listener").exists());
    assert!(
        stderr.contains("agent downloaded") && stderr.contains("4.261.0"),
        "{stderr}"
    );
    assert!(pod.has("listener exit code=0") && pod.has("remove deleted"));
    assert_eq!(
        pod.sim.ado.download_authorizations(),
        0,
        "no token sent to the download host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_escaping_the_agent_dir_is_refused() {
    let pod = Pod::start(|_| {}).await;
    std::fs::remove_dir_all(&pod.dir).unwrap();
    // A package whose entry climbs out of the directory.
    let mut header = tar::Header::new_old();
    let name = b"../planted.sh";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut raw = header.as_bytes().to_vec();
    raw.extend(vec![0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    pod.sim
        .ado
        .set_agent_package("4.261.0", gz.finish().unwrap());

    let mut cmd = pod.command();
    cmd.env("AZP_AGENT_DOWNLOAD", "1");
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("escapes the agent directory"), "{stderr}");
    assert!(!pod.dir.parent().unwrap().join("planted.sh").exists());
}

/// The fixture is held to the real agent's behaviour (REALITY.md), so that it cannot be
/// friendlier than the agent our users run: this is what the old entrypoint did to a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_agent_dies_to_sigterm_like_the_real_one() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let pod = Pod::with_job(60_000, |b| b.report_ms = 500).await;
    pod.sim
        .write_registration(pod.pool_id, "linux", "sigterm-agent", &pod.dir);
    let mut run = Command::new(pod.dir.join("run.sh"));
    run.arg("--once")
        .current_dir(&pod.dir)
        .env("AGENT_ALLOW_RUNASROOT", "1")
        .process_group(0);
    let mut run = run.spawn().unwrap();
    pod.wait_for("worker start").await;

    // Processes carry the real binaries' names.
    let pid_of = |event: &str| -> String {
        let line = pod
            .events()
            .into_iter()
            .find(|(_, e)| e.starts_with(event))
            .unwrap()
            .1;
        line.split("pid=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    let comm = |pid: String| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm(pid_of("listener start")).trim(), "Agent.Listener");
    assert_eq!(comm(pid_of("worker start")).trim(), "Agent.Worker");

    // SIGTERM to the whole group, as a start script that forwards it does.
    nix::sys::signal::killpg(Pid::from_raw(run.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || run.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.signal(), Some(15), "run.sh neither traps nor waits");
    assert!(
        !pod.has("listener exit"),
        "run.sh is gone while the listener is still shutting down"
    );
    pod.wait_for("listener exit").await;
    assert!(
        pod.has("listener worker exited code=- signal=15"),
        "the worker has no SIGTERM handler: the job was killed, not cancelled: {:#?}",
        pod.events()
    );
    assert!(!pod.has("worker cancelled"));
}

/// The simulated listener holds the registration files to the real agent's format and opens
/// its session only with an assertion the registered key signed: a field named otherwise, a
/// missing file or another key fails, as it would against Azure DevOps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_listener_runs_only_with_the_real_agents_files_and_key() {
    use ado_scaler::agent::credentials::{CREDENTIALS_FILE, KEY_FILE, RsaParams, SETTINGS_FILE};
    let pod = Pod::with_job(50, |_| {}).await;
    let listen = |dir: &Path| {
        let mut cmd = Command::new(dir.join("bin/Agent.Listener"));
        cmd.args(["run", "--once"])
            .current_dir(dir)
            .env("AGENT_ALLOW_RUNASROOT", "1");
        cmd
    };
    let rewrite = |file: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let path = pod.dir.join(file);
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    };
    let rename = |json: &mut serde_json::Value, from: &str, to: &str| {
        let map = json.as_object_mut().unwrap();
        let value = map.remove(from).unwrap();
        map.insert(to.into(), value);
    };
    let cases: [(&str, &dyn Fn()); 6] = [
        ("as written", &|| {}),
        ("clientId named client_id", &|| {
            rewrite(CREDENTIALS_FILE, &|j| {
                rename(&mut j["data"], "clientId", "client_id")
            })
        }),
        ("agentId named id", &|| {
            rewrite(SETTINGS_FILE, &|j| rename(j, "agentId", "id"))
        }),
        ("inverseQ named inverse_q", &|| {
            rewrite(KEY_FILE, &|j| rename(j, "inverseQ", "inverse_q"))
        }),
        ("no key file", &|| {
            std::fs::remove_file(pod.dir.join(KEY_FILE)).unwrap()
        }),
        ("another key", &|| {
            let other = RsaParams::generate().unwrap();
            std::fs::write(pod.dir.join(KEY_FILE), serde_json::to_vec(&other).unwrap()).unwrap()
        }),
    ];
    for (i, (case, spoil)) in cases.iter().enumerate() {
        let name = format!("format-{i}");
        pod.sim
            .write_registration(pod.pool_id, "linux", &name, &pod.dir);
        spoil();
        let out = output(listen(&pod.dir)).await;
        let events = pod.events();
        let last_start = events
            .iter()
            .rposition(|(_, e)| e.starts_with("listener start"))
            .unwrap();
        let after: Vec<&String> = events[last_start..].iter().map(|(_, e)| e).collect();
        if i == 0 {
            assert_eq!(out.status.code(), Some(0), "{case}: {after:?}");
            assert!(
                after
                    .iter()
                    .any(|e| e.starts_with("listener session opened")),
                "{case}"
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{case}: {after:?}");
            assert!(
                after
                    .iter()
                    .any(|e| e.starts_with("listener not configured")
                        || e.starts_with("listener session refused")),
                "{case}: {after:?}"
            );
            assert!(
                !after.iter().any(|e| e.starts_with("worker start")),
                "{case}"
            );
        }
    }
    assert_eq!(pod.sim.ado.agent_sessions().len(), 1);
    let refused = pod.sim.ado.refused_assertions();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("does not verify"), "{refused:?}");
}

/// The token service refuses an assertion used twice, one for another audience, and one
/// that lives longer than five minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_token_service_refuses_replays_and_foreign_assertions() {
    let pod = Pod::start(|_| {}).await;
    pod.sim
        .write_registration(pod.pool_id, "linux", "assertions", &pod.dir);
    let key: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pod.dir.join(".credentials_rsaparams")).unwrap())
            .unwrap();
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pod.dir.join(".credentials")).unwrap()).unwrap();
    let client_id = credentials["data"]["clientId"].as_str().unwrap();
    let url = pod.sim.authorization_url();
    let http = pod.sim.http_client().unwrap();
    let post = |assertion: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
                ))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let good = ado_sim::jwt::sign_assertion(&key, client_id, &url, now).unwrap();
    assert_eq!(post(good.clone()).await, 200);
    assert_eq!(post(good).await, 400, "a replay");
    let foreign =
        ado_sim::jwt::sign_assertion(&key, client_id, "https://elsewhere/token", now).unwrap();
    assert_eq!(post(foreign).await, 400, "another audience");
    let stale = ado_sim::jwt::sign_assertion(&key, client_id, &url, now - 3600).unwrap();
    assert_eq!(post(stale).await, 400, "expired");
    let refused = pod.sim.ado.refused_assertions();
    assert!(refused[0].contains("replay"), "{refused:?}");
    assert!(refused[1].contains("aud"), "{refused:?}");
    assert!(refused[2].contains("not valid now"), "{refused:?}");
}
