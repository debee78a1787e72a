//! Faithful simulators of the Entra token endpoint and an Azure DevOps organisation, served
//! over real HTTPS on loopback. The demo, the tests and the benchmarks all use these, and the
//! production code paths (azure_identity, reqwest, tonic) run against them unmodified.

pub mod ado;
pub mod agent;
pub mod entra;
pub mod jwt;
pub mod kube;
pub mod tls;
pub mod tools;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use ado::{AdoSim, Endpoint, Fault, SIM_AGENT_VERSION, system_capabilities};
use ado_scaler::{
    auth::{self, AuthSettings, WorkloadIdentity},
    error::{Error, Result},
    scaler::allowlist::OrgAllowlist,
};
pub use entra::{Entra, EntraConfig, TokenStore};
pub use kube::{KubeEndpoint, KubeFault, KubeSim};

pub const SIM_TENANT: &str = "72f988bf-0000-4000-8000-00000000a11c";
pub const SIM_CLIENT_ID: &str = "5e1f0000-0000-4000-8000-0000000c1d01";
pub const SIM_ORG: &str = "contoso";
pub const SIM_ISSUER: &str = "https://oidc.sim.local/cluster/";
pub const SIM_SUBJECT: &str = "system:serviceaccount:ado-scaler:ado-scaler";
/// The simulated cluster's namespaces: the scaler's (its Lease) and the agents'.
pub const SIM_SCALER_NAMESPACE: &str = "ado-scaler";
pub const SIM_AGENT_NAMESPACE: &str = "ado-agents";

/// A simulated organisation, tenant and Kubernetes API server, each on its own HTTPS port,
/// with their files (CA bundle, projected service-account token, kubeconfig) in a private
/// temporary folder.
pub struct SimCloud {
    pub entra: Entra,
    pub ado: AdoSim,
    pub kube: KubeSim,
    /// A kubeconfig for the simulated API server, default namespace [`SIM_SCALER_NAMESPACE`].
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:{port}`: what AZURE_AUTHORITY_HOST points at.
    pub authority_host: String,
    /// `https://127.0.0.1:{port}/contoso`.
    pub org_url: String,
    pub ca_pem: String,
    /// The network to Entra and to the organisation, for unreachable-server faults.
    pub entra_network: Arc<tls::Network>,
    pub ado_network: Arc<tls::Network>,
    tokens: Arc<TokenStore>,
    pub ca_file: PathBuf,
    /// A server certificate for `localhost`/`127.0.0.1` signed by `ca_file`, and its key.
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    pub token_file: PathBuf,
    dir: PathBuf,
    stop: CancellationToken,
}

impl SimCloud {
    /// Starts both simulators on `127.0.0.1:0`.
    pub async fn start() -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ado-scaler-sim-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        let write = |name: &str, content: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, content)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            Ok(path)
        };
        let ca = tls::SimCa::generate()?;
        let ca_file = write("ca.pem", &ca.ca_pem)?;
        let server_cert_file = write("server.pem", &ca.server_cert_pem)?;
        let server_key_file = write("server-key.pem", &ca.server_key_pem)?;
        let token_file = write(
            "azure-identity-token",
            &entra::service_account_token(SIM_ISSUER, SIM_SUBJECT),
        )?;

        let tokens = Arc::new(TokenStore::default());
        let entra = Entra::new(
            EntraConfig {
                tenant_id: SIM_TENANT.into(),
                client_id: SIM_CLIENT_ID.into(),
                federated_token_file: token_file.clone(),
                token_lifetime: Duration::from_secs(3599),
            },
            tokens.clone(),
        );
        let ado = AdoSim::new(SIM_ORG, tokens.clone());
        let kube_token: String = {
            use rand::Rng as _;
            let mut rng = rand::rng();
            (0..32)
                .map(|_| char::from(b'a' + rng.random_range(0..26)))
                .collect()
        };
        let kube = KubeSim::new(&kube_token);

        let stop = CancellationToken::new();
        let bind = || async {
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| Error::Config(format!("simulator bind: {e}")))
        };
        let (entra_listener, ado_listener, kube_listener) =
            (bind().await?, bind().await?, bind().await?);
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or_default();
        let authority_host = format!("https://127.0.0.1:{}", port(&entra_listener));
        let org_url = format!("https://127.0.0.1:{}/{SIM_ORG}", port(&ado_listener));
        let (entra_network, ado_network) = (Arc::default(), Arc::default());
        tokio::spawn(tls::serve_tls(
            entra_listener,
            ca.server_config.clone(),
            entra.router(),
            Arc::clone(&entra_network),
            stop.clone(),
        ));
        tokio::spawn(tls::serve_tls(
            ado_listener,
            ca.server_config.clone(),
            ado.router(),
            Arc::clone(&ado_network),
            stop.clone(),
        ));
        let kubeconfig = write(
            "kubeconfig",
            &kube.kubeconfig(
                &format!("https://127.0.0.1:{}", port(&kube_listener)),
                &ca.ca_pem,
                SIM_SCALER_NAMESPACE,
            ),
        )?;
        tokio::spawn(tls::serve_tls(
            kube_listener,
            ca.server_config.clone(),
            kube.router(),
            Arc::default(),
            stop.clone(),
        ));

        Ok(Self {
            entra,
            ado,
            kube,
            kubeconfig,
            authority_host,
            org_url,
            ca_pem: ca.ca_pem,
            entra_network,
            ado_network,
            tokens,
            ca_file,
            server_cert_file,
            server_key_file,
            token_file,
            dir,
            stop,
        })
    }

    /// The workload-identity settings an AKS pod of the scaler would get.
    pub fn workload_identity(&self) -> WorkloadIdentity {
        WorkloadIdentity {
            client_id: SIM_CLIENT_ID.into(),
            tenant_id: SIM_TENANT.into(),
            token_file: self.token_file.clone(),
            authority_host: Some(self.authority_host.clone()),
        }
    }

    pub fn auth_settings(&self) -> AuthSettings {
        AuthSettings::WorkloadIdentity(self.workload_identity())
    }

    /// The production HTTP client, trusting the simulators' CA as `--ca-file` would.
    pub fn http_client(&self) -> Result<reqwest::Client> {
        auth::http_client(Some(self.ca_pem.as_bytes()))
    }

    /// An allowlist holding exactly this organisation.
    pub fn allowlist(&self) -> OrgAllowlist {
        OrgAllowlist::parse(&[self.org_url.as_str()]).expect("simulated org URL is a valid pattern")
    }

    /// Environment variables the AKS webhook would inject, for running the binary.
    pub fn pod_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_CLIENT_ID", SIM_CLIENT_ID.into()),
            ("AZURE_TENANT_ID", SIM_TENANT.into()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                self.token_file.display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST", self.authority_host.clone()),
            ("ADO_SCALER_CA_FILE", self.ca_file.display().to_string()),
        ]
    }

    /// Every access token the simulated Entra issued.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.tokens.all()
    }

    /// Whether an access token is one the simulated Entra issued and it has not expired.
    pub fn token_is_valid(&self, token: &str) -> bool {
        self.tokens.is_valid(token)
    }

    /// Invalidates every issued token, as if the identity left the organisation.
    pub fn revoke_tokens(&self) {
        self.tokens.revoke_all();
    }

    /// The token service URL the simulated organisation gives registrations.
    pub fn authorization_url(&self) -> String {
        let base = self.org_url.trim_end_matches(SIM_ORG).trim_end_matches('/');
        format!("{base}/_sim/vstoken/{SIM_ORG}")
    }

    /// Registers `name` in the pool with a new key and writes the agent's three files into
    /// `dir`, as `config.sh` (or `agent prepare`) leaves them; returns the agent id.
    pub fn write_registration(&self, pool_id: u32, pool: &str, name: &str, dir: &Path) -> u32 {
        use ado_scaler::agent::credentials::{self, AgentSettingsFile, CredentialsFile, RsaParams};
        let key = RsaParams::generate().expect("key");
        let url = self.authorization_url();
        let (id, client_id) = self
            .ado
            .register_with_key(pool_id, name, key.public_key(), &url);
        std::fs::create_dir_all(dir).expect("agent dir");
        std::fs::write(
            dir.join(credentials::KEY_FILE),
            serde_json::to_vec(&key).expect("key"),
        )
        .expect("key file");
        credentials::write_registration(
            dir,
            &AgentSettingsFile {
                agent_id: id,
                agent_name: name.into(),
                pool_id,
                pool_name: pool.into(),
                server_url: self.org_url.clone(),
                work_folder: "_work".into(),
            },
            &CredentialsFile::oauth(&client_id, &url),
        )
        .expect("registration files");
        id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SimCloud {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
