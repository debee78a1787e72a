//! TLS for the registrar without cert-manager, as KEDA does for its own webhook and metrics
//! server: a CA and a serving certificate for the Service's names, made by whichever replica
//! starts first and kept in a Secret so that every replica serves the same; the CA
//! certificate is published in a ConfigMap in each agents' namespace, which the init
//! container mounts as its only trust root. A certificate near its end is replaced (CA and
//! all) when a replica starts.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, api::PostParams};

use crate::{
    error::{Error, Result},
    scaler::tls::TlsSettings,
};

/// The ConfigMap key (and the file name the init container reads).
pub const CA_KEY: &str = "ca.crt";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
/// When the serving certificate stops being valid (RFC 3339), and for which names.
const NOT_AFTER: &str = "ado-scaler.io/not-after";
const NAMES: &str = "ado-scaler.io/dns-names";

/// How long a made certificate lives, and how long before its end it is replaced.
const LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where the material lives and what it must cover.
#[derive(Debug, Clone)]
pub struct SelfManagedTls {
    /// The scaler's namespace (the Secret's).
    pub namespace: String,
    pub secret: String,
    pub config_map: String,
    /// The agents' namespaces: each gets the ConfigMap.
    pub ca_namespaces: Vec<String>,
    /// The Service's names the agents dial.
    pub dns_names: Vec<String>,
    /// Where the certificate and key are written for the TLS loader.
    pub dir: PathBuf,
    pub reload_interval: Duration,
}

impl SelfManagedTls {
    /// The names of Service `service` in `namespace`, as pods resolve them.
    pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
        ]
    }
}

/// The Secret's material, made or reused; files written; the CA published. The TLS settings
/// to serve with.
pub async fn ensure(client: &Client, settings: &SelfManagedTls) -> Result<TlsSettings> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let mut attempts = 0;
    let material = loop {
        attempts += 1;
        let current = secrets
            .get_opt(&settings.secret)
            .await
            .map_err(|e| api("read the registrar's TLS Secret", e))?;
        if let Some(found) = current.as_ref().and_then(|s| usable(s, settings)) {
            break found;
        }
        let made = Material::generate(&settings.dns_names)?;
        let secret = made.secret(settings, current.and_then(|s| s.metadata.resource_version));
        let written = match secret.metadata.resource_version {
            Some(_) => {
                secrets
                    .replace(&settings.secret, &PostParams::default(), &secret)
                    .await
            }
            None => secrets.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %settings.secret, names = ?settings.dns_names, "registrar certificate made");
                break made;
            }
            // Another replica wrote first: use what it wrote.
            Err(kube::Error::Api(status)) if status.code == 409 && attempts < 3 => continue,
            Err(e) => return Err(api("write the registrar's TLS Secret", e)),
        }
    };
    write_files(settings, &material)?;
    publish_ca(client, settings, &material.ca).await?;
    Ok(TlsSettings {
        cert: settings.dir.join(CERT_KEY),
        key: settings.dir.join(KEY_KEY),
        client_ca: None,
        reload_interval: settings.reload_interval,
    })
}

/// PEM texts.
struct Material {
    ca: String,
    cert: String,
    key: String,
    not_after: jiff::Timestamp,
}

impl Material {
    fn generate(names: &[String]) -> Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let failed = |e: rcgen::Error| Error::Config(format!("registrar certificate: {e}"));
        let now = time::OffsetDateTime::now_utc();
        let not_after = now + LIFETIME;
        let ca_key = KeyPair::generate().map_err(failed)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "ado-scaler registrar CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - Duration::from_secs(300);
        ca.not_after = not_after;
        let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().map_err(failed)?;
        let mut leaf = CertificateParams::new(names.to_vec()).map_err(failed)?;
        leaf.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.not_before = now - Duration::from_secs(300);
        leaf.not_after = not_after;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(failed)?;
        // The CA's key is not kept: a renewal makes a new CA, published the same way.
        Ok(Self {
            ca: ca_cert.pem(),
            cert: leaf_cert.pem(),
            key: leaf_key.serialize_pem(),
            not_after: jiff::Timestamp::from_second(not_after.unix_timestamp())
                .map_err(|e| Error::Config(format!("registrar certificate: {e}")))?,
        })
    }

    fn secret(&self, settings: &SelfManagedTls, resource_version: Option<String>) -> Secret {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(settings.secret.clone()),
                namespace: Some(settings.namespace.clone()),
                resource_version,
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".into(),
                    "ado-scaler".into(),
                )])),
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER.into(), self.not_after.to_string()),
                    (NAMES.into(), settings.dns_names.join(",")),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (CA_KEY.into(), bytes(&self.ca)),
                (CERT_KEY.into(), bytes(&self.cert)),
                (KEY_KEY.into(), bytes(&self.key)),
            ])),
            ..Secret::default()
        }
    }
}

/// The Secret's material if it covers our names and lives past the renewal margin.
fn usable(secret: &Secret, settings: &SelfManagedTls) -> Option<Material> {
    let annotations = secret.metadata.annotations.as_ref()?;
    let not_after: jiff::Timestamp = annotations.get(NOT_AFTER)?.parse().ok()?;
    let renew_at = not_after
        .checked_sub(jiff::SignedDuration::try_from(RENEW_BEFORE).ok()?)
        .ok()?;
    if jiff::Timestamp::now() >= renew_at
        || annotations.get(NAMES)? != &settings.dns_names.join(",")
    {
        return None;
    }
    let data = secret.data.as_ref()?;
    let text = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
    Some(Material {
        ca: text(CA_KEY)?,
        cert: text(CERT_KEY)?,
        key: text(KEY_KEY)?,
        not_after,
    })
}

/// The chain and key, for the reloading TLS loader (the key readable by us alone).
fn write_files(settings: &SelfManagedTls, material: &Material) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    std::fs::create_dir_all(&settings.dir)
        .map_err(|e| Error::Config(format!("{}: {e}", settings.dir.display())))?;
    for (name, text) in [
        (CERT_KEY, format!("{}{}", material.cert, material.ca)),
        (KEY_KEY, material.key.clone()),
    ] {
        let path = settings.dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// The CA certificate in a ConfigMap in each agents' namespace, created or brought up to date.
async fn publish_ca(client: &Client, settings: &SelfManagedTls, ca: &str) -> Result<()> {
    for namespace in &settings.ca_namespaces {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let current = maps
            .get_opt(&settings.config_map)
            .await
            .map_err(|e| api("read the registrar's CA ConfigMap", e))?;
        let data = BTreeMap::from([(CA_KEY.to_owned(), ca.to_owned())]);
        if current.as_ref().and_then(|m| m.data.as_ref()) == Some(&data) {
            continue;
        }
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(settings.config_map.clone()),
                namespace: Some(namespace.clone()),
                resource_version: current.and_then(|m| m.metadata.resource_version),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".into(),
                    "ado-scaler".into(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let written = match map.metadata.resource_version {
            Some(_) => {
                maps.replace(&settings.config_map, &PostParams::default(), &map)
                    .await
            }
            None => maps.create(&PostParams::default(), &map).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(namespace = %namespace, config_map = %settings.config_map, "registrar CA published")
            }
            // Another replica published at the same time: it has the same CA (same Secret).
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(api("write the registrar's CA ConfigMap", e)),
        }
    }
    Ok(())
}

fn api(what: &str, e: kube::Error) -> Error {
    crate::k8s::api_error(what, e)
}
