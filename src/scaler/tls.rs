//! gRPC over TLS, optionally requiring client certificates (mTLS), with the files re-read when
//! they change: cert-manager rewrites them in place before they expire. A reload swaps the
//! configuration new connections get; open connections and their streams are left alone.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`, `--tls-reload-interval`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by this CA are required; `None`: no client certificate.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for a change.
    pub reload_interval: Duration,
}

/// A client that does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Default)]
pub struct TlsMetrics {
    pub reloads: Family<TlsResultLabels, Counter>,
    pub handshakes: Family<TlsResultLabels, Counter>,
}

impl TlsMetrics {
    /// Registers under `ado_scaler_tls_*`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        let tls = registry.sub_registry_with_prefix("tls");
        tls.register(
            "reloads",
            "Certificate reloads after the files changed, by result (an error keeps the previous \
             certificate)",
            metrics.reloads.clone(),
        );
        tls.register(
            "handshakes",
            "TLS handshakes on the gRPC port, by result (a refused client certificate is an error)",
            metrics.handshakes.clone(),
        );
        for result in ["success", "error"] {
            let _ = metrics.reloads.get_or_create(&TlsResultLabels { result });
            let _ = metrics
                .handshakes
                .get_or_create(&TlsResultLabels { result });
        }
        Arc::new(metrics)
    }
}

/// The files' bytes, to notice a change, and the configuration built from them.
struct Loaded {
    files: Vec<Vec<u8>>,
    config: Arc<ServerConfig>,
}

/// The current server configuration, swapped when the files change.
pub struct ReloadingConfig {
    settings: TlsSettings,
    current: RwLock<Loaded>,
    metrics: Arc<TlsMetrics>,
}

impl ReloadingConfig {
    /// Loads the files; a bad one fails here, naming its flag.
    pub fn load(settings: TlsSettings, metrics: Arc<TlsMetrics>) -> Result<Arc<Self>> {
        let files = read_files(&settings)?;
        let config = build(&files)?;
        Ok(Arc::new(Self {
            settings,
            current: RwLock::new(Loaded { files, config }),
            metrics,
        }))
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .expect("tls config poisoned")
            .config
            .clone()
    }

    /// Re-reads the files; rebuilds when they changed. A change that does not load (a file
    /// half written, a key that does not match) keeps the previous configuration.
    pub fn reload_if_changed(&self) {
        let files = match read_files(&self.settings) {
            Ok(files) => files,
            Err(e) => {
                self.failed(&e);
                return;
            }
        };
        if self.current.read().expect("tls config poisoned").files == files {
            return;
        }
        match build(&files) {
            Ok(config) => {
                *self.current.write().expect("tls config poisoned") = Loaded { files, config };
                self.metrics
                    .reloads
                    .get_or_create(&TlsResultLabels { result: "success" })
                    .inc();
                tracing::info!(cert = %self.settings.cert.display(), "gRPC TLS certificate reloaded");
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&self, error: &Error) {
        self.metrics
            .reloads
            .get_or_create(&TlsResultLabels { result: "error" })
            .inc();
        tracing::warn!(%error, "gRPC TLS files changed but do not load; keeping the previous certificate");
    }

    /// Checks the files every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.reload_if_changed(),
                () = stop.cancelled() => return,
            }
        }
    }
}

/// `[cert, key, client CA]` as bytes (the CA empty when there is none).
fn read_files(settings: &TlsSettings) -> Result<Vec<Vec<u8>>> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))
    };
    Ok(vec![
        read("--tls-cert", &settings.cert)?,
        read("--tls-key", &settings.key)?,
        match &settings.client_ca {
            Some(ca) => read("--tls-client-ca", ca)?,
            None => Vec::new(),
        },
    ])
}

fn build(files: &[Vec<u8>]) -> Result<Arc<ServerConfig>> {
    let config_err = |flag: &str, e: &dyn std::fmt::Display| Error::Config(format!("{flag}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files[0])
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| config_err("--tls-cert", &e))?;
    if certs.is_empty() {
        return Err(config_err("--tls-cert", &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&files[1]).map_err(|e| config_err("--tls-key", &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err("TLS", &e))?;
    let builder = if files[2].is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&files[2]) {
            let ca = ca.map_err(|e| config_err("--tls-client-ca", &e))?;
            roots
                .add(ca)
                .map_err(|e| config_err("--tls-client-ca", &e))?;
        }
        if roots.is_empty() {
            return Err(config_err("--tls-client-ca", &"no certificate in the file"));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| config_err("--tls-client-ca", &e))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| config_err("--tls-cert/--tls-key", &e))?;
    // gRPC clients (grpc-go in KEDA since 1.67) refuse a server that does not agree on h2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts on `listener` and hands out connections whose handshake succeeded, each with the
/// configuration current when it connected. Handshakes run concurrently, so a slow client
/// does not hold up the others.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingConfig>,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!(error = %e, "gRPC accept failed");
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            // No Nagle: a small gRPC answer must not wait for the client's delayed ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let acceptor = TlsAcceptor::from(tls.config());
                let result =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => Ok(stream),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("handshake timed out".to_owned()),
                    };
                let label = if result.is_ok() { "success" } else { "error" };
                tls.metrics
                    .handshakes
                    .get_or_create(&TlsResultLabels { result: label })
                    .inc();
                match result {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(error) => tracing::info!(%peer, %error, "gRPC TLS handshake failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
