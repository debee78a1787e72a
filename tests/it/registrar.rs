//! Just-in-time registration: the registrar in `serve` registers an agent pod's own public
//! key, proven by the simulated API server (TokenReview, pod → Job → ScaledJob by UID); the
//! pod's `agent prepare` and `agent --config-dir` run the real binary against it, and the
//! simulated listener opens its session with the files alone. Every refusal a hostile pod or
//! a neighbouring team could provoke is asserted here, with what it must not reveal.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use ado_scaler::{
    ado::models::AgentPublicKey,
    agent::credentials::{self, RsaParams},
    poller::PollerSettings,
    registrar::{RegistrarSettings, certs::SelfManagedTls, wire::TOKEN_AUDIENCE},
    scaler::tls::TlsSettings,
    serve::{RegistrarServe, RegistrarTls},
};
use ado_sim::{
    SIM_AGENT_NAMESPACE, SimCloud,
    agent::{Behaviour, Job, install},
    kube::API_SERVER_AUDIENCE,
};
use serde_json::{Value, json};

use crate::common::{Harness, POOL};

const SERVICE_ACCOUNT: &str = "ado-agent";
const TEN_MINUTES: Duration = Duration::from_secs(600);
/// The registrar's look at registered pods, shorter than `serve`'s for quick tests.
const CLEANUP: Duration = Duration::from_millis(500);

struct Jit {
    h: Harness,
    url: String,
    http: reqwest::Client,
}

impl Jit {
    async fn start() -> Self {
        Self::start_with(files).await
    }

    async fn start_with(tls: impl FnOnce(&SimCloud) -> RegistrarTls) -> Self {
        let h = Harness::start_tuned(PollerSettings::default(), |sim, settings| {
            settings.registrar = Some(registrar(sim, tls(sim)));
        })
        .await;
        let port = h.registrar_addr.expect("registrar listener").port();
        let http = ado_scaler::auth::pinned_http_client(h.sim.ca_pem.as_bytes(), "test").unwrap();
        Self {
            url: format!("https://127.0.0.1:{port}/v1/registrations"),
            http,
            h,
        }
    }

    fn sim(&self) -> &SimCloud {
        &self.h.sim
    }

    /// A ScaledJob with our trigger for the test pool, its Job, and the Job's pod.
    fn agent_pod(&self, namespace: &str, pod: &str, service_account: &str) -> String {
        let (job, uid) = self.sim().kube.create_scaled_job_with_job(
            namespace,
            &format!("{pod}-scaledjob"),
            self.triggers(),
            &format!("{pod}-job"),
        );
        self.sim()
            .kube
            .create_agent_pod(namespace, pod, service_account, Some((&job, &uid)))
    }

    fn triggers(&self) -> Value {
        json!([{
            "type": "external",
            "metadata": {
                "scalerAddress": "ado-scaler.ado-scaler:9090",
                "organizationURL": self.sim().org_url,
                "poolName": POOL,
            },
        }])
    }

    fn token(&self, namespace: &str, pod: &str) -> String {
        self.sim()
            .kube
            .pod_token(namespace, pod, TOKEN_AUDIENCE, TEN_MINUTES)
    }

    async fn register(&self, token: &str, key: &AgentPublicKey) -> (u16, Value) {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .json(&json!({
                "publicKey": key,
                "version": ado_sim::SIM_AGENT_VERSION,
                "osDescription": "Linux 6.8.0 #1 SMP",
            }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(!text.contains(token), "the answer echoes the token: {text}");
        (status, serde_json::from_str(&text).unwrap())
    }

    async fn refused(&self, token: &str, status: u16, reason: &str) -> String {
        let key = RsaParams::generate().unwrap().public_key();
        let (got, body) = self.register(token, &key).await;
        assert_eq!(
            (got, body["reason"].as_str()),
            (status, Some(reason)),
            "{body}"
        );
        body["message"].as_str().unwrap().to_owned()
    }

    fn agents(&self) -> Vec<String> {
        self.sim()
            .ado
            .agents(self.h.pool_id)
            .into_iter()
            .map(|a| a.name)
            .filter(|n| n != crate::common::TEMPLATE)
            .collect()
    }

    async fn registrations(&self, result: &str) -> u64 {
        self.counter("ado_scaler_registrations_total", result).await
    }

    async fn deregistrations(&self, result: &str) -> u64 {
        self.counter("ado_scaler_registrar_deregistrations_total", result)
            .await
    }

    async fn counter(&self, family: &str, result: &str) -> u64 {
        let (_, text) = self.h.http_get("/metrics").await;
        let series = format!("{family}{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .parse()
            .unwrap()
    }
}

fn registrar(sim: &SimCloud, tls: RegistrarTls) -> RegistrarServe {
    RegistrarServe {
        settings: RegistrarSettings {
            namespaces: vec![SIM_AGENT_NAMESPACE.into()],
            service_accounts: vec![SERVICE_ACCOUNT.into()],
            cleanup_interval: CLEANUP,
        },
        tls,
        kubeconfig: Some(sim.kubeconfig.clone()),
    }
}

/// The simulators' certificate for 127.0.0.1, as `--tls-cert`/`--tls-key`.
fn files(sim: &SimCloud) -> RegistrarTls {
    RegistrarTls::Files(TlsSettings {
        cert: sim.server_cert_file.clone(),
        key: sim.server_key_file.clone(),
        client_ca: None,
        reload_interval: Duration::from_secs(10),
    })
}

fn self_managed(sim: &SimCloud) -> SelfManagedTls {
    SelfManagedTls {
        namespace: "ado-scaler".into(),
        secret: "ado-scaler-registrar-tls".into(),
        config_map: "ado-scaler-registrar-ca".into(),
        ca_namespaces: vec![SIM_AGENT_NAMESPACE.into()],
        dns_names: SelfManagedTls::service_names("ado-scaler", "ado-scaler"),
        dir: sim.dir().join("registrar-tls"),
        reload_interval: Duration::from_secs(10),
    }
}

/// Without cert-manager: the scaler makes its CA and certificate for the Service's names,
/// keeps them in a Secret that a second replica reuses, and publishes the CA where the agent
/// pods mount it; a client trusting that CA alone reaches it under the Service's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_certificates_the_registrar_makes_its_own_and_publishes_the_ca() {
    let jit = Jit::start_with(|sim| RegistrarTls::SelfManaged(self_managed(sim))).await;
    let kube = &jit.sim().kube;
    // The server made them as it started.
    wait_until(|| async {
        kube.custom(
            "",
            "configmaps",
            SIM_AGENT_NAMESPACE,
            "ado-scaler-registrar-ca",
        )
        .is_some()
    })
    .await;
    let secret = kube
        .custom("", "secrets", "ado-scaler", "ado-scaler-registrar-tls")
        .expect("the Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let map = kube
        .custom(
            "",
            "configmaps",
            SIM_AGENT_NAMESPACE,
            "ado-scaler-registrar-ca",
        )
        .expect("the CA ConfigMap in the agents' namespace");
    let ca = map["data"]["ca.crt"].as_str().unwrap().to_owned();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // A second replica starting now reuses the material: same CA, the Secret untouched.
    let client = ado_scaler::k8s::client(Some(&jit.sim().kubeconfig))
        .await
        .unwrap();
    let mut second = self_managed(jit.sim());
    second.dir = jit.sim().dir().join("replica-2");
    ado_scaler::registrar::certs::ensure(&client, &second)
        .await
        .unwrap();
    let again = kube
        .custom("", "secrets", "ado-scaler", "ado-scaler-registrar-tls")
        .unwrap();
    assert_eq!(
        again["metadata"]["resourceVersion"],
        secret["metadata"]["resourceVersion"]
    );
    assert_eq!(
        std::fs::read(second.dir.join("tls.crt")).unwrap(),
        std::fs::read(jit.sim().dir().join("registrar-tls/tls.crt")).unwrap()
    );

    let port = jit.h.registrar_addr.unwrap().port();
    let name = "ado-scaler.ado-scaler.svc";
    let through = |roots: &str| {
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(roots.as_bytes()).unwrap())
            .resolve(name, ([127, 0, 0, 1], port).into())
            .build()
            .unwrap()
    };
    let url = format!("https://{name}:{port}/v1/registrations");
    let pod = "agents-selfca";
    jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
    let token = jit.token(SIM_AGENT_NAMESPACE, pod);
    let body = json!({
        "publicKey": RsaParams::generate().unwrap().public_key(),
        "version": ado_sim::SIM_AGENT_VERSION,
        "osDescription": "Linux",
    });
    // The simulators' CA does not vouch for it: the handshake fails before the token goes.
    let refused = through(&jit.sim().ca_pem)
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await;
    assert!(refused.is_err());
    let answer = through(&ca)
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(jit.agents(), [pod]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaledjob_pod_registers_its_own_key_once() {
    let jit = Jit::start().await;
    let pod = "agents-x7k2p-abcde";
    jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
    let token = jit.token(SIM_AGENT_NAMESPACE, pod);
    let key = RsaParams::generate().unwrap().public_key();

    let (status, answer) = jit.register(&token, &key).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["agentName"], pod, "the agent is named after the pod");
    assert_eq!(answer["poolName"], POOL);
    assert_eq!(
        answer["serverUrl"].as_str(),
        Some(jit.sim().org_url.as_str())
    );
    assert_eq!(
        answer["authorizationUrl"].as_str(),
        Some(jit.sim().authorization_url().as_str())
    );
    assert!(answer["clientId"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(jit.agents(), [pod]);
    assert_eq!(
        jit.sim().ado.registered_key(jit.h.pool_id, pod),
        Some((key.modulus.clone(), key.exponent.clone())),
        "ADO holds exactly the pod's public key"
    );

    // A retried init container (same key) gets the same answer and no second agent.
    let (status, again) = jit.register(&token, &key).await;
    assert_eq!((status, &again), (200, &answer));
    assert_eq!(jit.agents(), [pod]);

    // Another key for the same pod: someone else has its token.
    let other = RsaParams::generate().unwrap().public_key();
    let (status, body) = jit.register(&token, &other).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert_eq!(
        jit.sim().ado.registered_key(jit.h.pool_id, pod),
        Some((key.modulus, key.exponent))
    );
    assert_eq!(jit.registrations("registered").await, 1);
    assert_eq!(jit.registrations("repeated").await, 1);
    assert_eq!(jit.registrations("conflict").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_refused_401() {
    let jit = Jit::start().await;
    let pod = "agents-aud";
    jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
    // The pod's default token: for the API server, not for us.
    let token =
        jit.sim()
            .kube
            .pod_token(SIM_AGENT_NAMESPACE, pod, API_SERVER_AUDIENCE, TEN_MINUTES);
    jit.refused(&token, 401, "bad_token").await;
    jit.refused("not-a-token", 401, "bad_token").await;
    let (status, body) = {
        let r = jit
            .http
            .post(&jit.url)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!((status, body["reason"].as_str()), (401, Some("bad_token")));
    assert!(jit.agents().is_empty());
    assert_eq!(jit.registrations("bad_token").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_another_namespace_or_service_account_is_refused_403() {
    let jit = Jit::start().await;
    jit.agent_pod("team-b", "agents-elsewhere", SERVICE_ACCOUNT);
    let token = jit.token("team-b", "agents-elsewhere");
    let message = jit.refused(&token, 403, "namespace").await;
    assert!(message.contains("--registrar-namespaces"), "{message}");

    jit.agent_pod(SIM_AGENT_NAMESPACE, "agents-default-sa", "default");
    let token = jit.token(SIM_AGENT_NAMESPACE, "agents-default-sa");
    let message = jit.refused(&token, 403, "service_account").await;
    assert!(
        message.contains("--registrar-service-accounts"),
        "{message}"
    );
    assert!(jit.agents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_not_controlled_by_a_scaledjobs_job_is_refused_403() {
    let jit = Jit::start().await;
    let kube = &jit.sim().kube;
    // A bare pod that copies KEDA's labels: labels prove nothing.
    kube.create_agent_pod(SIM_AGENT_NAMESPACE, "agents-bare", SERVICE_ACCOUNT, None);
    let token = jit.token(SIM_AGENT_NAMESPACE, "agents-bare");
    jit.refused(&token, 403, "owner_chain").await;

    // A Job of the user's own, not a ScaledJob's.
    let job = kube.put_custom(
        "batch",
        "jobs",
        json!({
            "metadata": { "name": "hand-made", "namespace": SIM_AGENT_NAMESPACE,
                          "labels": { "scaledjob.keda.sh/name": "agents" } },
            "spec": {},
        }),
    );
    let uid = job["metadata"]["uid"].as_str().unwrap();
    kube.create_agent_pod(
        SIM_AGENT_NAMESPACE,
        "agents-handmade",
        SERVICE_ACCOUNT,
        Some(("hand-made", uid)),
    );
    let token = jit.token(SIM_AGENT_NAMESPACE, "agents-handmade");
    jit.refused(&token, 403, "owner_chain").await;

    // A pod naming a ScaledJob's Job by name but with another UID (a namesake).
    let (job, _) = kube.create_scaled_job_with_job(
        SIM_AGENT_NAMESPACE,
        "agents",
        jit.triggers(),
        "agents-job",
    );
    kube.create_agent_pod(
        SIM_AGENT_NAMESPACE,
        "agents-namesake",
        SERVICE_ACCOUNT,
        Some((&job, "uid-of-something-else")),
    );
    let token = jit.token(SIM_AGENT_NAMESPACE, "agents-namesake");
    jit.refused(&token, 403, "owner_chain").await;

    // A ScaledJob whose trigger names a pool outside the organisation allowlist.
    let (job, uid) = kube.create_scaled_job_with_job(
        SIM_AGENT_NAMESPACE,
        "elsewhere",
        json!([{ "type": "external", "metadata": {
            "organizationURL": "https://dev.azure.com/someone-else", "poolName": POOL } }]),
        "elsewhere-job",
    );
    kube.create_agent_pod(
        SIM_AGENT_NAMESPACE,
        "agents-other-org",
        SERVICE_ACCOUNT,
        Some((&job, &uid)),
    );
    let token = jit.token(SIM_AGENT_NAMESPACE, "agents-other-org");
    jit.refused(&token, 403, "trigger").await;
    assert!(jit.agents().is_empty());
    assert_eq!(jit.registrations("owner_chain").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pods_token_is_refused_401() {
    let jit = Jit::start().await;
    let pod = "agents-gone";
    jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
    let token = jit.token(SIM_AGENT_NAMESPACE, pod);
    jit.sim().kube.delete_pod(SIM_AGENT_NAMESPACE, pod);
    jit.refused(&token, 401, "bad_token").await;
    // A new pod of the same name (another UID) does not revive the old token.
    jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
    jit.refused(&token, 401, "bad_token").await;
    assert!(jit.agents().is_empty());
}

/// The whole pod: `agent prepare` as the init container (token and CA mounted there only),
/// then `agent --config-dir` as the agent container with neither; the simulated listener
/// opens its session with the files alone and runs its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_container_registers_and_the_agent_runs_with_no_credential() {
    let jit = Jit::start().await;
    let pod = "agents-jit01";
    jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
    let token = jit.token(SIM_AGENT_NAMESPACE, pod);
    let root = jit.sim().dir().join("jit-pod");
    let (agent_dir, config_dir, log) = (root.join("agent"), root.join("config"), root.join("log"));
    std::fs::create_dir_all(&config_dir).unwrap();
    let token_file = root.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let mut behaviour = Behaviour::new(&jit.sim().ca_file, &log);
    behaviour.job = Some(Job {
        after_ms: 100,
        run_ms: 200,
    });
    install(&agent_dir, ado_sim::agent::binary(), &behaviour).unwrap();

    let started = std::time::Instant::now();
    let prepare = run(prepare_command(
        &jit,
        &agent_dir,
        &config_dir,
        &token_file,
        &jit.sim().ca_file,
    ))
    .await;
    let prepared_in = started.elapsed();
    assert_eq!(prepare.0, Some(0), "{}", prepare.1);
    assert!(
        prepare.1.contains("agent registered; files written"),
        "{}",
        prepare.1
    );
    eprintln!("registrar latency (prepare start → files written): {prepared_in:?}");
    for name in credentials::FILES {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(config_dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    assert_eq!(jit.agents(), [pod]);

    // The agent container: no identity, no token file, no AZP_URL.
    let mut agent = Command::new(env!("CARGO_BIN_EXE_ado-scaler"));
    agent
        .args(["agent", "--config-dir"])
        .arg(&config_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZP_AGENT_DIR", &agent_dir)
        .env("AGENT_ALLOW_RUNASROOT", "1")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (code, stderr) = run(agent).await;
    assert_eq!(code, Some(0), "{stderr}\n{}", events(&log));
    let events = events(&log);
    assert!(events.contains("listener session opened"), "{events}");
    assert!(events.contains("worker finished"), "{events}");
    let agent_id = jit
        .sim()
        .ado
        .agents(jit.h.pool_id)
        .into_iter()
        .find(|a| a.name == pod)
        .unwrap()
        .id;
    assert_eq!(jit.sim().ado.agent_sessions(), [agent_id]);

    // What a pipeline step sees: the listener's environment holds nothing of an identity.
    let env: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(log.join("env-listener.json")).unwrap()).unwrap();
    for (name, value) in &env {
        assert!(!name.starts_with("AZURE_"), "{name}");
        assert!(!value.contains(&token), "{name} holds the pod token");
        assert!(!value.contains(token_file.to_str().unwrap()), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_sends_no_token_to_a_registrar_its_ca_does_not_vouch_for() {
    let jit = Jit::start().await;
    let pod = "agents-mitm";
    jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
    let root = jit.sim().dir().join("mitm-pod");
    let (agent_dir, config_dir) = (root.join("agent"), root.join("config"));
    std::fs::create_dir_all(&config_dir).unwrap();
    let token_file = root.join("token");
    std::fs::write(&token_file, jit.token(SIM_AGENT_NAMESPACE, pod)).unwrap();
    install(
        &agent_dir,
        ado_sim::agent::binary(),
        &Behaviour::new(&jit.sim().ca_file, &root.join("log")),
    )
    .unwrap();
    // Another CA: the system roots are not trusted either.
    let other_ca = ado_sim::tls::SimCa::generate().unwrap();
    let other_ca_file = root.join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca.ca_pem).unwrap();

    let mut prepare = prepare_command(&jit, &agent_dir, &config_dir, &token_file, &other_ca_file);
    prepare.env("AZP_REGISTRAR_TIMEOUT", "2s");
    let (code, stderr) = run(prepare).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("not trusted by --registrar-ca-file"),
        "{stderr}"
    );
    let total: u64 = futures::future::join_all(
        ["registered", "repeated", "bad_token", "bad_request"].map(|r| jit.registrations(r)),
    )
    .await
    .iter()
    .sum();
    assert_eq!(total, 0, "no request reached the registrar");
    assert!(jit.agents().is_empty());
    assert!(!config_dir.join(credentials::SETTINGS_FILE).exists());
}

fn prepare_command(
    jit: &Jit,
    agent_dir: &Path,
    config_dir: &Path,
    token: &Path,
    ca: &Path,
) -> Command {
    let base = jit.url.trim_end_matches("/v1/registrations");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ado-scaler"));
    cmd.args(["agent", "prepare"])
        .env_clear()
        .env("AZP_REGISTRAR", base)
        .env("AZP_REGISTRAR_TOKEN_FILE", token)
        .env("AZP_REGISTRAR_CA_FILE", ca)
        .env("AZP_CONFIG_DIR", config_dir)
        .env("AZP_AGENT_DIR", agent_dir)
        .env("AZP_REGISTRAR_TIMEOUT", "10s")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn run(mut cmd: Command) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn events(log: &Path) -> String {
    std::fs::read_to_string(log.join("events")).unwrap_or_default()
}

/// The registrar deletes what it registered once the agent container has ended or the pod is
/// gone, and retries while ADO refuses because the agent still runs a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_deleted_once_their_agent_container_ends() {
    let jit = Jit::start().await;
    let (busy, gone) = ("agents-busy", "agents-gone");
    for pod in [busy, gone] {
        jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
        let key = RsaParams::generate().unwrap().public_key();
        let (status, body) = jit
            .register(&jit.token(SIM_AGENT_NAMESPACE, pod), &key)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let ado = &jit.sim().ado;
    let request = ado.enqueue(jit.h.pool_id, &[]);
    assert_eq!(
        ado.assign_next(jit.h.pool_id, busy, &BTreeMap::new()),
        Some(request)
    );

    // Still running: nothing is deleted.
    tokio::time::sleep(CLEANUP * 3).await;
    assert_eq!(jit.agents(), [busy, gone]);

    jit.sim().kube.delete_pod(SIM_AGENT_NAMESPACE, gone);
    jit.sim()
        .kube
        .terminate_container(SIM_AGENT_NAMESPACE, busy, "agent", 137);
    wait_until(|| async { jit.agents() == [busy] }).await;
    // The busy agent's delete is refused until its job has finished.
    wait_until(|| async { jit.deregistrations("failed").await >= 1 }).await;
    assert_eq!(jit.agents(), [busy]);
    ado.finish(request, "succeeded");
    wait_until(|| async { jit.agents().is_empty() }).await;
    assert_eq!(jit.deregistrations("deleted").await, 2);
}

async fn wait_until<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "not within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `check --as agent` in this mode checks the registrar (its CA, the token's audience and
/// account, a TLS answer) instead of Entra, and sends no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_as_agent_checks_the_registrar_instead_of_entra() {
    use ado_scaler::{
        check::{self, REGISTRAR_CA, REGISTRAR_REACHABLE, REGISTRAR_TOKEN, Status, TOKEN_EXCHANGE},
        cli::{Cli, Command},
    };
    use clap::Parser;
    let jit = Jit::start().await;
    let pod = "agents-check";
    jit.agent_pod(SIM_AGENT_NAMESPACE, pod, SERVICE_ACCOUNT);
    let root = jit.sim().dir().join("check-pod");
    std::fs::create_dir_all(&root).unwrap();
    let good = root.join("token");
    std::fs::write(&good, jit.token(SIM_AGENT_NAMESPACE, pod)).unwrap();
    let for_the_api_server = root.join("api-token");
    std::fs::write(
        &for_the_api_server,
        jit.sim()
            .kube
            .pod_token(SIM_AGENT_NAMESPACE, pod, API_SERVER_AUDIENCE, TEN_MINUTES),
    )
    .unwrap();
    let other_ca = root.join("other-ca.pem");
    std::fs::write(&other_ca, ado_sim::tls::SimCa::generate().unwrap().ca_pem).unwrap();
    let base = jit.url.trim_end_matches("/v1/registrations").to_owned();
    let report = |token: &Path, ca: &Path| {
        let argv = [
            "ado-scaler",
            "check",
            "--org",
            &jit.sim().org_url,
            "--pool",
            POOL,
            "--as",
            "agent",
            "--registrar",
            &base,
            "--registrar-token-file",
            token.to_str().unwrap(),
            "--registrar-ca-file",
            ca.to_str().unwrap(),
        ];
        let Command::Check(args) = Cli::parse_from(argv).command else {
            unreachable!()
        };
        async move { check::check(&args.settings(), &|_| None).await }
    };
    let before = jit.registrations("bad_token").await;

    let ok = report(&good, &jit.sim().ca_file).await;
    for title in [REGISTRAR_TOKEN, REGISTRAR_CA, REGISTRAR_REACHABLE] {
        assert_eq!(
            ok.item(title).map(|i| i.status),
            Some(Status::Pass),
            "{title}:\n{ok}"
        );
    }
    assert!(
        ok.item(TOKEN_EXCHANGE).is_none(),
        "no Entra in this mode:\n{ok}"
    );

    let wrong = report(&for_the_api_server, &other_ca).await;
    let token = wrong.item(REGISTRAR_TOKEN).unwrap();
    assert_eq!(token.status, Status::Fail, "{wrong}");
    assert!(
        token.fix.as_deref().unwrap().contains("ado-scaler"),
        "{wrong}"
    );
    let reach = wrong.item(REGISTRAR_REACHABLE).unwrap();
    assert_eq!(reach.status, Status::Fail, "{wrong}");
    assert!(
        reach
            .fix
            .as_deref()
            .unwrap()
            .contains("not signed by this CA"),
        "{wrong}"
    );
    assert_eq!(
        jit.registrations("bad_token").await,
        before,
        "check sent no token"
    );
    assert!(jit.agents().is_empty());
}
