//! The Kubernetes side of `serve`: the API client, which agent pods exist, and which replica
//! collects ([`lease`]). The collector and the ScaledJob refresher talk to the API.

pub mod lease;

use std::{path::Path, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::error::{Error, Result};

/// Longest wait for one API answer; the elector's deadlines are shorter than a lease anyway.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// This pod's name: Kubernetes makes it the hostname. The default agent name and Lease
/// identity; `None` when the hostname cannot be read.
pub fn pod_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

/// A client from `kubeconfig` if given, else as `kubectl` infers one (`KUBECONFIG`,
/// `~/.kube/config`), else the pod's service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            Error::Config(format!(
                "no Kubernetes API configuration (in-cluster service account or KUBECONFIG): {e}"
            ))
        })?,
    };
    config.read_timeout = Some(API_TIMEOUT);
    Client::try_from(config).map_err(|e| Error::Config(format!("Kubernetes client: {e}")))
}

/// Names of every pod in `namespace`, whatever its phase. Metadata only: agent pod specs are
/// large and a busy namespace holds hundreds.
pub async fn pod_names(client: &Client, namespace: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| api_error(&format!("list pods in {namespace}"), e))?;
    Ok(list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect())
}

/// The API's own words (a `Status` message names the resource and the missing right); never
/// a credential, which kube keeps out of its errors.
pub(crate) fn api_error(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(status) => Error::Kubernetes(format!(
            "{what}: HTTP {} {}: {}",
            status.code, status.reason, status.message
        )),
        other => Error::Kubernetes(format!("{what}: {other}")),
    }
}
