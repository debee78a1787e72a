//! Keeps KEDA's connection to the scaler built from the TLS material that exists now.
//!
//! KEDA resolves a trigger's TriggerAuthentication (the CA and client certificate of an
//! mTLS connection) only when it builds the ScaledJob's scalers, and it builds them again only
//! when the ScaledJob's generation changes: a ScaledJob reconciled before cert-manager wrote
//! the Secret keeps a connection without CA or client certificate for good, and one whose
//! client certificate was renewed keeps the old one until it expires (README: "mTLS and
//! install order", with the lines of KEDA's source). So for each ScaledJob named by
//! `--refresh-scaledjobs`, every `--refresh-interval`, this reads the TriggerAuthentications
//! its triggers name and the cert-manager Certificates of its namespace, and once everything
//! KEDA would read exists, writes a stamp of it into the ScaledJob's pod-template annotations
//! ([`plan`]). A new stamp is a spec change: KEDA reads the TriggerAuthentication again and
//! dials with what it finds. Only ScaledJobs with the `gradual` rollout are written, since
//! KEDA's default rollout deletes the running Jobs on any spec change.
//!
//! Every replica runs it: the stamp is a function of what it reads, so two replicas write the
//! same value and the second write changes nothing.

pub mod plan;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    k8s,
};
use plan::Decision;

/// `--refresh-scaledjobs`, `--refresh-interval`.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// `(namespace, name)` of each ScaledJob to keep refreshed.
    pub scaled_jobs: Vec<(String, String)>,
    pub interval: Duration,
    /// `None`: in-cluster (or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
}

impl RefreshSettings {
    /// Parses `NAMESPACE/NAME` items; errors name the flag.
    pub fn parse_scaled_jobs(
        items: &[String],
    ) -> std::result::Result<Vec<(String, String)>, String> {
        items
            .iter()
            .map(|item| item.trim())
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once('/') {
                Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {
                    Ok((ns.to_owned(), name.to_owned()))
                }
                _ => Err(format!(
                    "--refresh-scaledjobs: `{item}` is not NAMESPACE/NAME of a ScaledJob"
                )),
            })
            .collect()
    }
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub namespace: String,
    pub scaledjob: String,
    pub result: &'static str,
}

/// `ado_scaler_scaledjob_refreshes_total{namespace,scaledjob,result}`.
#[derive(Debug, Default)]
pub struct RefreshMetrics {
    pub checks: Family<RefreshLabels, Counter>,
}

impl RefreshMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        registry.register(
            "scaledjob_refreshes",
            "Checks of a --refresh-scaledjobs ScaledJob, by result: refreshed (a new stamp made \
             KEDA read its TriggerAuthentication again), unchanged, waiting (a \
             TriggerAuthentication or Certificate not there yet), not_gradual (not written: \
             KEDA would delete running Jobs), no_authentication, error",
            metrics.checks.clone(),
        );
        metrics
    }

    fn count(&self, (namespace, name): &(String, String), result: &'static str) {
        self.checks
            .get_or_create(&RefreshLabels {
                namespace: namespace.clone(),
                scaledjob: name.clone(),
                result,
            })
            .inc();
    }
}

const RESULTS: [&str; 6] = [
    "refreshed",
    "unchanged",
    "waiting",
    "not_gradual",
    "no_authentication",
    "error",
];

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The three kinds it reads, with the rights deploy/mtls grants: `get`/`patch` on the named
/// ScaledJobs, `get` on TriggerAuthentications, `list` on Certificates.
struct Resources {
    scaled_jobs: ApiResource,
    auths: ApiResource,
    certificates: ApiResource,
}

impl Resources {
    fn new() -> Self {
        Self {
            scaled_jobs: resource("keda.sh", "v1alpha1", "ScaledJob", "scaledjobs"),
            auths: resource(
                "keda.sh",
                "v1alpha1",
                "TriggerAuthentication",
                "triggerauthentications",
            ),
            certificates: resource("cert-manager.io", "v1", "Certificate", "certificates"),
        }
    }
}

/// Connects to the Kubernetes API (a configuration error fails here, at startup), then
/// checks in the background until `stop`.
pub async fn start(
    settings: RefreshSettings,
    metrics: Arc<RefreshMetrics>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let client = k8s::client(settings.kubeconfig.as_deref()).await?;
    for target in &settings.scaled_jobs {
        for result in RESULTS {
            metrics
                .checks
                .get_or_create(&RefreshLabels {
                    namespace: target.0.clone(),
                    scaledjob: target.1.clone(),
                    result,
                })
                .inc_by(0);
        }
    }
    tracing::info!(scaledjobs = ?settings.scaled_jobs, interval = ?settings.interval, "keeping KEDA's trigger TLS current");
    Ok(tokio::spawn(run(settings, client, metrics, stop)))
}

/// Checks every ScaledJob each interval, from the first tick, until `stop`.
pub async fn run(
    settings: RefreshSettings,
    client: Client,
    metrics: Arc<RefreshMetrics>,
    stop: CancellationToken,
) {
    let resources = Resources::new();
    // What was last said of each ScaledJob: a state is logged when it starts, not every tick.
    let mut said: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for target in &settings.scaled_jobs {
            let (result, message) = match check(&client, &resources, target).await {
                Ok((result, message)) => (result, message),
                Err(e) => ("error", e.to_string()),
            };
            metrics.count(target, result);
            if said.get(target) != Some(&message) {
                let (namespace, name) = target;
                match result {
                    "error" | "not_gradual" => {
                        tracing::warn!(%namespace, scaledjob = %name, result, "{message}");
                    }
                    _ => tracing::info!(%namespace, scaledjob = %name, result, "{message}"),
                }
                said.insert(target.clone(), message);
            }
        }
    }
}

/// Reads what KEDA would read for one ScaledJob, decides, and writes a new stamp if due.
/// The result label and a sentence saying what happened.
async fn check(
    client: &Client,
    resources: &Resources,
    (namespace, name): &(String, String),
) -> Result<(&'static str, String)> {
    let api = |r: &ApiResource| Api::<DynamicObject>::namespaced_with(client.clone(), namespace, r);
    let scaled_jobs = api(&resources.scaled_jobs);
    let scaled_job = scaled_jobs
        .get_opt(name)
        .await
        .map_err(|e| k8s::api_error(&format!("get ScaledJob {namespace}/{name}"), e))?
        .ok_or_else(|| Error::Kubernetes(format!("ScaledJob {namespace}/{name} not found")))?;
    let scaled_job = to_value(&scaled_job)?;
    let refs = plan::authentication_refs(&scaled_job);
    let mut auths = BTreeMap::new();
    for auth in &refs {
        let found = api(&resources.auths)
            .get_opt(auth)
            .await
            .map_err(|e| k8s::api_error(&format!("get TriggerAuthentication {auth}"), e))?;
        auths.insert(auth.clone(), found.as_ref().map(to_value).transpose()?);
    }
    let certificates = if refs.is_empty() {
        Vec::new()
    } else {
        api(&resources.certificates)
            .list(&ListParams::default())
            .await
            .map_err(|e| k8s::api_error(&format!("list Certificates in {namespace}"), e))?
            .items
            .iter()
            .map(to_value)
            .collect::<Result<Vec<_>>>()?
    };
    Ok(match plan::decide(&scaled_job, &auths, &certificates) {
        Decision::NoAuthentication => (
            "no_authentication",
            "no trigger names a TriggerAuthentication: nothing to refresh".to_owned(),
        ),
        Decision::Waiting(why) => (
            "waiting",
            format!("waiting before KEDA reads its TriggerAuthentication again: {why}"),
        ),
        Decision::Unchanged => (
            "unchanged",
            "KEDA's trigger TLS is built from the current TriggerAuthentication and Secrets"
                .to_owned(),
        ),
        Decision::NotGradual { stamp } => (
            "not_gradual",
            format!(
                "the TLS material changed ({stamp}) but the ScaledJob's rollout is not gradual: \
                 changing it would make KEDA delete running Jobs; set spec.rollout.strategy: \
                 gradual, or change the ScaledJob yourself"
            ),
        ),
        Decision::Refresh { stamp } => {
            let params = PatchParams {
                field_manager: Some("ado-scaler".to_owned()),
                ..PatchParams::default()
            };
            scaled_jobs
                .patch(name, &params, &Patch::Merge(plan::stamp_patch(&stamp)))
                .await
                .map_err(|e| k8s::api_error(&format!("patch ScaledJob {namespace}/{name}"), e))?;
            (
                "refreshed",
                format!(
                    "ScaledJob changed so that KEDA reads its TriggerAuthentication again: {stamp}"
                ),
            )
        }
    })
}

fn to_value(object: &DynamicObject) -> Result<Value> {
    serde_json::to_value(object).map_err(|e| Error::Kubernetes(format!("object: {e}")))
}
