//! The simulated Kubernetes API server answers the production `kube` client as an API server
//! does, for what the collector uses: pods listed (whole or metadata only), read and watched
//! from a `resourceVersion`; Leases created and updated with optimistic concurrency; `Status`
//! errors; a bearer token required.

use std::time::Duration;

use ado_scaler::k8s;
use ado_sim::{SIM_AGENT_NAMESPACE, SIM_SCALER_NAMESPACE, SimCloud};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    coordination::v1::{Lease, LeaseSpec},
    core::v1::Pod,
};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams},
};

fn api_status(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API status: {other}"),
    }
}

#[tokio::test]
async fn pods_are_listed_read_and_watched_from_a_resource_version() {
    let sim = SimCloud::start().await.unwrap();
    let client = k8s::client(Some(&sim.kubeconfig)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), SIM_AGENT_NAMESPACE);
    sim.kube.create_pod(SIM_AGENT_NAMESPACE, "ado-agent-a");
    sim.kube.create_pod(SIM_SCALER_NAMESPACE, "ado-scaler-0");

    let list = pods.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["ado-agent-a"]);
    let phase = list.items[0].status.as_ref().unwrap().phase.as_deref();
    assert_eq!(phase, Some("Running"));
    let version = list.metadata.resource_version.clone().unwrap();
    let names = k8s::pod_names(&client, SIM_AGENT_NAMESPACE).await.unwrap();
    assert_eq!(names, ["ado-agent-a"], "pods of the namespace only");

    assert!(pods.get_opt("ado-agent-a").await.unwrap().is_some());
    let missing = pods.get("ado-agent-zz").await.unwrap_err();
    assert_eq!(api_status(missing), (404, "NotFound".into()));

    // Changes after the list's version, in order; nothing from other namespaces.
    let mut events = pods
        .watch(&WatchParams::default().timeout(5), &version)
        .await
        .unwrap()
        .boxed();
    sim.kube.create_pod(SIM_SCALER_NAMESPACE, "ado-scaler-1");
    sim.kube.create_pod(SIM_AGENT_NAMESPACE, "ado-agent-b");
    sim.kube.delete_pod(SIM_AGENT_NAMESPACE, "ado-agent-a");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .expect("an event")
            .unwrap()
            .expect("stream open");
        seen.push(match event {
            WatchEvent::Added(p) => format!("added {}", p.metadata.name.unwrap()),
            WatchEvent::Deleted(p) => format!("deleted {}", p.metadata.name.unwrap()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["added ado-agent-b", "deleted ado-agent-a"]);

    // A version compacted away: 410 Gone, and the client lists again.
    for i in 0..600 {
        let name = format!("churn-{i}");
        sim.kube.create_pod(SIM_AGENT_NAMESPACE, &name);
        sim.kube.delete_pod(SIM_AGENT_NAMESPACE, &name);
    }
    let mut expired = pods
        .watch(&WatchParams::default().timeout(5), &version)
        .await
        .unwrap()
        .boxed();
    match expired.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => assert_eq!(status.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn leases_use_optimistic_concurrency() {
    let sim = SimCloud::start().await.unwrap();
    let client = k8s::client(Some(&sim.kubeconfig)).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client, SIM_SCALER_NAMESPACE);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("ado-scaler-gc".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            ..LeaseSpec::default()
        }),
    };
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let first_version = created.metadata.resource_version.clone().unwrap();
    let again = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert_eq!(api_status(again), (409, "AlreadyExists".into()));

    // An update with the version just read wins; a second one with the same version loses.
    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let updated = leases
        .replace("ado-scaler-gc", &PostParams::default(), &mine)
        .await
        .unwrap();
    assert_ne!(updated.metadata.resource_version.unwrap(), first_version);
    let stale = leases
        .replace("ado-scaler-gc", &PostParams::default(), &mine)
        .await
        .unwrap_err();
    assert_eq!(api_status(stale), (409, "Conflict".into()));

    // Without a version, an update is unconditional (as for a real Lease).
    let mut blind = mine.clone();
    blind.metadata.resource_version = None;
    blind.spec.as_mut().unwrap().holder_identity = Some("c".into());
    leases
        .replace("ado-scaler-gc", &PostParams::default(), &blind)
        .await
        .unwrap();
    let now = leases.get("ado-scaler-gc").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("c"));
    let missing = leases
        .replace(
            "nope",
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some("nope".into()),
                    ..ObjectMeta::default()
                },
                spec: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_status(missing), (404, "NotFound".into()));
}

#[tokio::test]
async fn a_request_without_the_token_is_unauthorized() {
    let sim = SimCloud::start().await.unwrap();
    let kubeconfig = std::fs::read_to_string(&sim.kubeconfig).unwrap();
    let config: serde_json::Value = serde_json::from_str(&kubeconfig).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let response = sim
        .http_client()
        .unwrap()
        .get(format!(
            "{server}/api/v1/namespaces/{SIM_AGENT_NAMESPACE}/pods"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let status: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
}
