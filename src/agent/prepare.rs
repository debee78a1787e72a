//! `ado-scaler agent prepare`: the agent pod's init container. It makes the agent's RSA key
//! in the pod, has the scaler's registrar register the public half (authenticated by the
//! pod's projected service-account token, which only this container mounts), and writes the
//! three files `run --once` needs into a volume the agent container shares. The agent
//! container then holds a key that can run one agent and nothing that can register another.

use std::{path::PathBuf, time::Duration};

use tokio::time::Instant;

use super::credentials::{self, AgentSettingsFile, CredentialsFile};
use crate::{
    error::{Error, Result},
    registrar::wire::{REGISTRATIONS_PATH, RegistrationAnswer, RegistrationRequest},
};

/// `agent prepare`'s settings, from its flags.
#[derive(Debug, Clone)]
pub struct PrepareSettings {
    /// The registrar's base URL (`https://…`).
    pub registrar: String,
    /// The projected service-account token (audience `ado-scaler`).
    pub token_file: PathBuf,
    /// The only CA trusted for the registrar.
    pub ca_file: PathBuf,
    /// Where the three files are written (the volume shared with the agent container).
    pub config_dir: PathBuf,
    /// Where the agent's listener is (for its `--version`).
    pub agent_dir: PathBuf,
    pub work: String,
    /// How long registration may retry while the registrar, ADO or Entra are failing.
    pub timeout: Duration,
}

/// Runs the init container; the result is its exit code.
pub async fn run(settings: PrepareSettings) -> Result<u8> {
    registrar_url(&settings.registrar)?;
    pinned_client(&settings)?;
    let version = listener_version(&settings.agent_dir).await?;
    register_pod(&settings, version).await?;
    Ok(0)
}

/// What [`run`] does once it knows the listener's version: the key, the registration and the
/// three files. Public for callers that run no listener binary to ask (the demo's pods).
pub async fn register_pod(
    settings: &PrepareSettings,
    version: String,
) -> Result<RegistrationAnswer> {
    let started = Instant::now();
    let url = registrar_url(&settings.registrar)?;
    // The pod's emptyDir exists; made here (owner only) when run outside a pod.
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.config_dir)
            .map_err(|e| {
                Error::Config(format!(
                    "--config-dir {}: {e}",
                    settings.config_dir.display()
                ))
            })?;
    }
    let (key, created) = credentials::load_or_create_key(&settings.config_dir)?;
    tracing::info!(
        new_key = created,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "agent key ready"
    );
    let request = RegistrationRequest {
        public_key: key.public_key(),
        version,
        os_description: os_description(),
    };
    drop(key);
    let answer = register(&url, settings, &request).await?;
    credentials::write_registration(
        &settings.config_dir,
        &AgentSettingsFile {
            agent_id: answer.agent_id,
            agent_name: answer.agent_name.clone(),
            pool_id: answer.pool_id,
            pool_name: answer.pool_name.clone(),
            server_url: answer.server_url.clone(),
            work_folder: settings.work.clone(),
        },
        &CredentialsFile::oauth(&answer.client_id, &answer.authorization_url),
    )?;
    tracing::info!(
        agent = %answer.agent_name,
        agent_id = answer.agent_id,
        pool = %answer.pool_name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "agent registered; files written"
    );
    Ok(answer)
}

/// The registrations URL: HTTPS only (the token must not cross the network in clear).
pub(crate) fn registrar_url(base: &str) -> Result<url::Url> {
    let url = url::Url::parse(base.trim())
        .map_err(|e| Error::Config(format!("--registrar {base:?}: {e}")))?;
    if url.scheme() != "https" {
        return Err(Error::Config(format!(
            "--registrar {base:?}: must be https:// (the pod's token is sent to it)"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(Error::Config(format!(
            "--registrar {base:?}: a base URL only (no query, fragment or user)"
        )));
    }
    let mut url = url;
    let path = format!("{}{REGISTRATIONS_PATH}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// Posts the request, retrying what may pass (the registrar, ADO or Entra unavailable) until
/// `--timeout`; a refusal (401, 403, 409, 400) ends at once with the registrar's reason.
async fn register(
    url: &url::Url,
    settings: &PrepareSettings,
    request: &RegistrationRequest,
) -> Result<RegistrationAnswer> {
    let deadline = Instant::now() + settings.timeout;
    let mut delay = Duration::from_millis(250);
    loop {
        // Each attempt reads the files again: the kubelet rotates the projected token, and
        // updates the mounted CA when the registrar's certificate was renewed.
        let http = pinned_client(settings)?;
        let token = std::fs::read_to_string(&settings.token_file).map_err(|e| {
            Error::Config(format!(
                "--registrar-token-file {}: {e}",
                settings.token_file.display()
            ))
        })?;
        let sent = http
            .post(url.clone())
            .bearer_auth(token.trim())
            .json(request)
            .send()
            .await;
        drop(token);
        let retryable = match sent {
            Ok(response) if response.status().is_success() => {
                return response
                    .json::<RegistrationAnswer>()
                    .await
                    .map_err(|e| Error::Agent(format!("the registrar's answer: {e}")));
            }
            Ok(response) => {
                let status = response.status();
                let refusal = response
                    .json::<crate::registrar::wire::Refusal>()
                    .await
                    .map(|r| format!("{}: {}", r.reason, r.message))
                    .unwrap_or_else(|_| "no reason given".into());
                let message = format!(
                    "the registrar refused (HTTP {}): {refusal}",
                    status.as_u16()
                );
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(Error::Agent(message));
                }
                message
            }
            // A certificate the CA file does not vouch for fails here, before any request.
            Err(e) if is_certificate_error(&e) => format!(
                "the registrar at {url} is not trusted by --registrar-ca-file (no token was sent): {e}"
            ),
            Err(e) => format!("cannot reach the registrar at {url}: {e}"),
        };
        if Instant::now() + delay > deadline {
            return Err(Error::Agent(format!(
                "giving up after {:?}: {retryable}",
                settings.timeout
            )));
        }
        tracing::warn!(error = %retryable, retry_in = ?delay, "registration failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// A client trusting only the CA file, read now.
fn pinned_client(settings: &PrepareSettings) -> Result<reqwest::Client> {
    let ca = std::fs::read(&settings.ca_file).map_err(|e| {
        Error::Config(format!(
            "--registrar-ca-file {}: {e}",
            settings.ca_file.display()
        ))
    })?;
    crate::auth::pinned_http_client(&ca, "--registrar-ca-file")
}

/// Whether the TLS handshake failed on the server's certificate: rustls' own error, found
/// along the source chain. hyper wraps it in `io::Error`s, whose `source` skips the error they
/// hold, so each of those is opened with `get_ref`.
pub(crate) fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let mut held = Some(err);
        while let Some(inner) = held {
            if let Some(rustls::Error::InvalidCertificate(_)) = inner.downcast_ref() {
                return true;
            }
            held = inner
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .map(|e| e as &(dyn std::error::Error + 'static));
        }
        source = err.source();
    }
    false
}

/// `bin/Agent.Listener --version`, as `config.sh` reports the version it registers.
async fn listener_version(agent_dir: &std::path::Path) -> Result<String> {
    let listener = agent_dir.join("bin/Agent.Listener");
    let output = tokio::process::Command::new(&listener)
        .arg("--version")
        .env_clear()
        .current_dir(agent_dir)
        .output()
        .await
        .map_err(|e| {
            Error::Agent(format!(
                "{} --version: {e} (is the agent in AZP_AGENT_DIR?)",
                listener.display()
            ))
        })?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success()
        || version.is_empty()
        || !version.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(Error::Agent(format!(
            "{} --version printed {version:?}: not an agent version",
            listener.display()
        )));
    }
    Ok(version)
}

/// What .NET's `RuntimeInformation.OSDescription` says on Linux: `uname -srv`.
fn os_description() -> String {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let text = format!(
        "{} {} {}",
        read("ostype"),
        read("osrelease"),
        read("version")
    );
    let text: String = text
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect();
    if text.is_empty() {
        "Linux".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registrar_is_an_https_base_url() {
        assert_eq!(
            registrar_url("https://ado-scaler.ado-scaler.svc:9443")
                .unwrap()
                .as_str(),
            "https://ado-scaler.ado-scaler.svc:9443/v1/registrations"
        );
        assert_eq!(
            registrar_url("https://r.example/base/").unwrap().as_str(),
            "https://r.example/base/v1/registrations"
        );
        for bad in [
            "http://ado-scaler:9443",
            "https://r?x=1",
            "https://u@r",
            "not a url",
        ] {
            let err = registrar_url(bad).unwrap_err().to_string();
            assert!(err.contains("--registrar"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_os_description_is_one_printable_line() {
        let os = os_description();
        assert!(os.starts_with("Linux"), "{os}");
        assert!(os.len() <= 256 && !os.chars().any(char::is_control));
    }
}
