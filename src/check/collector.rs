//! `check` for the stale-agent collector: the same flags (and variables) as `serve --gc`, so
//! in the scaler's pod it checks the Deployment's own settings. Reads only: what the next run
//! would delete is listed, nothing is deleted.

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use super::{CheckSettings, Report};
use crate::{
    ado::AdoClient,
    gc::{self, LEASE_NAME},
    k8s,
};

pub const GC_SETTINGS: &str = "collector settings";
pub const GC_API: &str = "Kubernetes API";
pub const GC_PODS: &str = "agent pods readable";
pub const GC_LEASE: &str = "collector lease";
pub const GC_STALE: &str = "stale registrations";

/// How many names of stale registrations are shown.
const SHOWN: usize = 10;

pub(super) async fn check_collector(args: &CheckSettings, ado: &AdoClient, report: &mut Report) {
    let later = [GC_API, GC_PODS, GC_LEASE, GC_STALE];
    let settings = match &args.gc {
        Ok(Some(s)) => s.clone(),
        Ok(None) => return,
        Err(e) => {
            report.fail(
                GC_SETTINGS,
                e.clone(),
                "fix the --gc-* flags (ADO_SCALER_GC_* variables)",
            );
            report.skip(&later);
            return;
        }
    };
    report.pass(
        GC_SETTINGS,
        format!(
            "pools {}; agents named {} in namespace {}; offline longer than {}",
            settings
                .pools
                .iter()
                .map(|(org, pool)| format!("{org}={pool}"))
                .collect::<Vec<_>>()
                .join(", "),
            settings.rules.prefixes().join(" or "),
            settings.namespace,
            humantime::format_duration(settings.rules.grace())
        ),
    );
    let client = match k8s::client(settings.kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            report.fail(
                GC_API,
                e.to_string(),
                "the scaler's pod needs an API token: automountServiceAccountToken: true (deploy/scaler/deployment.yaml)",
            );
            report.skip(&later[1..]);
            return;
        }
    };
    report.pass(GC_API, "configured (in-cluster or kubeconfig)");

    let rbac_fix =
        |what: &str| format!("give the scaler's service account {what} (deploy/scaler/rbac.yaml)");
    match k8s::pod_names(&client, &settings.namespace).await {
        Ok(_) => report.pass(GC_PODS, format!("pods in {} listed", settings.namespace)),
        Err(e) => {
            report.fail(
                GC_PODS,
                e.to_string(),
                rbac_fix(&format!(
                    "get, list and watch on pods in {}",
                    settings.namespace
                )),
            );
            report.skip(&later[2..]);
            return;
        }
    }

    let lease_ns = settings
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_ns);
    match leases.get_opt(LEASE_NAME).await {
        Ok(lease) => {
            let holder = lease
                .and_then(|l| l.spec?.holder_identity)
                .filter(|h| !h.is_empty());
            report.pass(
                GC_LEASE,
                match holder {
                    Some(h) => format!("{lease_ns}/{LEASE_NAME} held by {h}"),
                    None => format!("{lease_ns}/{LEASE_NAME} free: the first replica takes it"),
                },
            );
        }
        Err(e) => report.fail(
            GC_LEASE,
            k8s::api_error(&format!("get lease {LEASE_NAME}"), e).to_string(),
            rbac_fix(&format!(
                "create, and get and update on the Lease {LEASE_NAME}, in {lease_ns}"
            )),
        ),
    }

    match gc::plan(&settings, ado, &client).await {
        Ok(stale) if stale.is_empty() => {
            report.pass(GC_STALE, "none: the next run deletes nothing")
        }
        Ok(stale) => {
            let mut names: Vec<String> = stale
                .iter()
                .take(SHOWN)
                .map(|s| {
                    format!(
                        "{} (id {}, offline {})",
                        s.agent.name,
                        s.agent.id,
                        humantime::format_duration(std::time::Duration::from_secs(
                            s.offline_for.as_secs()
                        ))
                    )
                })
                .collect();
            if stale.len() > SHOWN {
                names.push(format!("and {} more", stale.len() - SHOWN));
            }
            report.pass(
                GC_STALE,
                format!(
                    "the next run deletes {}: {}",
                    stale.len(),
                    names.join(", ")
                ),
            );
        }
        Err(e) => report.fail(
            GC_STALE,
            e.to_string(),
            "every pool in --gc-pools must exist and grant the identity the Administrator role; nothing is deleted while a list fails",
        ),
    }
}
