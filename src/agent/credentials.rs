//! The three files `config.sh` leaves in the agent directory, written by us instead, so that a
//! pod whose key never leaves it can be registered by someone else (the scaler's registrar)
//! and still `run --once` unchanged. The formats are the real agent's (REALITY.md, "What
//! `config.sh` leaves behind": `ConfigurationManager.cs`, `RSAFileKeyManager.cs`,
//! `OAuthCredential.cs`): the listener checks no hash or machine id, so files written by another
//! program work, and a field named differently makes its session fail.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{
    ado::models::AgentPublicKey,
    error::{Error, Result},
};

/// `.agent`: who the agent is and where it connects.
pub const SETTINGS_FILE: &str = ".agent";
/// `.credentials`: how the listener gets its session token.
pub const CREDENTIALS_FILE: &str = ".credentials";
/// `.credentials_rsaparams`: the private key (0600).
pub const KEY_FILE: &str = ".credentials_rsaparams";
/// The three files, in the order [`write_all`] writes them (the key first: a retry finds it).
pub const FILES: [&str; 3] = [KEY_FILE, SETTINGS_FILE, CREDENTIALS_FILE];

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `RSAParametersSerializable`: the private key as .NET's `RSAParameters`, each member the
/// base64 of big-endian bytes, `d` as long as the modulus and the CRT members half of it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RsaParams {
    pub d: String,
    pub dp: String,
    pub dq: String,
    pub exponent: String,
    pub inverse_q: String,
    pub modulus: String,
    pub p: String,
    pub q: String,
}

/// A private key never reaches a log.
impl std::fmt::Debug for RsaParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaParams")
            .field("modulus", &format_args!("{} bytes", self.modulus_len()))
            .finish_non_exhaustive()
    }
}

impl RsaParams {
    /// A fresh RSA-2048 key (e = 65537), made by aws-lc and read back from its PKCS#8 form.
    pub fn generate() -> Result<Self> {
        use aws_lc_rs::{
            encoding::AsDer,
            rsa::{KeyPair, KeySize},
        };
        let failed = |what: &str| Error::Agent(format!("cannot generate the agent's key: {what}"));
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| failed("aws-lc"))?;
        let pkcs8 = pair.as_der().map_err(|_| failed("PKCS#8 encoding"))?;
        Self::from_pkcs8(pkcs8.as_ref()).map_err(|e| failed(&e))
    }

    fn from_pkcs8(der: &[u8]) -> std::result::Result<Self, String> {
        let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| e.to_string())?;
        let key = pkcs1::RsaPrivateKey::try_from(info.private_key).map_err(|e| e.to_string())?;
        let modulus = key.modulus.as_bytes();
        let half = modulus.len().div_ceil(2);
        let padded = |bytes: &[u8], len: usize| {
            let mut out = vec![0u8; len.saturating_sub(bytes.len())];
            out.extend_from_slice(bytes);
            B64.encode(out)
        };
        Ok(Self {
            d: padded(key.private_exponent.as_bytes(), modulus.len()),
            dp: padded(key.exponent1.as_bytes(), half),
            dq: padded(key.exponent2.as_bytes(), half),
            exponent: B64.encode(key.public_exponent.as_bytes()),
            inverse_q: padded(key.coefficient.as_bytes(), half),
            modulus: B64.encode(modulus),
            p: padded(key.prime1.as_bytes(), half),
            q: padded(key.prime2.as_bytes(), half),
        })
    }

    /// What the registration carries: the public half only.
    pub fn public_key(&self) -> AgentPublicKey {
        AgentPublicKey {
            exponent: self.exponent.clone(),
            modulus: self.modulus.clone(),
        }
    }

    fn modulus_len(&self) -> usize {
        B64.decode(&self.modulus).map_or(0, |m| m.len())
    }
}

/// `.agent` (`AgentSettings`): the members `run` needs; the real file has optional others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSettingsFile {
    pub agent_id: u32,
    pub agent_name: String,
    pub pool_id: u32,
    pub pool_name: String,
    pub server_url: String,
    pub work_folder: String,
}

/// `.credentials` (`CredentialData`): the OAuth scheme with the registration's client id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsFile {
    pub scheme: String,
    pub data: OAuthData,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthData {
    pub client_id: String,
    pub authorization_url: String,
    pub oauth_endpoint_url: String,
}

impl CredentialsFile {
    /// What `config.sh` writes on Azure DevOps Services: the token endpoint is the
    /// authorization URL itself.
    pub fn oauth(client_id: &str, authorization_url: &str) -> Self {
        Self {
            scheme: "OAuth".into(),
            data: OAuthData {
                client_id: client_id.into(),
                authorization_url: authorization_url.into(),
                oauth_endpoint_url: authorization_url.into(),
            },
        }
    }
}

/// The key kept in `dir` by an earlier attempt (a restarted init container registers the same
/// key again and gets the same answer), else a new one written there first (0600).
pub fn load_or_create_key(dir: &Path) -> Result<(RsaParams, bool)> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let key = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Agent(format!(
                    "{} is not an agent key ({e}): delete it to start over",
                    path.display()
                ))
            })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = RsaParams::generate()?;
            write_private(&path, &serde_json::to_vec(&key).expect("key serialises"))?;
            Ok((key, true))
        }
        // Not "missing": a key that may be there is never replaced by a new one.
        Err(e) => Err(Error::Agent(format!(
            "{}: cannot read the agent key: {e}",
            path.display()
        ))),
    }
}

/// Writes `.agent` and `.credentials` beside the key.
pub fn write_registration(
    dir: &Path,
    settings: &AgentSettingsFile,
    credentials: &CredentialsFile,
) -> Result<()> {
    for (name, bytes) in [
        (SETTINGS_FILE, serde_json::to_vec_pretty(settings)),
        (CREDENTIALS_FILE, serde_json::to_vec_pretty(credentials)),
    ] {
        let path = dir.join(name);
        let bytes = bytes.expect("registration files serialise");
        write_private(&path, &bytes)?;
    }
    Ok(())
}

/// Copies the three files from `from` into the agent directory `to` (0600), after checking
/// that each is there and parses: the listener would otherwise fail with a less clear error.
pub fn install(from: &Path, to: &Path) -> Result<AgentSettingsFile> {
    let read = |name: &str| -> Result<(PathBuf, Vec<u8>)> {
        let path = from.join(name);
        let bytes = std::fs::read(&path).map_err(|e| file_error(&path, e))?;
        Ok((path, bytes))
    };
    let (key_path, key) = read(KEY_FILE)?;
    let (settings_path, settings) = read(SETTINGS_FILE)?;
    let (credentials_path, credentials) = read(CREDENTIALS_FILE)?;
    let invalid = |path: &Path, e: serde_json::Error| {
        Error::Agent(format!(
            "{} is not what `ado-scaler agent prepare` writes: {e}",
            path.display()
        ))
    };
    let _: RsaParams = serde_json::from_slice(&key).map_err(|e| invalid(&key_path, e))?;
    let parsed: AgentSettingsFile =
        serde_json::from_slice(&settings).map_err(|e| invalid(&settings_path, e))?;
    let _: CredentialsFile =
        serde_json::from_slice(&credentials).map_err(|e| invalid(&credentials_path, e))?;
    for (name, bytes) in [
        (KEY_FILE, &key),
        (SETTINGS_FILE, &settings),
        (CREDENTIALS_FILE, &credentials),
    ] {
        let path = to.join(name);
        // Left from an earlier attempt in this container: replaced, never appended to.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Agent(format!(
                    "{}: cannot replace it: {e}",
                    path.display()
                )));
            }
        }
        write_private(&path, bytes)?;
    }
    Ok(parsed)
}

/// A new file only its owner can read, written whole.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(path, e))
}

fn file_error(path: &Path, e: std::io::Error) -> Error {
    Error::Agent(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn what_is_in_the_way_of_a_file_is_an_error_not_replaced() {
        let dir = std::env::temp_dir().join(format!("ado-scaler-creds-way-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A directory where the key should be: not read, and no new key is made over it.
        std::fs::create_dir_all(dir.join(KEY_FILE)).unwrap();
        let err = load_or_create_key(&dir).unwrap_err().to_string();
        assert!(err.contains("cannot read the agent key"), "{err}");
        // Installing over a directory in the agent's place: refused, not written through.
        let from = dir.join("from");
        let to = dir.join("to");
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(to.join(KEY_FILE)).unwrap();
        let (key, _) = load_or_create_key(&from).unwrap();
        drop(key);
        write_registration(
            &from,
            &AgentSettingsFile {
                agent_id: 1,
                agent_name: "a".into(),
                pool_id: 1,
                pool_name: "p".into(),
                server_url: "https://dev.azure.com/o/".into(),
                work_folder: "_work".into(),
            },
            &CredentialsFile::oauth("c", "https://vstoken.dev.azure.com/x"),
        )
        .unwrap();
        let err = install(&from, &to).unwrap_err().to_string();
        assert!(err.contains("cannot replace it"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn decoded(b64: &str) -> Vec<u8> {
        B64.decode(b64).expect("base64")
    }

    #[test]
    fn a_generated_key_has_the_real_agents_shape() {
        let key = RsaParams::generate().unwrap();
        assert_eq!(decoded(&key.modulus).len(), 256, "RSA-2048");
        assert_eq!(decoded(&key.exponent), [1, 0, 1], "e = 65537");
        assert_eq!(decoded(&key.d).len(), 256, "d padded to the modulus");
        for half in [&key.p, &key.q, &key.dp, &key.dq, &key.inverse_q] {
            assert_eq!(decoded(half).len(), 128, "CRT members padded to half");
        }
        let json = serde_json::to_value(&key).unwrap();
        let mut names: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            ["d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q"]
        );
        assert_eq!(key.public_key().modulus, key.modulus);
        assert_eq!(key.public_key().exponent, key.exponent);
        // p · q = n: the members belong together.
        assert_ne!(RsaParams::generate().unwrap().modulus, key.modulus);
    }

    #[test]
    fn debug_shows_no_private_member() {
        let key = RsaParams::generate().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("256 bytes"), "{shown}");
        for secret in [&key.d, &key.p, &key.q, &key.dp, &key.dq, &key.inverse_q] {
            assert!(!shown.contains(secret.as_str()));
        }
    }

    #[test]
    fn files_are_written_private_in_the_agents_format_and_installed() {
        let dir = tempdir("written");
        let (key, created) = load_or_create_key(&dir).unwrap();
        assert!(created);
        let (again, created) = load_or_create_key(&dir).unwrap();
        assert!(!created, "a retry reuses the key it registered");
        assert_eq!(again, key);
        let settings = AgentSettingsFile {
            agent_id: 7,
            agent_name: "agent-abc".into(),
            pool_id: 3,
            pool_name: "linux".into(),
            server_url: "https://dev.azure.com/contoso/".into(),
            work_folder: "_work".into(),
        };
        let credentials = CredentialsFile::oauth("client", "https://vssps/token");
        write_registration(&dir, &settings, &credentials).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(CREDENTIALS_FILE)).unwrap()).unwrap();
        assert_eq!(json["scheme"], "OAuth");
        assert_eq!(json["data"]["clientId"], "client");
        assert_eq!(json["data"]["authorizationUrl"], "https://vssps/token");
        assert_eq!(json["data"]["oauthEndpointUrl"], "https://vssps/token");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(SETTINGS_FILE)).unwrap()).unwrap();
        for field in [
            "agentId",
            "agentName",
            "poolId",
            "poolName",
            "serverUrl",
            "workFolder",
        ] {
            assert!(!json[field].is_null(), "{field}");
        }

        let agent_dir = tempdir("installed");
        std::fs::write(agent_dir.join(SETTINGS_FILE), "stale").unwrap();
        assert_eq!(install(&dir, &agent_dir).unwrap(), settings);
        for name in FILES {
            let path = agent_dir.join(name);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(dir.join(name)).unwrap()
            );
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }

        std::fs::write(dir.join(CREDENTIALS_FILE), "{}").unwrap();
        let err = install(&dir, &agent_dir).unwrap_err().to_string();
        assert!(err.contains(CREDENTIALS_FILE), "{err}");
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let err = install(&dir, &agent_dir).unwrap_err().to_string();
        assert!(err.contains(KEY_FILE), "{err}");
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ado-scaler-credentials-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
