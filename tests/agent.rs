//! `ado-scaler agent` as a pod runs it: the real binary, the simulated Entra over TLS, and a
//! fake agent directory whose `config.sh` / `run.sh` record what they are given.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use ado_scaler::{agent::download::package, sim::SimCloud};

/// What one `config.sh` call saw.
#[derive(Debug)]
struct ConfigCall {
    args: String,
    token: String,
    ignore: String,
    /// `/proc/*/cmdline` entries that contained the token while config.sh ran.
    leaks: Vec<String>,
}

struct FakeAgent {
    dir: PathBuf,
    log: PathBuf,
}

const CONFIG_SH: &str = r#"#!/bin/sh
log="LOG"
n=$(ls "$log" | grep -c '^call-')
out="$log/call-$n"
echo "args=$*" > "$out"
echo "token=$VSTS_AGENT_INPUT_TOKEN" >> "$out"
echo "ignore=$VSO_AGENT_IGNORE" >> "$out"
# Look for the token in every process's arguments, without passing it as an argument.
for p in /proc/[0-9]*/cmdline; do
  cmd=$(tr '\0' ' ' < "$p" 2>/dev/null)
  case "$cmd" in *"$VSTS_AGENT_INPUT_TOKEN"*) echo "leak=$p" >> "$out";; esac
done
if [ "$1" = remove ]; then
  if [ -f "$log/fail-remove-once" ]; then rm "$log/fail-remove-once"; exit 1; fi
  exit 0
fi
exit CONFIG_EXIT
"#;

impl FakeAgent {
    /// `run_body` is the shell that run.sh executes after recording its arguments.
    fn new(root: &Path, config_exit: i32, run_body: &str) -> Self {
        let dir = root.join("agent");
        let log = root.join("log");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&log).unwrap();
        let (config, run) = Self::scripts(&log, config_exit, run_body);
        write_exec(&dir.join("config.sh"), &config);
        write_exec(&dir.join("run.sh"), &run);
        Self { dir, log }
    }

    fn scripts(log: &Path, config_exit: i32, run_body: &str) -> (String, String) {
        let log_s = log.display().to_string();
        let config = CONFIG_SH
            .replace("LOG", &log_s)
            .replace("CONFIG_EXIT", &config_exit.to_string());
        let run = format!(
            "#!/bin/sh\necho \"args=$*\" > {log_s}/run\necho \"token=${{VSTS_AGENT_INPUT_TOKEN:-}}\" >> {log_s}/run\n\
             echo \"ignore=$VSO_AGENT_IGNORE\" >> {log_s}/run\ntrap 'echo TERM >> {log_s}/run; exit 143' TERM\n{run_body}\n"
        );
        (config, run)
    }

    fn calls(&self) -> Vec<ConfigCall> {
        (0..)
            .map(|i| self.log.join(format!("call-{i}")))
            .take_while(|p| p.exists())
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap();
                let field = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k}=")))
                        .unwrap_or_default()
                        .to_owned()
                };
                ConfigCall {
                    args: field("args"),
                    token: field("token"),
                    ignore: field("ignore"),
                    leaks: text
                        .lines()
                        .filter_map(|l| l.strip_prefix("leak="))
                        .map(str::to_owned)
                        .collect(),
                }
            })
            .collect()
    }

    fn run_log(&self) -> Option<String> {
        std::fs::read_to_string(self.log.join("run")).ok()
    }
}

fn write_exec(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn agent_command(sim: &SimCloud, agent_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ado-scaler"));
    cmd.arg("agent")
        .envs(sim.pod_env())
        .env("AZP_URL", &sim.org_url)
        .env("AZP_POOL", "linux")
        .env("AZP_AGENT_NAME", "agents-abc12")
        .env("AZP_AGENT_DIR", agent_dir)
        .env("AZP_REMOVE_TIMEOUT", "10s")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn root(sim: &SimCloud) -> PathBuf {
    sim.dir().join("pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_runs_once_and_removes_with_a_fresh_token() {
    let sim = SimCloud::start().await.unwrap();
    // Tokens outlive neither the job nor a cache: the one used to register has expired by
    // the time the agent deregisters.
    sim.entra.set_token_lifetime(Duration::from_secs(1));
    let agent = FakeAgent::new(&root(&sim), 0, "sleep 1.5; exit 0");
    let mut cmd = agent_command(&sim, &agent.dir);
    cmd.args(["--", "--startuptype", "service"]);
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let calls = agent.calls();
    assert_eq!(calls.len(), 2, "configure then remove: {calls:?}");
    let (configure, remove) = (&calls[0], &calls[1]);
    assert_eq!(
        configure.args,
        format!(
            "--unattended --agent agents-abc12 --url {} --auth PAT --pool linux --work _work --replace --acceptTeeEula",
            sim.org_url
        )
    );
    assert_eq!(remove.args, "remove --unattended --auth PAT");

    // The token arrives through VSTS_AGENT_INPUT_TOKEN, and in no process's arguments.
    assert!(configure.token.starts_with("sim-"), "{configure:?}");
    assert!(
        configure.leaks.is_empty() && remove.leaks.is_empty(),
        "{calls:?}"
    );
    // Deregistration used a different, newly issued token; the first one had expired.
    assert!(remove.token.starts_with("sim-") && remove.token != configure.token);
    assert_eq!(sim.entra.issued(), 2);
    let issued = sim.issued_tokens();
    assert!(issued.contains(&configure.token) && issued.contains(&remove.token));
    assert!(
        !sim.token_is_valid(&configure.token),
        "the registration token has expired by now"
    );

    for name in [
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "AZP_URL",
        "AZP_POOL",
        "AZP_AGENT_NAME",
        "AZP_AGENT_DIR",
        "ADO_SCALER_CA_FILE",
        "VSTS_AGENT_INPUT_TOKEN",
    ] {
        assert!(
            configure.ignore.split(',').any(|n| n == name),
            "{name} not in VSO_AGENT_IGNORE={}",
            configure.ignore
        );
    }

    let run = agent.run_log().expect("run.sh ran");
    assert!(run.contains("args=--once --startuptype service"), "{run}");
    assert!(
        run.contains("token=\n"),
        "run.sh never sees the token: {run}"
    );
    assert!(
        run.contains("ignore=") && run.contains("AZURE_CLIENT_ID"),
        "{run}"
    );

    // Nothing secret in our own output either.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for token in &issued {
        assert!(!stderr.contains(token.as_str()) && !stdout.contains(token.as_str()));
    }
    for phase in [
        "token acquired",
        "agent registered",
        "run.sh exited",
        "agent removed",
    ] {
        assert!(stderr.contains(phase), "phase {phase} logged: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reaches_the_agent_then_it_deregisters() {
    let sim = SimCloud::start().await.unwrap();
    let agent = FakeAgent::new(&root(&sim), 0, "sleep 30 & wait $!");
    let child = agent_command(&sim, &agent.dir).spawn().unwrap();
    let pid = child.id();
    // Wait for run.sh to be running (it records its arguments first).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent.run_log().is_none() {
        assert!(std::time::Instant::now() < deadline, "run.sh never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // let run.sh install its trap
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        agent.run_log().unwrap().contains("TERM"),
        "run.sh got SIGTERM"
    );
    let calls = agent.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].args, "remove --unattended --auth PAT");
    assert!(stderr.contains("forwarding signal"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_exit_code_is_kept_after_removal() {
    let sim = SimCloud::start().await.unwrap();
    let agent = FakeAgent::new(&root(&sim), 0, "exit 2");
    // The first removal fails: it is retried with a new token.
    std::fs::write(agent.log.join("fail-remove-once"), "").unwrap();
    let out = output(agent_command(&sim, &agent.dir)).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = agent.calls();
    assert_eq!(
        calls.len(),
        3,
        "configure, failed remove, remove: {calls:?}"
    );
    assert!(calls[1].args.starts_with("remove") && calls[2].args.starts_with("remove"));
    assert_ne!(
        calls[1].token, calls[2].token,
        "each attempt gets its own token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_registration_runs_nothing() {
    let sim = SimCloud::start().await.unwrap();
    let agent = FakeAgent::new(&root(&sim), 3, "exit 0");
    let out = output(agent_command(&sim, &agent.dir)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("config.sh exited with 3: the agent is not registered"),
        "{stderr}"
    );
    assert!(agent.run_log().is_none(), "no run.sh");
    assert_eq!(
        agent.calls().len(),
        1,
        "no remove of an agent that was never registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_assertion_names_the_federated_credential_to_fix() {
    let sim = SimCloud::start().await.unwrap();
    sim.entra.refuse_assertions(true);
    let agent = FakeAgent::new(&root(&sim), 0, "exit 0");
    let out = output(agent_command(&sim, &agent.dir)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("AADSTS700213"), "{stderr}");
    assert!(
        stderr.contains("subject 'system:serviceaccount:ado-scaler:ado-scaler'"),
        "{stderr}"
    );
    assert!(stderr.contains("add a federated credential"), "{stderr}");
    let assertion = std::fs::read_to_string(&sim.token_file).unwrap();
    assert!(
        !stderr.contains(&assertion),
        "the assertion itself is never printed"
    );
    assert!(agent.calls().is_empty(), "no config.sh call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_agent_is_downloaded_when_asked() {
    let sim = SimCloud::start().await.unwrap();
    let root = root(&sim);
    // Build the package from the same fake scripts, then start from an empty directory.
    let scripted = FakeAgent::new(&root, 0, "exit 0");
    let (config, run) = FakeAgent::scripts(&scripted.log, 0, "exit 0");
    std::fs::remove_dir_all(&scripted.dir).unwrap();
    sim.ado.set_agent_package(
        "4.261.0",
        package(&[
            ("config.sh", &config, 0o755),
            ("run.sh", &run, 0o755),
            ("bin/Agent.Listener", "", 0o755),
        ]),
    );

    let out = output(agent_command(&sim, &scripted.dir)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "without --download a missing agent is an error"
    );
    assert!(stderr.contains("--download"), "{stderr}");

    let mut cmd = agent_command(&sim, &scripted.dir);
    cmd.env("AZP_AGENT_DOWNLOAD", "true");
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(scripted.dir.join("bin/Agent.Listener").exists());
    assert!(
        stderr.contains("agent downloaded") && stderr.contains("4.261.0"),
        "{stderr}"
    );
    assert_eq!(scripted.calls().len(), 2);
    assert_eq!(
        sim.ado.download_authorizations(),
        0,
        "no token sent to the download host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_escaping_the_agent_dir_is_refused() {
    let sim = SimCloud::start().await.unwrap();
    let root = root(&sim);
    let agent_dir = root.join("agent");
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
    sim.ado.set_agent_package("4.261.0", gz.finish().unwrap());

    let mut cmd = agent_command(&sim, &agent_dir);
    cmd.env("AZP_AGENT_DOWNLOAD", "1");
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("escapes the agent directory"), "{stderr}");
    assert!(!root.join("planted.sh").exists());
}
