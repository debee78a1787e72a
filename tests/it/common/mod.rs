//! Shared harness: simulated Entra + ADO over TLS, the real scaler on `127.0.0.1:0`, a tonic client.
#![allow(dead_code)]

pub mod hygiene;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use ado_scaler::{
    gc::GcSettings,
    placeholder::PlaceholderSettings,
    poller::PollerSettings,
    scaler::{
        access::Access,
        proto::{ScaledObjectRef, external_scaler_client::ExternalScalerClient},
    },
    serve::{Listeners, ServeSettings, serve},
};
use ado_sim::SimCloud;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

pub const POOL: &str = "linux";
pub const TEMPLATE: &str = "template";

/// User capabilities with empty values.
pub fn capabilities(names: &[&str]) -> std::collections::BTreeMap<String, String> {
    names
        .iter()
        .map(|n| (n.to_string(), String::new()))
        .collect()
}

pub struct Harness {
    pub sim: SimCloud,
    pub pool_id: u32,
    pub client: ExternalScalerClient<Channel>,
    pub channel: Channel,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The registrar's address, when the settings turn it on.
    pub registrar_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<ado_scaler::Result<()>>>,
    /// For the hygiene check when the harness ends: the settings' `Debug` print, the
    /// federated assertion as first written, and every gRPC error the test received.
    settings_debug: String,
    assertion: String,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Harness {
    pub async fn start(interval: Duration) -> Self {
        Self::start_with(PollerSettings {
            interval,
            max_staleness: interval * 20,
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(poller: PollerSettings) -> Self {
        Self::start_full(poller, PlaceholderSettings::default()).await
    }

    pub async fn start_full(poller: PollerSettings, placeholders: PlaceholderSettings) -> Self {
        Self::start_custom(poller, placeholders, |_| None, |_, _| {}).await
    }

    /// With the serve settings adjusted by `tune` (body limit, HTTP client).
    pub async fn start_tuned(
        poller: PollerSettings,
        tune: impl FnOnce(&SimCloud, &mut ServeSettings),
    ) -> Self {
        Self::start_custom(poller, PlaceholderSettings::default(), |_| None, tune).await
    }

    /// With the stale-agent collector, configured from the simulators.
    pub async fn start_gc(gc: impl FnOnce(&SimCloud) -> GcSettings) -> Self {
        Self::start_custom(
            PollerSettings::default(),
            PlaceholderSettings::default(),
            |sim| Some(gc(sim)),
            |_, _| {},
        )
        .await
    }

    async fn start_custom(
        poller: PollerSettings,
        placeholders: PlaceholderSettings,
        gc: impl FnOnce(&SimCloud) -> Option<GcSettings>,
        tune: impl FnOnce(&SimCloud, &mut ServeSettings),
    ) -> Self {
        hygiene::capture();
        let sim = SimCloud::start().await.expect("simulators start");
        let pool_id = sim.ado.add_pool(POOL);
        // An offline registration offering every demand the tests queue, so that ADO queues
        // their jobs (as the template agent KEDA's users keep).
        sim.ado
            .register_offline_agent(pool_id, TEMPLATE, &capabilities(&["maven", "gpu", "d3"]));
        let mut settings = ServeSettings {
            gc: gc(&sim),
            access: Access::within(sim.allowlist()),
            poller,
            parallelism: ado_scaler::parallelism::ParallelismSettings::default(),
            placeholders,
            auth: sim.auth_settings(),
            http: sim.http_client().unwrap(),
            max_body: ado_scaler::ado::DEFAULT_MAX_BODY,
            grpc_tls: None,
            refresh: None,
            registrar: None,
        };
        tune(&sim, &mut settings);
        let settings_debug = format!("{settings:?}");
        let assertion = std::fs::read_to_string(&sim.token_file).unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let registrar = match settings.registrar {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let registrar_addr = registrar.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners {
            grpc,
            http,
            registrar,
        };
        let server = tokio::spawn(serve(settings, listeners, async move {
            let _ = stopped.await;
        }));
        // The listener is bound already, so connecting cannot race the server's start. Lazily:
        // a TLS scaler refuses this plaintext channel, and its tests make their own.
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect_lazy();
        Self {
            sim,
            pool_id,
            client: ExternalScalerClient::new(channel.clone()),
            channel,
            grpc_addr,
            http_addr,
            registrar_addr,
            stop: Some(stop),
            server: Some(server),
            settings_debug,
            assertion,
            errors: std::sync::Mutex::default(),
        }
    }

    /// Everything logged in this test binary so far (every harness's scaler shares it).
    pub fn logs(&self) -> String {
        hygiene::capture().text()
    }

    /// A ScaledJob reference for the simulated pool, with extra metadata.
    pub fn scaled_job(&self, name: &str, extra: &[(&str, &str)]) -> ScaledObjectRef {
        let mut meta: HashMap<String, String> = HashMap::from([
            ("organizationURL".into(), self.sim.org_url.clone()),
            ("poolName".into(), POOL.into()),
            ("scalerAddress".into(), "ado-scaler.ado-scaler:9090".into()),
        ]);
        for (k, v) in extra {
            meta.insert(k.to_string(), v.to_string());
        }
        ScaledObjectRef {
            name: name.into(),
            namespace: "agents".into(),
            scaler_metadata: meta,
        }
    }

    pub async fn metric(&self, r: &ScaledObjectRef) -> Result<i64, tonic::Status> {
        let mut client = self.client.clone();
        let response = client
            .get_metrics(ado_scaler::scaler::proto::GetMetricsRequest {
                scaled_object_ref: Some(r.clone()),
                metric_name: "ado-pool-linux".into(),
            })
            .await
            .inspect_err(|status| {
                self.errors
                    .lock()
                    .unwrap()
                    .push(format!("{status:?} {}", status.message()));
            })?
            .into_inner();
        let value = &response.metric_values[0];
        assert_eq!(value.metric_name, "ado-pool-linux");
        assert_eq!(value.metric_value as f64, value.metric_value_float);
        Ok(value.metric_value)
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.http_addr))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn shutdown(&mut self) -> ado_scaler::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.take().unwrap().await.unwrap()
    }
}

impl Harness {
    /// Every secret of this harness's simulators: issued tokens, the federated assertion (and
    /// its signature alone), the Kubernetes API token.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = self.sim.issued_tokens();
        secrets.push(self.assertion.trim().to_owned());
        secrets.push(self.assertion.trim().rsplit('.').next().unwrap().to_owned());
        if let Ok(now) = std::fs::read_to_string(&self.sim.token_file) {
            secrets.push(now.trim().to_owned());
        }
        secrets.push(self.sim.kube.token().to_owned());
        secrets
    }
}

impl Drop for Harness {
    /// The hygiene check (see [`hygiene`]); skipped when the test already failed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let secrets = self.secrets();
        let leaks = hygiene::capture().leaks(&secrets).len();
        assert_eq!(leaks, 0, "{leaks} secret(s) in the captured logs");
        hygiene::assert_clean("the settings' Debug print", &self.settings_debug, &secrets);
        let errors = self.errors.lock().unwrap().join("\n");
        hygiene::assert_clean("gRPC errors", &errors, &secrets);
    }
}

/// Waits until the simulated ADO has received `n` more job-requests polls (of the harness's
/// one pool): with `n >= 2`, a value read afterwards comes from a snapshot taken after
/// whatever the test changed before the call. Fails the test when they do not come.
pub async fn polled(sim: &SimCloud, n: u64) {
    let requests = || sim.ado.requests(ado_sim::Endpoint::JobRequests);
    let before = requests();
    assert!(
        eventually(Duration::from_secs(5), || async {
            requests() >= before + n
        })
        .await,
        "fewer than {n} polls in 5 s"
    );
}

/// When each of the next `n` job-requests polls arrived, as seen every 5 ms; fails the test
/// when they do not come within `within`.
pub async fn poll_times(sim: &SimCloud, n: usize, within: Duration) -> Vec<tokio::time::Instant> {
    let requests = || sim.ado.requests(ado_sim::Endpoint::JobRequests);
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = requests();
    let mut times = Vec::new();
    while times.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} polls in {within:?}",
            times.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = requests();
        if now > seen {
            times.extend(std::iter::repeat_n(
                tokio::time::Instant::now(),
                (now - seen) as usize,
            ));
            seen = now;
        }
    }
    times
}

/// Polls `probe` every 20 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
