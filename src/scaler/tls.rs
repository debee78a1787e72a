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

/// gRPC clients (grpc-go in KEDA since 1.67) refuse a server that does not agree on h2.
const GRPC_ALPN: &[u8] = b"h2";
const HTTP1_ALPN: &[u8] = b"http/1.1";

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
            "TLS handshakes on the gRPC port, by result: success, no_client_certificate, untrusted \
             (a client certificate --tls-client-ca does not trust), rejected_by_client (the client \
             does not trust ours), not_tls, timeout, error",
            metrics.handshakes.clone(),
        );
        for result in ["success", "error"] {
            let _ = metrics.reloads.get_or_create(&TlsResultLabels { result });
        }
        for result in std::iter::once("success").chain(Refusal::ALL.iter().map(|r| r.label())) {
            let _ = metrics
                .handshakes
                .get_or_create(&TlsResultLabels { result });
        }
        Arc::new(metrics)
    }
}

/// Why a handshake on the gRPC port failed: each has its own label and its own advice, because
/// each has a different fix (KEDA keeps a failed connection's settings until the ScaledJob
/// changes; README: "mTLS and install order").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// mTLS is on and the client sent no certificate.
    NoClientCertificate,
    /// The client's certificate is not signed by `--tls-client-ca`, or has expired.
    Untrusted,
    /// The client refused our certificate: it lacks (or has another) CA.
    RejectedByClient,
    /// The client spoke something other than TLS: a plaintext gRPC client.
    NotTls,
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    /// Anything else (a reset connection, a protocol error).
    Other,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::NoClientCertificate,
        Refusal::Untrusted,
        Refusal::RejectedByClient,
        Refusal::NotTls,
        Refusal::Timeout,
        Refusal::Other,
    ];

    /// The `result` label of `ado_scaler_tls_handshakes_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoClientCertificate => "no_client_certificate",
            Refusal::Untrusted => "untrusted",
            Refusal::RejectedByClient => "rejected_by_client",
            Refusal::NotTls => "not_tls",
            Refusal::Timeout => "timeout",
            Refusal::Other => "error",
        }
    }

    /// What the operator should do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Refusal::NoClientCertificate => {
                "the client sent no certificate: KEDA's TriggerAuthentication gives no \
                 tlsClientCert/tlsClientKey, or KEDA built its connection before that Secret \
                 existed and keeps it until the ScaledJob changes (--refresh-scaledjobs does \
                 that; README: mTLS and install order)"
            }
            Refusal::Untrusted => {
                "the client's certificate is not signed by --tls-client-ca or has expired: \
                 KEDA still holds an old certificate until the ScaledJob changes \
                 (--refresh-scaledjobs), or the TriggerAuthentication names another CA's Secret"
            }
            Refusal::RejectedByClient => {
                "the client refused this scaler's certificate: KEDA's caCert is missing or from \
                 another CA (it was read before cert-manager wrote the Secret; \
                 --refresh-scaledjobs makes KEDA read it again)"
            }
            Refusal::NotTls => {
                "the client spoke plaintext to the TLS port: set enableTLS: \"true\" on the trigger"
            }
            Refusal::Timeout => "the client did not finish its handshake within 10s",
            Refusal::Other => "the handshake failed; see the error",
        }
    }

    /// Classifies the error `tokio_rustls` gave for a failed handshake.
    pub fn classify(error: &std::io::Error) -> Self {
        use rustls::{AlertDescription as Alert, Error as Tls};
        match error.get_ref().and_then(|e| e.downcast_ref::<Tls>()) {
            Some(Tls::NoCertificatesPresented) => Refusal::NoClientCertificate,
            Some(Tls::InvalidCertificate(_)) => Refusal::Untrusted,
            Some(Tls::AlertReceived(
                Alert::UnknownCA
                | Alert::BadCertificate
                | Alert::CertificateUnknown
                | Alert::CertificateExpired
                | Alert::UnsupportedCertificate
                | Alert::AccessDenied,
            )) => Refusal::RejectedByClient,
            Some(Tls::InvalidMessage(_)) => Refusal::NotTls,
            _ => Refusal::Other,
        }
    }
}

/// Logs refused handshakes at most once a minute per kind, with how many were left unlogged:
/// KEDA redials every few seconds, and a log line per dial would drown everything else.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: std::sync::Mutex<std::collections::HashMap<Refusal, (tokio::time::Instant, u64)>>,
}

/// The shortest time between two log lines about the same kind of refusal.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

impl RefusalLog {
    /// `Some(n)` when this refusal is to be logged now, `n` being how many of its kind were
    /// refused since the last line; `None` while the last line is under a minute old.
    pub fn admit(&self, refusal: Refusal) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut last = self.last.lock().expect("refusal log poisoned");
        match last.get_mut(&refusal) {
            Some((at, unlogged)) if now.duration_since(*at) < REFUSAL_LOG_EVERY => {
                *unlogged += 1;
                None
            }
            Some((at, unlogged)) => {
                let since = *unlogged;
                *at = now;
                *unlogged = 0;
                Some(since)
            }
            None => {
                last.insert(refusal, (now, 0));
                Some(0)
            }
        }
    }

    fn record(&self, refusal: Refusal, peer: std::net::SocketAddr, error: &str) {
        if let Some(unlogged) = self.admit(refusal) {
            tracing::warn!(
                %peer,
                %error,
                result = refusal.label(),
                refused_since_last_log = unlogged,
                "gRPC TLS handshake refused: {}",
                refusal.advice()
            );
        }
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
    /// What the server speaks, told to clients in ALPN.
    alpn: &'static [u8],
    current: RwLock<Loaded>,
    metrics: Arc<TlsMetrics>,
    refusals: RefusalLog,
}

impl ReloadingConfig {
    /// Loads the files; a bad one fails here, naming its flag.
    pub fn load(settings: TlsSettings, metrics: Arc<TlsMetrics>) -> Result<Arc<Self>> {
        Self::load_speaking(settings, GRPC_ALPN, metrics)
    }

    /// The same certificate for an HTTP/1.1 server (the registrar), where clients bring no
    /// certificate of their own.
    pub fn load_https(settings: TlsSettings, metrics: Arc<TlsMetrics>) -> Result<Arc<Self>> {
        let settings = TlsSettings {
            client_ca: None,
            ..settings
        };
        Self::load_speaking(settings, HTTP1_ALPN, metrics)
    }

    fn load_speaking(
        settings: TlsSettings,
        alpn: &'static [u8],
        metrics: Arc<TlsMetrics>,
    ) -> Result<Arc<Self>> {
        let files = read_files(&settings)?;
        let config = build(&files, alpn)?;
        Ok(Arc::new(Self {
            settings,
            alpn,
            current: RwLock::new(Loaded { files, config }),
            metrics,
            refusals: RefusalLog::default(),
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
        match build(&files, self.alpn) {
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

fn build(files: &[Vec<u8>], alpn: &[u8]) -> Result<Arc<ServerConfig>> {
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
    config.alpn_protocols = vec![alpn.to_vec()];
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
                        Ok(Err(e)) => Err((Refusal::classify(&e), e.to_string())),
                        Err(_) => Err((Refusal::Timeout, "handshake timed out".to_owned())),
                    };
                let label = match &result {
                    Ok(_) => "success",
                    Err((refusal, _)) => refusal.label(),
                };
                tls.metrics
                    .handshakes
                    .get_or_create(&TlsResultLabels { result: label })
                    .inc();
                match result {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err((refusal, error)) => tls.refusals.record(refusal, peer, &error),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_kind_of_refusal_is_logged_at_most_once_a_minute_with_the_count_between() {
        let log = RefusalLog::default();
        assert_eq!(log.admit(Refusal::Untrusted), Some(0));
        assert_eq!(log.admit(Refusal::Untrusted), None);
        // Another kind has its own minute.
        assert_eq!(log.admit(Refusal::NotTls), Some(0));
        tokio::time::advance(REFUSAL_LOG_EVERY - Duration::from_millis(1)).await;
        assert_eq!(log.admit(Refusal::Untrusted), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(log.admit(Refusal::Untrusted), Some(2), "two went unlogged");
        assert_eq!(log.admit(Refusal::Untrusted), None);
        tokio::time::advance(REFUSAL_LOG_EVERY).await;
        assert_eq!(log.admit(Refusal::Untrusted), Some(1));
        assert_eq!(log.admit(Refusal::NotTls), Some(0));
    }

    fn io(error: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn handshake_errors_are_told_apart_by_what_fixes_them() {
        use rustls::{AlertDescription as Alert, CertificateError, Error as Tls, InvalidMessage};
        let cases = [
            (Tls::NoCertificatesPresented, Refusal::NoClientCertificate),
            (
                Tls::InvalidCertificate(CertificateError::UnknownIssuer),
                Refusal::Untrusted,
            ),
            (
                Tls::InvalidCertificate(CertificateError::Expired),
                Refusal::Untrusted,
            ),
            (
                Tls::AlertReceived(Alert::UnknownCA),
                Refusal::RejectedByClient,
            ),
            (
                Tls::AlertReceived(Alert::BadCertificate),
                Refusal::RejectedByClient,
            ),
            (
                Tls::AlertReceived(Alert::CertificateUnknown),
                Refusal::RejectedByClient,
            ),
            (
                Tls::AlertReceived(Alert::CertificateExpired),
                Refusal::RejectedByClient,
            ),
            (
                Tls::AlertReceived(Alert::UnsupportedCertificate),
                Refusal::RejectedByClient,
            ),
            (
                Tls::AlertReceived(Alert::AccessDenied),
                Refusal::RejectedByClient,
            ),
            (Tls::AlertReceived(Alert::HandshakeFailure), Refusal::Other),
            (
                Tls::InvalidMessage(InvalidMessage::InvalidContentType),
                Refusal::NotTls,
            ),
            (Tls::DecryptError, Refusal::Other),
        ];
        for (error, expected) in cases {
            let text = error.to_string();
            assert_eq!(Refusal::classify(&io(error)), expected, "{text}");
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(Refusal::classify(&reset), Refusal::Other);
        // Every label distinct, every kind with its own advice.
        let labels: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.label()).collect();
        let advice: std::collections::HashSet<_> =
            Refusal::ALL.iter().map(|r| r.advice()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
        assert_eq!(advice.len(), Refusal::ALL.len());
        assert!(!labels.contains("success"));
    }
}
