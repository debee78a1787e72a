//! Deregistration without a credential in the pod: the registrar remembers each agent it
//! registered and deletes the registration once the pod's agent container has terminated or
//! the pod is gone. While the agent still runs a job ADO refuses the delete (REALITY.md,
//! "Deleting a registration"), so a failed delete is retried at the next look. A replica that
//! restarts forgets what it registered: the stale-agent collector is the safety net.

use std::{collections::HashMap, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use tokio_util::sync::CancellationToken;

use crate::{ado::OrgUrl, error::Error};

/// The agent pod's container that runs the listener (`deploy/`'s name).
pub const AGENT_CONTAINER: &str = "agent";

/// How often registered pods are looked at: a finished pod's registration lasts about this
/// long (a pool's offline agents are cheap; the pod list per look is not free).
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(5);

/// A registration this replica made, until it is deleted.
#[derive(Debug, Clone)]
pub struct Registered {
    pub namespace: String,
    pub pod_name: String,
    pub org: OrgUrl,
    pub pool_id: u32,
    pub agent_id: u32,
}

/// Whether a registration's pod still needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// The agent container may still run (or has not started).
    Running,
    /// Deregister: why.
    Done(&'static str),
}

/// `pod` as listed (`None`: not in the list), for the registration made for `uid`.
pub fn state_of(pod: Option<&Pod>, uid: &str) -> PodState {
    let Some(pod) = pod else {
        return PodState::Done("pod_gone");
    };
    if pod.metadata.uid.as_deref() != Some(uid) {
        return PodState::Done("pod_gone");
    }
    let Some(status) = pod.status.as_ref() else {
        return PodState::Running;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return PodState::Done("pod_finished");
    }
    let terminated = status
        .container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|c| c.name == AGENT_CONTAINER)
        .any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
    if terminated {
        PodState::Done("agent_terminated")
    } else {
        PodState::Running
    }
}

impl super::Registrar {
    /// Looks at registered pods every `cleanup_interval` until `stop`.
    pub async fn clean_up(self: std::sync::Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.cleanup_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.clean_up_once().await,
                () = stop.cancelled() => return,
            }
        }
    }

    /// One look: one pod list per namespace with registrations, one delete per finished pod.
    pub async fn clean_up_once(&self) {
        let registered = self.registered.lock().expect("registered").clone();
        let mut by_namespace: HashMap<&str, Vec<(&String, &Registered)>> = HashMap::new();
        for (uid, r) in &registered {
            by_namespace.entry(&r.namespace).or_default().push((uid, r));
        }
        for (namespace, entries) in by_namespace {
            let pods = match Api::<Pod>::namespaced(self.kube.clone(), namespace)
                .list(&ListParams::default())
                .await
            {
                Ok(list) => list.items,
                Err(e) => {
                    let e = crate::k8s::api_error(&format!("list pods in {namespace}"), e);
                    tracing::warn!(error = %e, "cannot see registered pods; deregistration waits");
                    continue;
                }
            };
            for (uid, r) in entries {
                let pod = pods
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(r.pod_name.as_str()));
                if let PodState::Done(why) = state_of(pod, uid) {
                    self.deregister(uid, r, why).await;
                }
            }
        }
        self.metrics
            .registered_agents
            .set(self.registered.lock().expect("registered").len() as i64);
    }

    async fn deregister(&self, uid: &str, r: &Registered, why: &'static str) {
        let result = match self.ado.delete_agent(&r.org, r.pool_id, r.agent_id).await {
            // Gone already (the collector, or someone by hand): nothing left to do.
            Ok(()) | Err(Error::NotFound(_)) | Err(Error::Upstream { status: 404, .. }) => {
                self.registered.lock().expect("registered").remove(uid);
                tracing::info!(agent = %r.pod_name, agent_id = r.agent_id, why, "registration deleted");
                "deleted"
            }
            Err(e) => {
                tracing::warn!(agent = %r.pod_name, agent_id = r.agent_id, why, error = %e, "registration not deleted; retrying");
                "failed"
            }
        };
        self.metrics
            .deregistrations
            .get_or_create(&super::ResultLabels { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    fn pod(phase: &str, terminated: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some("uid-1".into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(
                    terminated
                        .iter()
                        .map(|name| ContainerStatus {
                            name: (*name).into(),
                            state: Some(ContainerState {
                                terminated: Some(ContainerStateTerminated::default()),
                                ..ContainerState::default()
                            }),
                            ..ContainerStatus::default()
                        })
                        .collect(),
                ),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_registration_ends_with_its_agent_container_or_pod() {
        assert_eq!(state_of(None, "uid-1"), PodState::Done("pod_gone"));
        assert_eq!(
            state_of(Some(&pod("Running", &[])), "uid-2"),
            PodState::Done("pod_gone")
        );
        assert_eq!(
            state_of(Some(&pod("Running", &[])), "uid-1"),
            PodState::Running
        );
        assert_eq!(
            state_of(Some(&pod("Pending", &[])), "uid-1"),
            PodState::Running
        );
        // A sidecar that ended says nothing about the agent.
        assert_eq!(
            state_of(Some(&pod("Running", &["sidecar"])), "uid-1"),
            PodState::Running
        );
        assert_eq!(
            state_of(
                Some(&pod("Running", &["sidecar", AGENT_CONTAINER])),
                "uid-1"
            ),
            PodState::Done("agent_terminated")
        );
        assert_eq!(
            state_of(Some(&pod("Succeeded", &[])), "uid-1"),
            PodState::Done("pod_finished")
        );
        assert_eq!(
            state_of(Some(&pod("Failed", &[])), "uid-1"),
            PodState::Done("pod_finished")
        );
        let mut no_status = pod("Running", &[]);
        no_status.status = None;
        assert_eq!(state_of(Some(&no_status), "uid-1"), PodState::Running);
    }
}
