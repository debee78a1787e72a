//! gRPC over TLS and mTLS as KEDA uses it (`enableTLS`, `caCert`, `tlsClientCert`,
//! `tlsClientKey`), and certificates rotated in place without a restart.

use ado_sim::tools;

use std::time::Duration;

use crate::common::{Harness, eventually};
use ado_scaler::refresh::{RefreshSettings, plan::STAMP_ANNOTATION};
use ado_scaler::{
    poller::PollerSettings,
    scaler::{
        proto::{GetMetricsRequest, external_scaler_client::ExternalScalerClient},
        tls::TlsSettings,
    },
};
use ado_sim::{SIM_AGENT_NAMESPACE, SimCloud};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA that signs servers and clients, in PEM.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        Leaf {
            cert: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    /// The scaler's certificate, for the name KEDA dials (`scalerAddress`).
    fn server(&self) -> Leaf {
        self.leaf(
            &["ado-scaler.ado-scaler.svc", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Leaf {
        self.leaf(&["keda-operator"], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The files `--tls-cert`, `--tls-key`, `--tls-client-ca` point at, in a folder of the test.
struct Files {
    dir: std::path::PathBuf,
}

impl Files {
    fn new(server: &Leaf, client_ca: Option<&Ca>) -> Self {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ado-scaler-tls-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let files = Self { dir };
        files.write_server(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.path("client-ca.crt"), &ca.pem).unwrap();
        }
        files
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// As kubelet updates a Secret volume: the new files appear at once (a rename).
    fn write_server(&self, server: &Leaf) {
        for (name, content) in [("tls.crt", &server.cert), ("tls.key", &server.key)] {
            let staged = self.path(&format!(".{name}.new"));
            std::fs::write(&staged, content).unwrap();
            std::fs::rename(staged, self.path(name)).unwrap();
        }
    }

    fn settings(&self, mtls: bool) -> TlsSettings {
        TlsSettings {
            cert: self.path("tls.crt"),
            key: self.path("tls.key"),
            client_ca: mtls.then(|| self.path("client-ca.crt")),
            reload_interval: Duration::from_millis(100),
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_harness(files: &Files, mtls: bool) -> Harness {
    let settings = files.settings(mtls);
    Harness::start_tuned(
        PollerSettings {
            interval: Duration::from_millis(200),
            ..PollerSettings::default()
        },
        move |_, serve| serve.grpc_tls = Some(settings),
    )
    .await
}

/// A client as KEDA builds it: trusting `ca` (`caCert`), with `identity` for mTLS, dialing
/// the name in `scalerAddress`.
async fn keda_client(
    h: &Harness,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<ExternalScalerClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("ado-scaler.ado-scaler.svc");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    let channel = Channel::from_shared(format!("https://{}", h.grpc_addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ExternalScalerClient::new(channel))
}

async fn metric(
    h: &Harness,
    client: &mut ExternalScalerClient<Channel>,
) -> Result<i64, tonic::Status> {
    let sj = h.scaled_job("agents", &[("enableTLS", "true")]);
    let response = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(sj),
            metric_name: "ado-pool-linux".into(),
        })
        .await?;
    Ok(response.into_inner().metric_values[0].metric_value)
}

fn counter(metrics: &str, name: &str, result: &str) -> u64 {
    let prefix = format!("ado_scaler_tls_{name}_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} missing:\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn tls_serves_keda_and_refuses_plaintext() {
    let ca = Ca::new("scaler CA");
    let files = Files::new(&ca.server(), None);
    let h = tls_harness(&files, false).await;
    h.sim.ado.enqueue(h.pool_id, &[]);
    let mut client = keda_client(&h, &ca, None).await.unwrap();
    assert_eq!(metric(&h, &mut client).await.unwrap(), 1);
    // The plaintext channel KEDA uses without enableTLS gets nothing.
    assert!(h.metric(&h.scaled_job("agents", &[])).await.is_err());
    // A client that trusts another CA does not accept the scaler.
    assert!(keda_client(&h, &Ca::new("other CA"), None).await.is_err());
    // Each refusal is counted under its own cause (the client's alert arrives just after
    // its connect fails, so the count is awaited).
    let counted = |result: &'static str| {
        let h = &h;
        async move { counter(&h.http_get("/metrics").await.1, "handshakes", result) >= 1 }
    };
    assert!(eventually(Duration::from_secs(5), || counted("not_tls")).await);
    assert!(eventually(Duration::from_secs(5), || counted("rejected_by_client")).await);
    let (_, metrics) = h.http_get("/metrics").await;
    assert_eq!(counter(&metrics, "handshakes", "no_client_certificate"), 0);
    assert_eq!(counter(&metrics, "handshakes", "untrusted"), 0);
    // Logged with what to do (once a minute: the unit tests of `RefusalLog`).
    let logs = h.logs();
    assert!(logs.contains("KEDA's caCert is missing"), "{logs}");
}

#[tokio::test]
async fn mtls_takes_clients_of_its_ca_only() {
    let ca = Ca::new("scaler CA");
    let files = Files::new(&ca.server(), Some(&ca));
    let h = tls_harness(&files, true).await;
    h.sim.ado.enqueue(h.pool_id, &[]);
    let mut client = keda_client(&h, &ca, Some(&ca.client())).await.unwrap();
    assert_eq!(metric(&h, &mut client).await.unwrap(), 1);

    // No client certificate: the handshake (or the first call) fails.
    let refused = match keda_client(&h, &ca, None).await {
        Err(_) => true,
        Ok(mut client) => metric(&h, &mut client).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // A certificate from another CA: refused too.
    let stranger = Ca::new("stranger CA").client();
    let refused = match keda_client(&h, &ca, Some(&stranger)).await {
        Err(_) => true,
        Ok(mut client) => metric(&h, &mut client).await.is_err(),
    };
    assert!(refused, "a client of another CA was served");
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(
        counter(&metrics, "handshakes", "no_client_certificate") >= 1,
        "{metrics}"
    );
    assert!(
        counter(&metrics, "handshakes", "untrusted") >= 1,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "handshakes", "error"), 0, "{metrics}");
    assert!(counter(&metrics, "handshakes", "success") >= 1, "{metrics}");
    let logs = h.logs();
    assert!(logs.contains("the client sent no certificate"), "{logs}");
    assert!(logs.contains("is not signed by --tls-client-ca"), "{logs}");

    // `check` in the scaler's pod reports them, beside the calls that were served.
    let mut report = ado_scaler::check::Report::default();
    let url = format!("http://{}/metrics", h.http_addr);
    ado_scaler::check::check_clients(&url, &mut report).await;
    let clients = report.item(ado_scaler::check::GRPC_CLIENTS).unwrap();
    assert_eq!(clients.status, ado_scaler::check::Status::Info, "{report}");
    assert!(clients.detail.contains("calls served over TLS"), "{report}");
    assert!(
        clients.detail.contains("no_client_certificate: "),
        "{report}"
    );
    assert!(clients.detail.contains("untrusted: "), "{report}");
    // No scaler there: said, not failed.
    let mut report = ado_scaler::check::Report::default();
    ado_scaler::check::check_clients("http://127.0.0.1:9/metrics", &mut report).await;
    assert!(report.ok(), "{report}");
    assert!(
        report.items[0].detail.starts_with(
            "not checked: the scaler's metrics at http://127.0.0.1:9/metrics could not be read"
        ),
        "{report}"
    );
}

/// cert-manager renews the certificate in place: new connections get the new one within the
/// reload interval, the open stream goes on, and a half-written change keeps the old one.
#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let old_ca = Ca::new("old CA");
    let files = Files::new(&old_ca.server(), None);
    let h = tls_harness(&files, false).await;
    let mut old_client = keda_client(&h, &old_ca, None).await.unwrap();
    let sj = h.scaled_job("agents", &[("enableTLS", "true"), ("teardownWindow", "0s")]);
    let mut stream = old_client.stream_is_active(sj).await.unwrap().into_inner();
    assert!(!stream.next().await.unwrap().unwrap().result);

    let new_ca = Ca::new("new CA");
    assert!(keda_client(&h, &new_ca, None).await.is_err(), "not yet");
    files.write_server(&new_ca.server());
    assert!(
        eventually(Duration::from_secs(5), || async {
            keda_client(&h, &new_ca, None).await.is_ok()
        })
        .await,
        "the new certificate was not served"
    );
    // The stream opened before the rotation is still pushing.
    h.sim.ado.enqueue(h.pool_id, &[]);
    let pushed = tokio::time::timeout(Duration::from_secs(3), stream.next()).await;
    assert!(
        pushed
            .expect("the open stream still pushes")
            .unwrap()
            .unwrap()
            .result
    );

    // A key that does not match its certificate (a rotation caught half way) is refused and
    // the current certificate stays.
    std::fs::write(
        files.path("tls.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            counter(&h.http_get("/metrics").await.1, "reloads", "error") >= 1
        })
        .await
    );
    let mut client = keda_client(&h, &new_ca, None).await.unwrap();
    assert_eq!(metric(&h, &mut client).await.unwrap(), 1);
    let (_, metrics) = h.http_get("/metrics").await;
    assert_eq!(counter(&metrics, "reloads", "success"), 1, "{metrics}");
}

/// Bad files fail `serve` at start, naming the flag.
#[test]
fn bad_tls_files_fail_at_start_naming_the_flag() {
    let ca = Ca::new("scaler CA");
    let files = Files::new(&ca.server(), Some(&ca));
    let metrics = std::sync::Arc::new(ado_scaler::scaler::tls::TlsMetrics::default());
    let load = |settings: TlsSettings| {
        ado_scaler::scaler::tls::ReloadingConfig::load(settings, metrics.clone())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(load(files.settings(true)), "");
    let mut missing = files.settings(false);
    missing.cert = files.path("nope.crt");
    assert!(load(missing).starts_with("configuration: --tls-cert "));
    std::fs::write(files.path("garbage.pem"), "not a key").unwrap();
    let mut garbage_key = files.settings(false);
    garbage_key.key = files.path("garbage.pem");
    assert!(load(garbage_key).contains("--tls-key"));
    let mut garbage_ca = files.settings(true);
    garbage_ca.client_ca = Some(files.path("garbage.pem"));
    assert!(load(garbage_ca).contains("--tls-client-ca: no certificate"));
    let other_key = files.path("other.key");
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let mut mismatch = files.settings(false);
    mismatch.key = other_key;
    assert!(load(mismatch).contains("--tls-cert/--tls-key"));
}

// --- KEDA reads the TriggerAuthentication again once its inputs exist (deploy/mtls) ---

const KEDA: &str = "keda.sh";
const CERT_MANAGER: &str = "cert-manager.io";

/// The mtls component's ScaledJob, TriggerAuthentication and KEDA client Certificate, as
/// rendered from deploy/.
fn mtls_objects() -> (Value, Value, Value) {
    let docs = tools::rendered_with_mtls();
    let scaled_job = tools::find(&docs, "ScaledJob", "ado-agent").clone();
    let auth_name = scaled_job["spec"]["triggers"][0]["authenticationRef"]["name"]
        .as_str()
        .unwrap();
    let auth = tools::find(&docs, "TriggerAuthentication", auth_name).clone();
    let secret = auth["spec"]["secretTargetRef"][0]["name"].as_str().unwrap();
    let certificate = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == secret)
        .unwrap()
        .clone();
    (scaled_job, auth, certificate)
}

/// The Certificate as cert-manager leaves it after writing revision `revision` of its Secret.
fn issued(mut certificate: Value, revision: i64) -> Value {
    certificate["status"] = json!({
        "revision": revision,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
    });
    certificate
}

fn generation(sim: &SimCloud, name: &str) -> i64 {
    sim.kube
        .custom(KEDA, "scaledjobs", SIM_AGENT_NAMESPACE, name)
        .unwrap()["metadata"]["generation"]
        .as_i64()
        .unwrap()
}

/// Waits (at most 5 s) for the ScaledJob's generation to be `n`.
async fn reaches_generation(sim: &SimCloud, name: &str, n: i64) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            generation(sim, name) == n
        })
        .await,
        "{name} never reached generation {n}"
    );
}

fn refresh_settings(sim: &SimCloud, scaled_jobs: &[&str]) -> RefreshSettings {
    RefreshSettings {
        scaled_jobs: scaled_jobs
            .iter()
            .map(|n| (SIM_AGENT_NAMESPACE.to_owned(), (*n).to_owned()))
            .collect(),
        interval: Duration::from_millis(100),
        kubeconfig: Some(sim.kubeconfig.clone()),
    }
}

fn refreshes(metrics: &str, name: &str, result: &str) -> u64 {
    let prefix = format!(
        "ado_scaler_scaledjob_refreshes_total{{namespace=\"{SIM_AGENT_NAMESPACE}\",scaledjob=\"{name}\",result=\"{result}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} missing:\n{metrics}"))
        .parse()
        .unwrap()
}

/// The install order that left KEDA without its certificate for good (issue 19): the
/// ScaledJob first, its TriggerAuthentication later, cert-manager's Secret last. Nothing is
/// changed until every input exists; then the ScaledJob changes once (KEDA builds its scalers
/// again, reading the Secret), not again while nothing changes, and once more on renewal. All
/// under exactly the rights deploy/mtls gives the scaler, and no Secret is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaledjob_changes_once_keda_can_read_its_certificate_and_on_each_renewal() {
    let (scaled_job, auth, certificate) = mtls_objects();
    let grants = tools::grants(&tools::rendered_with_mtls(), "ado-scaler");
    // No Secret is readable but the registrar's own certificate, in the scaler's namespace.
    assert!(
        grants
            .iter()
            .filter(|g| g.resource == "secrets")
            .all(|g| g.namespace == "ado-scaler"
                && (g.verbs == ["create"] || g.resource_names == ["ado-scaler-registrar-tls"])),
        "the refresher reads no Secret"
    );
    let name = scaled_job["metadata"]["name"].as_str().unwrap().to_owned();
    let h = Harness::start_tuned(PollerSettings::default(), |sim, s| {
        sim.kube.enforce_rbac(grants.clone());
        sim.kube.put_custom(KEDA, "scaledjobs", scaled_job.clone());
        s.refresh = Some(refresh_settings(sim, &[&name]));
    })
    .await;
    let sim = &h.sim;
    let waiting = || async { refreshes(&h.http_get("/metrics").await.1, &name, "waiting") };
    let settle = |n: u64| {
        let waiting = &waiting;
        async move {
            let seen = waiting().await;
            assert!(
                eventually(Duration::from_secs(5), || async {
                    waiting().await >= seen + n
                })
                .await
            );
        }
    };

    // No TriggerAuthentication yet, then a Certificate not issued yet: nothing changes.
    settle(2).await;
    assert_eq!(generation(sim, &name), 1);
    sim.kube
        .put_custom(CERT_MANAGER, "certificates", certificate.clone());
    sim.kube
        .put_custom(KEDA, "triggerauthentications", auth.clone());
    settle(2).await;
    assert_eq!(generation(sim, &name), 1);
    assert!(h.logs().contains("is not issued yet"));

    // cert-manager writes the Secret: the ScaledJob changes, once.
    sim.kube
        .put_custom(CERT_MANAGER, "certificates", issued(certificate.clone(), 1));
    reaches_generation(sim, &name, 2).await;
    let stored = sim
        .kube
        .custom(KEDA, "scaledjobs", SIM_AGENT_NAMESPACE, &name)
        .unwrap();
    let stamp = stored["spec"]["jobTargetRef"]["template"]["metadata"]["annotations"]
        [STAMP_ANNOTATION]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(stamp.ends_with("ado-agent-keda-client#1"), "{stamp}");
    // The rest of the spec is as applied.
    let mut without_stamp = stored["spec"].clone();
    without_stamp["jobTargetRef"]["template"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(STAMP_ANNOTATION);
    let mut applied = scaled_job["spec"].clone();
    if applied["jobTargetRef"]["template"]["metadata"]["annotations"].is_null() {
        applied["jobTargetRef"]["template"]["metadata"]["annotations"] = json!({});
    }
    assert_eq!(without_stamp, applied);
    let unchanged = || async { refreshes(&h.http_get("/metrics").await.1, &name, "unchanged") };
    assert!(eventually(Duration::from_secs(5), || async { unchanged().await >= 3 }).await);
    assert_eq!(generation(sim, &name), 2, "changed again with nothing new");

    // Renewal (cert-manager's revision 2): once more.
    sim.kube
        .put_custom(CERT_MANAGER, "certificates", issued(certificate.clone(), 2));
    reaches_generation(sim, &name, 3).await;
    // The TriggerAuthentication recreated (new uid): once more.
    sim.kube.delete_custom(
        KEDA,
        "triggerauthentications",
        SIM_AGENT_NAMESPACE,
        "ado-scaler-grpc-client",
    );
    sim.kube.put_custom(KEDA, "triggerauthentications", auth);
    reaches_generation(sim, &name, 4).await;
    let (_, metrics) = h.http_get("/metrics").await;
    assert_eq!(refreshes(&metrics, &name, "refreshed"), 3, "{metrics}");
    assert_eq!(refreshes(&metrics, &name, "error"), 0, "{metrics}");
    assert_eq!(
        sim.kube.forbidden(),
        0,
        "a request outside deploy/mtls's rights"
    );
}

/// A ScaledJob whose rollout would delete running Jobs is never changed (a warning says
/// why); one that does not exist is an error that names it; others are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaledjob_without_gradual_rollout_is_left_alone_and_said_so() {
    let (scaled_job, auth, certificate) = mtls_objects();
    let mut immediate = scaled_job.clone();
    immediate["metadata"]["name"] = json!("immediate");
    immediate["spec"]["rollout"] = json!({"strategy": "immediate"});
    let h = Harness::start_tuned(PollerSettings::default(), |sim, s| {
        sim.kube.put_custom(KEDA, "scaledjobs", immediate.clone());
        sim.kube.put_custom(KEDA, "scaledjobs", scaled_job.clone());
        sim.kube
            .put_custom(KEDA, "triggerauthentications", auth.clone());
        sim.kube
            .put_custom(CERT_MANAGER, "certificates", issued(certificate.clone(), 1));
        s.refresh = Some(refresh_settings(
            sim,
            &["missing", "immediate", "ado-agent"],
        ));
    })
    .await;
    reaches_generation(&h.sim, "ado-agent", 2).await;
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(
        refreshes(&metrics, "immediate", "not_gradual") >= 1,
        "{metrics}"
    );
    assert!(refreshes(&metrics, "missing", "error") >= 1, "{metrics}");
    assert_eq!(generation(&h.sim, "immediate"), 1);
    let logs = h.logs();
    assert!(
        logs.contains("ScaledJob ado-agents/missing not found"),
        "{logs}"
    );
    assert!(
        logs.contains("set spec.rollout.strategy: gradual"),
        "{logs}"
    );
    // Said once, not every tick.
    assert!(
        eventually(Duration::from_secs(5), || async {
            refreshes(&h.http_get("/metrics").await.1, "immediate", "not_gradual") >= 4
        })
        .await
    );
    assert_eq!(
        h.logs()
            .matches("scaledjob=immediate result=\"not_gradual\"")
            .count(),
        1
    );
}
