//! The `ado-scaler serve` binary as Kubernetes runs it: configured only through the
//! environment the workload-identity webhook and the manifest set, stopped with SIGTERM.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use ado_scaler::{
    gc::LEASE_NAME,
    scaler::proto::{
        GetMetricsRequest, ScaledObjectRef, external_scaler_client::ExternalScalerClient,
    },
};
use ado_sim::{SIM_AGENT_NAMESPACE, SIM_SCALER_NAMESPACE, SimCloud};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_from_env_answers_keda_and_stops_on_sigterm_without_leaking_secrets() {
    let sim = SimCloud::start().await.unwrap();
    // Empty, as a pool scaled to zero: jobs queued now would fail at once.
    let pool_id = sim.ado.add_pool("linux");
    // An agent OOM-killed an hour ago: the collector deletes it.
    let dead = sim
        .ado
        .register_agent(pool_id, "ado-agent-oom", &Default::default());
    sim.ado.set_agent_online(pool_id, "ado-agent-oom", false);
    sim.ado
        .age_agent(pool_id, "ado-agent-oom", Duration::from_secs(3600));

    let mut child = Command::new(env!("CARGO_BIN_EXE_ado-scaler"))
        .arg("serve")
        .envs(sim.pod_env())
        .env("ADO_SCALER_GRPC_ADDR", "127.0.0.1:0")
        .env("ADO_SCALER_HTTP_ADDR", "127.0.0.1:0")
        .env("ADO_SCALER_ALLOWED_ORGS", &sim.org_url)
        .env("ADO_SCALER_POLL_INTERVAL", "200ms")
        .env("ADO_SCALER_LOG_FORMAT", "json")
        // The collector, through a kubeconfig as outside a cluster.
        .env("ADO_SCALER_GC", "true")
        .env("ADO_SCALER_GC_NAMESPACE", SIM_AGENT_NAMESPACE)
        .env("ADO_SCALER_GC_AGENT_PREFIX", "ado-agent-")
        .env("ADO_SCALER_GC_POOLS", format!("{}=linux", sim.org_url))
        .env("ADO_SCALER_GC_LEASE_IDENTITY", "ado-scaler-7d9f-x2")
        .env("KUBECONFIG", &sim.kubeconfig)
        // Every level of ours and of the clients that carry secrets (the transport layers
        // log frames, not payloads), so that any secret in their logs would show.
        .env(
            "RUST_LOG",
            "trace,h2=info,hyper=info,hyper_util=info,rustls=info,tower=info,tonic=info,axum=info,mio=info",
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Collect log lines on a thread; learn the bound addresses from the startup line.
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut logs = Vec::new();
    let grpc_addr = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("startup log line");
        logs.push(line.clone());
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
        if event["message"] == "ado-scaler serving" {
            break event["grpc_addr"].as_str().unwrap().to_owned();
        }
    };
    // Nothing restricts namespaces or pools here: serve says so as it starts.
    for open in ["--allowed-namespaces is empty", "--allowed-pools is empty"] {
        assert!(
            logs.iter()
                .any(|l| l.contains(open) && l.contains("\"WARN\"")),
            "{open}: {logs:#?}"
        );
    }

    let mut client = ExternalScalerClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    let meta: HashMap<String, String> = HashMap::from([
        ("organizationURLFromEnv".into(), sim.org_url.clone()),
        ("poolName".into(), "linux".into()),
        ("demands".into(), "maven".into()),
    ]);
    let request = GetMetricsRequest {
        scaled_object_ref: Some(ScaledObjectRef {
            name: "agents".into(),
            namespace: "ns".into(),
            scaler_metadata: meta,
        }),
        metric_name: "ado-pool-linux".into(),
    };
    let mut value = async || {
        client
            .get_metrics(request.clone())
            .await
            .unwrap()
            .into_inner()
            .metric_values[0]
            .metric_value
    };
    assert_eq!(value().await, 0);
    // The trigger's first call registers its placeholder; from then on ADO queues its jobs.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let placeholder = loop {
        let placeholder = sim
            .ado
            .agents(pool_id)
            .into_iter()
            .find(|a| a.name.starts_with("ado-scaler-placeholder-"));
        if let Some(p) = placeholder {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no placeholder registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        placeholder
            .user_capabilities
            .get("maven")
            .map(String::as_str),
        Some("")
    );
    sim.ado.enqueue(pool_id, &["maven"]);
    sim.ado.enqueue(pool_id, &["maven"]);
    assert_eq!(sim.ado.jobs_rejected_no_agent(), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while value().await != 2 {
        assert!(std::time::Instant::now() < deadline, "both jobs counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The deletion as the collector reports it (the simulated ADO records it before it
    // answers, so the log line is what says the collector saw it through).
    while !logs
        .iter()
        .any(|l| l.contains("deleted a stale agent registration"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the collector deleted the dead agent"
        );
        logs.extend(lines_rx.try_iter());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sim.ado
            .deletions()
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        [dead]
    );
    let holder = |sim: &SimCloud| {
        sim.kube
            .lease(SIM_SCALER_NAMESPACE, LEASE_NAME)
            .and_then(|l| l.spec?.holder_identity)
    };
    assert_eq!(holder(&sim).as_deref(), Some("ado-scaler-7d9f-x2"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    logs.extend(lines_rx.try_iter());
    let all = logs.join("\n");
    assert!(all.contains("ado-scaler stopped"), "{all}");
    assert!(all.contains("deleted a stale agent registration"), "{all}");
    // Released on SIGTERM: the other replica takes over at once.
    assert_eq!(holder(&sim).as_deref(), Some(""));
    assert!(all.contains("released the lease"), "{all}");

    let assertion = std::fs::read_to_string(&sim.token_file).unwrap();
    let tokens = sim.issued_tokens();
    assert_eq!(tokens.len(), 1);
    let kube_token = sim.kube.token().to_owned();
    for secret in tokens.iter().chain([&assertion, &kube_token]) {
        assert!(
            !all.contains(secret.as_str()),
            "a secret appeared in the logs"
        );
    }
    // The assertion's signature part is the most specific piece of it.
    assert!(!all.contains(assertion.rsplit('.').next().unwrap()));
}

#[test]
fn bad_flags_fail_fast_and_name_the_problem() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ado-scaler"))
            .args(args)
            .env_remove("AZURE_CLIENT_ID")
            .env_remove("AZURE_TENANT_ID")
            .env_remove("AZURE_FEDERATED_TOKEN_FILE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(
        &[
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(err.contains("AZURE_CLIENT_ID is not set"), "{err}");
    let err = run(&["serve", "--poll-interval", "soon"], &[]);
    assert!(err.contains("--poll-interval"), "{err}");
    let err = run(
        &["serve", "--allowed-orgs", "http://dev.azure.com/*"],
        &[("AZURE_CLIENT_ID", "x")],
    );
    assert!(err.contains("plain http"), "{err}");
    let err = run(
        &["serve", "--max-staleness", "1s", "--poll-interval", "5s"],
        &[],
    );
    assert!(err.contains("--max-staleness"), "{err}");
    let err = run(&["serve", "--auth", "pat"], &[]);
    assert!(err.contains("--pat-file"), "{err}");
    let err = run(&["serve", "--placeholder-interval", "1s"], &[]);
    assert!(
        err.contains("--placeholder-interval must be at least 10s"),
        "{err}"
    );

    // Who may make the scaler act: each bad setting named by its flag.
    let access = |extra: &[&str]| {
        let mut args = vec!["serve", "--allowed-orgs", "https://dev.azure.com/contoso"];
        args.extend_from_slice(extra);
        run(&args, &[("AZURE_CLIENT_ID", "x")])
    };
    let err = access(&["--allowed-namespaces", "ado-agents,Team_B"]);
    assert!(
        err.contains("--allowed-namespaces: \"Team_B\" is not a namespace name"),
        "{err}"
    );
    let err = access(&["--allowed-pools", "https://dev.azure.com/fabrikam=linux"]);
    assert!(
        err.contains(
            "--allowed-pools: organisation https://dev.azure.com/fabrikam is not in --allowed-orgs"
        ),
        "{err}"
    );
    let err = run(
        &["serve"],
        &[
            ("AZURE_CLIENT_ID", "x"),
            (
                "ADO_SCALER_ALLOWED_POOLS",
                "https://dev.azure.com/contoso=a;https://dev.azure.com/x",
            ),
        ],
    );
    assert!(
        err.contains("\"https://dev.azure.com/x\" is not ORG_URL=POOL"),
        "{err}"
    );
    let err = access(&["--max-pools", "0"]);
    assert!(err.contains("--max-pools must be at least 1"), "{err}");

    // The collector: each required flag named, no empty prefix, orgs from the allowlist.
    let gc = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--gc",
            "--allowed-orgs",
            "https://dev.azure.com/contoso",
        ];
        args.extend_from_slice(extra);
        run(&args, &[("AZURE_CLIENT_ID", "x")])
    };
    let err = gc(&[]);
    assert!(
        err.contains("--gc-namespace is required with --gc"),
        "{err}"
    );
    let err = gc(&["--gc-namespace", "ado-agents"]);
    assert!(err.contains("--gc-agent-prefix"), "{err}");
    let err = gc(&["--gc-namespace", "ado-agents", "--gc-agent-prefix", "a-,"]);
    assert!(
        err.contains("empty prefix would match every agent"),
        "{err}"
    );
    let ok_prefix = [
        "--gc-namespace",
        "ado-agents",
        "--gc-agent-prefix",
        "ado-agent-",
    ];
    let err = gc(&ok_prefix);
    assert!(err.contains("--gc-pools"), "{err}");
    let err = gc(&[
        &ok_prefix[..],
        &["--gc-pools", "https://dev.azure.com/contoso"],
    ]
    .concat());
    assert!(err.contains("is not ORG_URL=POOL_NAME"), "{err}");
    let err = gc(&[
        &ok_prefix[..],
        &["--gc-pools", "https://dev.azure.com/fabrikam=linux"],
    ]
    .concat());
    assert!(
        err.contains(
            "--gc-pools: organisation https://dev.azure.com/fabrikam is not in --allowed-orgs"
        ),
        "{err}"
    );
    let err = gc(&[
        &ok_prefix[..],
        &[
            "--gc-pools",
            "https://dev.azure.com/contoso=linux",
            "--gc-interval",
            "1s",
        ],
    ]
    .concat());
    assert!(err.contains("--gc-interval must be at least 10s"), "{err}");
}

// --- Restarts as KEDA's gRPC client sees them (grpcio: gRPC's C core, standard backoff) ---

/// A `serve` process on `grpc_addr`, with its log lines.
struct ScalerProcess {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// When it logged that it listens.
    serving_at: std::time::Instant,
}

impl ScalerProcess {
    fn start(sim: &SimCloud, grpc_addr: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ado-scaler"))
            .arg("serve")
            .envs(sim.pod_env())
            .env("ADO_SCALER_GRPC_ADDR", grpc_addr)
            .env("ADO_SCALER_HTTP_ADDR", "127.0.0.1:0")
            .env("ADO_SCALER_ALLOWED_ORGS", &sim.org_url)
            .env("ADO_SCALER_POLL_INTERVAL", "500ms")
            .env("ADO_SCALER_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(20))
                .expect("startup log line");
            if line.contains("\"ado-scaler serving\"") {
                break;
            }
        }
        Self {
            child,
            lines,
            serving_at: std::time::Instant::now(),
        }
    }

    /// SIGTERM, as the kubelet sends it; waits for a clean exit and returns the log.
    async fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || {
            let exit = self.child.wait();
            (exit, self.lines)
        })
        .await
        .unwrap();
        assert!(exit.0.unwrap().success(), "graceful exit on SIGTERM");
        exit.1.try_iter().collect::<Vec<_>>().join("\n")
    }
}

/// A free loopback address for a scaler that is to be restarted on it.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A Python script of tests/grpc_clients, in the virtualenv scripts/install-test-deps.sh
/// fills; its JSON lines, each stamped with when it arrived.
struct PythonClient {
    child: std::process::Child,
    lines: mpsc::Receiver<(std::time::Instant, serde_json::Value)>,
}

impl PythonClient {
    fn start(script: &str, args: &[&str]) -> Self {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".test-deps/venv/bin/python");
        assert!(
            python.exists(),
            "{} missing: run scripts/install-test-deps.sh (scripts/test does)",
            python.display()
        );
        let mut child = Command::new(python)
            .arg(root.join("tests/grpc_clients").join(script))
            .args(args)
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: serde_json::Value = serde_json::from_str(&line).expect("JSON lines");
                let _ = tx.send((std::time::Instant::now(), value));
            }
        });
        let client = Self { child, lines };
        let (_, first) = client.next(Duration::from_secs(60));
        assert_eq!(first["ready"], true, "{first}");
        client
    }

    fn next(&self, within: Duration) -> (std::time::Instant, serde_json::Value) {
        self.lines
            .recv_timeout(within)
            .expect("a line from the client")
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// KEDA's poll, every second, through one long-lived channel.
const CLIENT_POLL: Duration = Duration::from_secs(1);

fn poll_client(sim: &SimCloud, target: &str) -> PythonClient {
    let metadata = serde_json::json!({
        "organizationURL": sim.org_url,
        "poolName": "linux",
    })
    .to_string();
    PythonClient::start(
        "poll.py",
        &[
            "--proto",
            "proto/externalscaler.proto",
            "--target",
            target,
            "--metadata",
            &metadata,
            "--poll",
            &CLIENT_POLL.as_secs_f64().to_string(),
        ],
    )
}

/// Calls until `ok` of them succeeded: `(arrived, succeeded)` each.
fn calls(client: &PythonClient, ok: usize) -> Vec<(std::time::Instant, bool)> {
    let mut seen = Vec::new();
    while seen.iter().filter(|(_, ok)| *ok).count() < ok {
        let (at, call) = client.next(Duration::from_secs(30));
        if call["ok"] != true {
            eprintln!("failed call: {call}");
        }
        seen.push((at, call["ok"] == true));
    }
    seen
}

/// A graceful restart on the same address (SIGTERM, a new process on the port): KEDA's client
/// loses at most one poll. On the GOAWAY its round-robin policy redials at once; when that dial
/// falls in the few milliseconds before the new process listens, it backs off 1 s (±20 %),
/// shorter than a poll, so at most one call fails and the next one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_costs_keda_at_most_one_poll() {
    let sim = SimCloud::start().await.unwrap();
    sim.ado.add_pool("linux");
    let addr = free_addr();
    let old = ScalerProcess::start(&sim, &addr);
    let client = poll_client(&sim, &addr);
    let before = calls(&client, 3);
    assert!(
        before.iter().all(|(_, ok)| *ok),
        "served before the restart"
    );

    let restart = std::time::Instant::now();
    let log = old.stop().await;
    assert!(log.contains("ado-scaler stopped"), "{log}");
    let new = ScalerProcess::start(&sim, &addr);
    let after = calls(&client, 4);
    client.stop();
    let failed = after.iter().filter(|(_, ok)| !*ok).count();
    let in_a_row = after
        .split(|(_, ok)| *ok)
        .map(<[_]>::len)
        .max()
        .unwrap_or(0);
    let first_ok = after.iter().find(|(_, ok)| *ok).unwrap().0;
    let reconnect = first_ok.saturating_duration_since(new.serving_at);
    eprintln!(
        "graceful restart: old scaler stopped and new one listening after {:?}; first call served {:?} after that; {failed} call(s) failed",
        new.serving_at - restart,
        reconnect
    );
    assert!(
        in_a_row <= 1,
        "{in_a_row} calls in a row failed across a graceful restart"
    );
    assert!(
        failed <= 1,
        "{failed} calls failed across a graceful restart"
    );
    assert!(
        reconnect <= 2 * CLIENT_POLL + Duration::from_millis(500),
        "the first call was served {reconnect:?} after the new scaler listened"
    );
    new.stop().await;
}

/// A rollout: two replicas behind the round-robin channel KEDA uses, one stops. No call
/// fails: the client leaves the stopping one on its GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_with_the_other_replica_serving_fails_no_call() {
    let sim = SimCloud::start().await.unwrap();
    sim.ado.add_pool("linux");
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = ScalerProcess::start(&sim, &addr_a);
    let b = ScalerProcess::start(&sim, &addr_b);
    let client = poll_client(&sim, &format!("ipv4:{addr_a},{addr_b}"));
    assert!(calls(&client, 3).iter().all(|(_, ok)| *ok));
    a.stop().await;
    let after = calls(&client, 4);
    client.stop();
    assert!(
        after.iter().all(|(_, ok)| *ok),
        "a call failed while the other replica served: {after:?}"
    );
    b.stop().await;
}

/// SIGTERM makes the scaler send HTTP/2 GOAWAY on its open connections before it closes them:
/// that is what lets a client move on at once instead of after a failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_goaway_before_the_connection_closes() {
    let sim = SimCloud::start().await.unwrap();
    sim.ado.add_pool("linux");
    let addr = free_addr();
    let scaler = ScalerProcess::start(&sim, &addr);
    let watcher = PythonClient::start("goaway.py", &["--addr", &addr]);
    let stopped = tokio::spawn(scaler.stop());
    let (goaway_at, goaway) = watcher.next(Duration::from_secs(10));
    assert_eq!(goaway["goaway"], 0, "GOAWAY with NO_ERROR first: {goaway}");
    let (closed_at, closed) = watcher.next(Duration::from_secs(10));
    assert_eq!(closed["closed"], true, "{closed}");
    assert!(closed_at >= goaway_at);
    stopped.await.unwrap();
    watcher.stop();
}

/// A crash is not a graceful restart: without a GOAWAY the client finds out by failing, dials
/// a closed port and backs off (1 s, then ×1.6 with jitter), so the calls after the new scaler
/// listens can still fail for a few seconds. Measured here (printed), bounded loosely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_client_comes_back_within_its_backoff() {
    let sim = SimCloud::start().await.unwrap();
    sim.ado.add_pool("linux");
    let addr = free_addr();
    let mut old = ScalerProcess::start(&sim, &addr);
    let client = poll_client(&sim, &addr);
    assert!(calls(&client, 2).iter().all(|(_, ok)| *ok));
    old.child.kill().unwrap();
    old.child.wait().unwrap();
    // Down for 3 s, as a crash-looping pod's restart would be at best.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let new = ScalerProcess::start(&sim, &addr);
    let after = calls(&client, 1);
    client.stop();
    let first_ok = after.last().unwrap().0;
    let reconnect = first_ok.saturating_duration_since(new.serving_at);
    eprintln!(
        "crash: first call served {reconnect:?} after the new scaler listened; {} call(s) failed",
        after.iter().filter(|(_, ok)| !*ok).count()
    );
    assert!(reconnect < Duration::from_secs(20), "{reconnect:?}");
    new.stop().await;
}

/// Text logs carry no colour codes when nobody's terminal reads them (a pipe, a log
/// collector, the demo's output).
#[test]
fn piped_text_logs_have_no_escape_codes() {
    let dir = std::env::temp_dir().join(format!("ado-scaler-plain-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pat = dir.join("pat");
    std::fs::write(&pat, "not-a-real-pat\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ado-scaler"))
        .args(["serve", "--auth", "pat", "--pat-file"])
        .arg(&pat)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("ADO_SCALER_LOG_FORMAT", "text")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let serving = line.contains("ado-scaler serving");
        seen.push(line);
        if serving {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        seen.iter()
            .any(|l| l.contains(" WARN ") && l.contains("PAT file")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("ado-scaler serving")),
        "{seen:#?}"
    );
    assert!(!seen.iter().any(|l| l.contains('\x1b')), "{seen:#?}");
}
