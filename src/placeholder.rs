//! Placeholder registrations: ADO fails a job at once when no registered agent, online or
//! offline, satisfies its demands, so a pool scaled to zero needs one registration that
//! stays. For each trigger that wants one, the scaler keeps an offline agent registered with
//! the trigger's capabilities: created when the trigger is first seen, checked every
//! `--placeholder-interval`, re-created if deleted, replaced if its capabilities drifted.
//! It never opens a session, so ADO never gives it a job.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    ado::{
        AdoClient, OrgUrl,
        models::{Agent, AgentAuthorization},
    },
    count::Capabilities,
    error::{Error, Result},
    poller::PoolKey,
    telemetry::PoolLabels,
};

/// The agent version placeholders report unless the trigger says `agentVersion`: the one
/// the agent image is built with.
pub const DEFAULT_AGENT_VERSION: &str = "4.261.0";

/// What one trigger wants registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceholderSpec {
    pub name: String,
    pub agent_version: String,
    /// Sent as `userCapabilities`.
    pub capabilities: Capabilities,
}

impl PlaceholderSpec {
    /// `{prefix}placeholder`, or `ado-scaler-placeholder-<8 hex of SHA-256 of the
    /// capabilities>` so that triggers without a prefix but with different capabilities each
    /// get their own.
    pub fn new(prefix: Option<&str>, agent_version: &str, capabilities: Capabilities) -> Self {
        let name = match prefix {
            Some(prefix) => format!("{prefix}placeholder"),
            None => {
                let digest = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    capabilities.canonical().as_bytes(),
                );
                let hex: String = digest.as_ref()[..4]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("ado-scaler-placeholder-{hex}")
            }
        };
        Self {
            name,
            agent_version: agent_version.to_owned(),
            capabilities,
        }
    }

    /// The system capabilities the real agent reports about itself
    /// (`AgentCapabilitiesProvider`), those a placeholder can know.
    pub fn system_capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::reported_by_our_agents(&self.agent_version);
        caps.insert("Agent.Name", &self.name);
        caps
    }

    /// The registration body, as `config.sh` sends it, with a fresh public key.
    pub fn registration(&self) -> Result<Agent> {
        Ok(Agent {
            name: self.name.clone(),
            version: Some(self.agent_version.clone()),
            enabled: Some(true),
            os_description: Some("Linux (ado-scaler placeholder: never runs jobs)".into()),
            authorization: Some(AgentAuthorization::fresh().map_err(Error::Config)?),
            system_capabilities: self.system_capabilities().to_map(),
            user_capabilities: self.capabilities.to_map(),
            ..Agent::default()
        })
    }

    /// Whether a registration listed with its capabilities is what this spec wants.
    fn is_met_by(&self, agent: &Agent) -> bool {
        let user: Capabilities = agent.user_capabilities.iter().collect();
        let system: Capabilities = agent.system_capabilities.iter().collect();
        agent.enabled != Some(false)
            && user.same_as(&self.capabilities)
            && system.get("Agent.Version") == Some(self.agent_version.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub org: String,
    pub pool: String,
    pub reason: &'static str,
}

/// `ado_scaler_placeholders` and `ado_scaler_placeholder_errors_total`.
#[derive(Debug, Default)]
pub struct PlaceholderMetrics {
    pub kept: Family<PoolLabels, Gauge>,
    pub errors: Family<ErrorLabels, Counter>,
}

impl PlaceholderMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        registry.register(
            "placeholders",
            "Placeholder registrations the scaler keeps in a pool, confirmed at the last check",
            metrics.kept.clone(),
        );
        registry.register(
            "placeholder_errors",
            "Failed placeholder checks, by reason (forbidden: the identity lacks the pool's Administrator role)",
            metrics.errors.clone(),
        );
        metrics
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaceholderSettings {
    /// How often each placeholder is checked.
    pub interval: Duration,
    /// A placeholder no trigger asked for this long is no longer checked (and left registered).
    pub forget_after: Duration,
}

impl Default for PlaceholderSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            forget_after: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    org: OrgUrl,
    pool_id: u32,
    name: String,
}

struct Kept {
    spec: PlaceholderSpec,
    /// The trigger whose spec this is; another trigger wanting other capabilities is refused.
    owner: String,
    conflict_logged: bool,
    forbidden_logged: bool,
    last_wanted: Instant,
    registered: bool,
    labels: PoolLabels,
}

/// Keeps every wanted placeholder registered. Cheap to clone.
#[derive(Clone)]
pub struct Placeholders {
    inner: Arc<Inner>,
}

struct Inner {
    ado: AdoClient,
    settings: PlaceholderSettings,
    metrics: Arc<PlaceholderMetrics>,
    kept: Mutex<HashMap<Key, Kept>>,
    shutdown: CancellationToken,
}

/// What one check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Present,
    Created,
    Replaced,
}

impl Placeholders {
    pub fn new(
        ado: AdoClient,
        settings: PlaceholderSettings,
        metrics: Arc<PlaceholderMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                ado,
                settings,
                metrics,
                kept: Mutex::default(),
                shutdown,
            }),
        }
    }

    /// Records that `trigger` wants `spec` in the pool; the first want starts its keeper.
    pub fn want(&self, pool: &PoolKey, pool_label: &str, trigger: &str, spec: &PlaceholderSpec) {
        let key = Key {
            org: pool.org.clone(),
            pool_id: pool.pool_id,
            name: spec.name.clone(),
        };
        let mut kept = self.inner.kept.lock().expect("placeholders poisoned");
        if let Some(entry) = kept.get_mut(&key) {
            entry.last_wanted = Instant::now();
            if entry.spec != *spec {
                if entry.owner == trigger {
                    // The trigger's metadata changed: the next check replaces the registration.
                    entry.spec = spec.clone();
                } else if !entry.conflict_logged {
                    entry.conflict_logged = true;
                    tracing::warn!(
                        placeholder = spec.name, kept_for = entry.owner, refused_for = trigger,
                        kept = %entry.spec.capabilities, refused = %spec.capabilities,
                        "two triggers want the same placeholder with different capabilities; give each ScaledJob its own agentNamePrefix"
                    );
                }
            }
            return;
        }
        kept.insert(
            key.clone(),
            Kept {
                spec: spec.clone(),
                owner: trigger.to_owned(),
                conflict_logged: false,
                forbidden_logged: false,
                last_wanted: Instant::now(),
                registered: false,
                labels: PoolLabels {
                    org: pool.org.to_string(),
                    pool: pool_label.to_owned(),
                },
            },
        );
        tokio::spawn(keep(self.inner.clone(), key));
    }
}

/// Makes sure the registration exists with the wanted capabilities.
pub async fn ensure(
    ado: &AdoClient,
    org: &OrgUrl,
    pool_id: u32,
    spec: &PlaceholderSpec,
) -> Result<Checked> {
    let found = ado
        .agents_named_with_capabilities(org, pool_id, &spec.name)
        .await?;
    let registration = || async {
        let spec = spec.clone();
        // RSA key generation takes a while; keep it off the async workers.
        tokio::task::spawn_blocking(move || spec.registration())
            .await
            .map_err(|e| Error::Config(format!("key generation: {e}")))?
    };
    match found.first() {
        Some(agent) if spec.is_met_by(agent) => Ok(Checked::Present),
        Some(agent) => {
            let mut replacement = registration().await?;
            replacement.id = agent.id;
            ado.replace_agent(org, pool_id, &replacement).await?;
            Ok(Checked::Replaced)
        }
        // 409: created meanwhile by someone else (another replica); the next check compares it.
        None => match ado.add_agent(org, pool_id, &registration().await?).await? {
            Some(_) => Ok(Checked::Created),
            None => Ok(Checked::Present),
        },
    }
}

async fn keep(inner: Arc<Inner>, key: Key) {
    loop {
        let Some(spec) = inner
            .kept
            .lock()
            .expect("placeholders poisoned")
            .get(&key)
            .map(|k| k.spec.clone())
        else {
            return;
        };
        let result = ensure(&inner.ado, &key.org, key.pool_id, &spec).await;
        record(&inner, &key, &spec, result);
        tokio::select! {
            () = tokio::time::sleep(inner.settings.interval) => {}
            () = inner.shutdown.cancelled() => return,
        }
        let mut kept = inner.kept.lock().expect("placeholders poisoned");
        let forgotten = kept
            .get(&key)
            .is_none_or(|k| k.last_wanted.elapsed() > inner.settings.forget_after);
        if forgotten {
            if let Some(entry) = kept.remove(&key) {
                tracing::info!(
                    placeholder = key.name,
                    pool = entry.labels.pool,
                    "no trigger wants this placeholder any more; no longer checking it (the registration stays)"
                );
            }
            update_gauge(&inner, &kept, &key);
            return;
        }
    }
}

fn record(inner: &Inner, key: &Key, spec: &PlaceholderSpec, result: Result<Checked>) {
    let mut kept = inner.kept.lock().expect("placeholders poisoned");
    let Some(entry) = kept.get_mut(key) else {
        return;
    };
    match result {
        Ok(checked) => {
            entry.registered = true;
            entry.forbidden_logged = false;
            if checked != Checked::Present {
                tracing::info!(placeholder = spec.name, pool = entry.labels.pool, capabilities = %spec.capabilities, action = ?checked, "placeholder registration");
            }
        }
        Err(err) => {
            entry.registered = false;
            let reason = err.reason();
            inner
                .metrics
                .errors
                .get_or_create(&ErrorLabels {
                    org: entry.labels.org.clone(),
                    pool: entry.labels.pool.clone(),
                    reason,
                })
                .inc();
            if reason == "forbidden" {
                if !entry.forbidden_logged {
                    entry.forbidden_logged = true;
                    tracing::error!(
                        placeholder = spec.name,
                        pool = entry.labels.pool,
                        "cannot register the placeholder: the scaler's identity needs the Administrator role on this agent pool \
                         (Organization settings > Agent pools > pool > Security). Until then a job queued while no agent runs fails with \
                         \"No agent found in pool\". Scaling values are still served; set placeholder: \"false\" if you keep a registration yourself"
                    );
                }
            } else {
                tracing::warn!(placeholder = spec.name, pool = entry.labels.pool, error = %err, "placeholder check failed; retrying at the next interval");
            }
        }
    }
    update_gauge(inner, &kept, key);
}

fn update_gauge(inner: &Inner, kept: &HashMap<Key, Kept>, key: &Key) {
    let same_pool = |k: &Key| k.org == key.org && k.pool_id == key.pool_id;
    let registered = kept
        .iter()
        .filter(|(k, v)| same_pool(k) && v.registered)
        .count();
    let labels = kept
        .iter()
        .find(|(k, _)| same_pool(k))
        .map(|(_, v)| v.labels.clone());
    if let Some(labels) = labels {
        inner
            .metrics
            .kept
            .get_or_create(&labels)
            .set(registered as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_prefix_or_the_capabilities() {
        let caps = Capabilities::parse("docker,java=17").unwrap();
        let a = PlaceholderSpec::new(Some("team-a-"), "4.261.0", caps.clone());
        assert_eq!(a.name, "team-a-placeholder");
        let b = PlaceholderSpec::new(None, "4.261.0", caps.clone());
        let c = PlaceholderSpec::new(
            None,
            "4.261.0",
            Capabilities::parse("java=17,DOCKER").unwrap(),
        );
        let d = PlaceholderSpec::new(
            None,
            "4.261.0",
            Capabilities::parse("docker,java=21").unwrap(),
        );
        assert!(b.name.starts_with("ado-scaler-placeholder-"));
        assert_eq!(b.name.len(), "ado-scaler-placeholder-".len() + 8);
        assert!(b.name[23..].bytes().all(|c| c.is_ascii_hexdigit()));
        // Stable across runs and agent versions: a fixed digest of the capability list.
        assert_eq!(b.name, PlaceholderSpec::new(None, "9.0", caps).name);
        // sha256("DOCKER=,JAVA=17"), by sha256sum.
        assert_eq!(b.name, "ado-scaler-placeholder-390cc09b");
        assert_eq!(b.name, c.name, "the spelling of names does not matter");
        assert_ne!(b.name, d.name);
    }

    #[test]
    fn a_registration_is_what_config_sh_sends() {
        let spec = PlaceholderSpec::new(
            Some("x-"),
            "4.261.0",
            Capabilities::parse("docker").unwrap(),
        );
        let agent = spec.registration().unwrap();
        let json = serde_json::to_value(&agent).unwrap();
        assert_eq!(json["name"], "x-placeholder");
        assert_eq!(json["version"], "4.261.0");
        assert_eq!(json["enabled"], true);
        assert_eq!(json["systemCapabilities"]["Agent.Version"], "4.261.0");
        assert_eq!(json["systemCapabilities"]["Agent.OS"], "Linux");
        assert_eq!(json["systemCapabilities"]["Agent.Name"], "x-placeholder");
        assert_eq!(json["userCapabilities"]["docker"], "");
        let key = &json["authorization"]["publicKey"];
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            b64.decode(key["exponent"].as_str().unwrap()).unwrap(),
            [1, 0, 1]
        );
        assert_eq!(
            b64.decode(key["modulus"].as_str().unwrap()).unwrap().len(),
            256
        );
        assert!(json.get("id").is_none_or(|id| id == 0));
        // A fresh key every time.
        assert_ne!(
            serde_json::to_value(spec.registration().unwrap()).unwrap()["authorization"],
            json["authorization"]
        );
    }

    #[test]
    fn drift_is_noticed() {
        let spec = PlaceholderSpec::new(
            Some("x-"),
            "4.261.0",
            Capabilities::parse("docker,java=17").unwrap(),
        );
        let mut listed = spec.registration().unwrap();
        listed.authorization = None;
        assert!(spec.is_met_by(&listed));
        let mut other_case = listed.clone();
        other_case.user_capabilities = [("DOCKER", ""), ("Java", "17")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(
            spec.is_met_by(&other_case),
            "names compare case-insensitively"
        );
        let mut changed = listed.clone();
        changed.user_capabilities.insert("java".into(), "21".into());
        assert!(!spec.is_met_by(&changed));
        let mut old = listed.clone();
        old.system_capabilities
            .insert("Agent.Version".into(), "3.0.0".into());
        assert!(!spec.is_met_by(&old));
        let mut disabled = listed.clone();
        disabled.enabled = Some(false);
        assert!(!spec.is_met_by(&disabled));
    }
}
