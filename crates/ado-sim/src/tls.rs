//! A CA generated at start and HTTPS serving for the simulators. The scaler trusts the CA
//! through `--ca-file`, the same path a user with a corporate CA takes.

use std::sync::Arc;

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use ado_scaler::error::{Error, Result};

/// A throw-away CA and a server certificate for `localhost` / `127.0.0.1` / `::1`.
pub struct SimCa {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
    /// The same server certificate (chain) and key as PEM, for a server of ours that loads
    /// files (the scaler's registrar in tests).
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("simulator TLS: {e}"))
}

impl SimCa {
    pub fn generate() -> Result<Self> {
        let ca_key = KeyPair::generate().map_err(tls_err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ado-scaler simulator CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().map_err(tls_err)?;
        let mut leaf =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])
                .map_err(tls_err)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "ado-scaler simulator");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(tls_err)?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone(), ca_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .map_err(tls_err)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_config: Arc::new(config),
            server_cert_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
            server_key_pem: leaf_key.serialize_pem(),
        })
    }
}

/// The network between a simulator and its clients, switchable by tests: an unreachable
/// server holds new connections without ever answering the TLS handshake (a client's connect
/// timeout fires, as for a firewall that drops packets), and cuts the ones it has.
#[derive(Debug)]
pub struct Network {
    unreachable: std::sync::atomic::AtomicBool,
    /// Bumped to drop every open connection.
    cuts: tokio::sync::watch::Sender<u64>,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            unreachable: std::sync::atomic::AtomicBool::new(false),
            cuts: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Network {
    /// `true`: open connections are dropped and new ones get no handshake.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable
            .store(unreachable, std::sync::atomic::Ordering::SeqCst);
        if unreachable {
            self.cut_connections();
        }
    }

    /// Drops every open connection (a reset for a request in flight on one).
    pub fn cut_connections(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    fn is_unreachable(&self) -> bool {
        self.unreachable.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Serves `app` over TLS on `listener` until `stop` is cancelled, through `network`.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    network: Arc<Network>,
    stop: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "simulator accept failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let (acceptor, app, stop, network) =
            (acceptor.clone(), app.clone(), stop.clone(), network.clone());
        tokio::spawn(async move {
            if network.is_unreachable() {
                // Never answer; let go when the client gives up or the test ends.
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                    () = stop.cancelled() => {}
                }
                drop(tcp);
                return;
            }
            let mut cuts = network.cuts.subscribe();
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = TowerToHyperService::new(app);
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = cuts.changed() => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
