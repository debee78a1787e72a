//! Simulated Kubernetes API server: the paths the collector uses, with the API server's
//! semantics for them. Pods: list (with the list's `resourceVersion`), get, and watch from a
//! `resourceVersion` (410 Gone once it is compacted away). Leases: get, create (409
//! `AlreadyExists`) and update with optimistic concurrency (409 `Conflict` for a stale
//! `metadata.resourceVersion`; none means unconditional, as for a real Lease). ScaledJobs,
//! TriggerAuthentications and cert-manager Certificates: get, list, and JSON merge patch (a
//! changed `spec` bumps `metadata.generation`, as for any resource with a status subresource;
//! an unchanged object keeps its `resourceVersion`). One revision
//! counter for every object, as etcd's. Errors are `Status` objects; a request without the
//! kubeconfig's bearer token gets 401. Reached over HTTPS through a kubeconfig, as a cluster is.

mod routes;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Container, Pod, PodSpec, PodStatus},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Watch events kept for clients resuming from an older `resourceVersion`.
const WATCH_HISTORY: usize = 1000;

/// The resources, for counters and faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KubeEndpoint {
    Pods,
    Leases,
    /// ScaledJobs, TriggerAuthentications and cert-manager Certificates.
    Custom,
}

/// A scripted failure: the next `times` requests to `endpoint` (all, when `None`) get `status`.
#[derive(Debug, Clone)]
pub struct KubeFault {
    pub endpoint: KubeEndpoint,
    pub status: u16,
    pub times: Option<u32>,
}

/// One RBAC rule as a Role grants it in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub namespace: String,
    pub api_group: String,
    pub resource: String,
    pub verbs: Vec<String>,
    /// Empty: any name.
    pub resource_names: Vec<String>,
}

impl Grant {
    fn allows(&self, request: &Access<'_>) -> bool {
        self.namespace == request.namespace
            && self.api_group == request.api_group
            && self.resource == request.resource
            && self.verbs.iter().any(|v| v == request.verb)
            && (self.resource_names.is_empty()
                || request
                    .name
                    .is_some_and(|n| self.resource_names.iter().any(|r| r == n)))
    }
}

/// What a request does, in RBAC's terms.
struct Access<'a> {
    endpoint: KubeEndpoint,
    verb: &'a str,
    api_group: &'a str,
    resource: &'a str,
    namespace: &'a str,
    /// `None` for list, watch and create (RBAC cannot name what does not exist yet).
    /// Cluster-scoped resources (TokenReviews) have the namespace `""`.
    name: Option<&'a str>,
}

impl<'a> Access<'a> {
    fn pods(verb: &'a str, namespace: &'a str, name: Option<&'a str>) -> Self {
        Self {
            endpoint: KubeEndpoint::Pods,
            verb,
            api_group: "",
            resource: "pods",
            namespace,
            name,
        }
    }

    fn custom(
        verb: &'a str,
        api_group: &'a str,
        resource: &'a str,
        namespace: &'a str,
        name: Option<&'a str>,
    ) -> Self {
        Self {
            endpoint: KubeEndpoint::Custom,
            verb,
            api_group,
            resource,
            namespace,
            name,
        }
    }

    fn leases(verb: &'a str, namespace: &'a str, name: Option<&'a str>) -> Self {
        Self {
            endpoint: KubeEndpoint::Leases,
            verb,
            api_group: "coordination.k8s.io",
            resource: "leases",
            namespace,
            name,
        }
    }
}

#[derive(Debug, Default)]
struct Store {
    revision: u64,
    pods: BTreeMap<(String, String), Pod>,
    leases: BTreeMap<(String, String), Lease>,
    /// `(revision, namespace, event)` of pod changes, oldest first.
    pod_events: VecDeque<(u64, String, Value)>,
    /// Custom resources by `(group, plural, namespace, name)`, as JSON.
    custom: BTreeMap<(String, String, String, String), Value>,
    /// Projected tokens issued to pods, by token.
    pod_tokens: HashMap<String, PodToken>,
}

impl Store {
    /// What a TokenReview says of `token` for `audiences` (none: the API server's own), as
    /// the real one does for a bound token: valid only while it has not expired and its pod
    /// (same UID) still exists, and only for an audience it was issued for.
    fn review(&self, token: &str, audiences: &[String]) -> Value {
        let refused = |why: &str| json!({ "authenticated": false, "error": why });
        let Some(issued) = self.pod_tokens.get(token) else {
            return refused(
                "[invalid bearer token, square/go-jose: error in cryptographic primitive]",
            );
        };
        if issued.expires <= std::time::Instant::now() {
            return refused("[invalid bearer token, service account token has expired]");
        }
        let pod_alive = self
            .pods
            .get(&(issued.namespace.clone(), issued.pod_name.clone()))
            .is_some_and(|p| p.metadata.uid.as_deref() == Some(issued.pod_uid.as_str()));
        if !pod_alive {
            return refused(&format!(
                "[invalid bearer token, pod \"{}\" not found or its UID changed]",
                issued.pod_name
            ));
        }
        let wanted: Vec<String> = if audiences.is_empty() {
            vec![API_SERVER_AUDIENCE.to_owned()]
        } else {
            audiences.to_vec()
        };
        let matched: Vec<&String> = wanted
            .iter()
            .filter(|a| issued.audiences.contains(a))
            .collect();
        if matched.is_empty() {
            return refused(
                "[invalid bearer token, token audiences [...] is invalid for the target audiences]",
            );
        }
        json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{}:{}", issued.namespace, issued.service_account),
                "uid": format!("sa-uid-{}", issued.service_account),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", issued.namespace), "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/pod-name": [issued.pod_name],
                    "authentication.kubernetes.io/pod-uid": [issued.pod_uid],
                },
            },
            "audiences": matched,
        })
    }
}

impl Store {
    fn next_revision(&mut self) -> String {
        self.revision += 1;
        self.revision.to_string()
    }

    /// Metadata of a new object, as the API server fills it in: uid, version, creation time.
    fn new_meta(&mut self, namespace: &str, name: &str) -> ObjectMeta {
        let revision = self.next_revision();
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: Some(format!("uid-{revision}")),
            resource_version: Some(revision),
            creation_timestamp: Some(Time(jiff::Timestamp::now())),
            ..ObjectMeta::default()
        }
    }

    fn put_held_lease(&mut self, namespace: &str, name: &str, holder: &str, duration_seconds: i32) {
        use k8s_openapi::{
            api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime,
        };
        let now = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: self.new_meta(namespace, name),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        self.leases
            .insert((namespace.to_owned(), name.to_owned()), lease);
    }
}

#[derive(Debug)]
struct KubeState {
    token: String,
    store: Mutex<Store>,
    faults: Mutex<Vec<KubeFault>>,
    requests: Mutex<HashMap<KubeEndpoint, u64>>,
    /// `Some`: RBAC is enforced with exactly these grants; `None`: everything is allowed.
    grants: Mutex<Option<Vec<Grant>>>,
    /// Requests RBAC refused.
    forbidden: std::sync::atomic::AtomicU64,
    /// Lease updates that another writer beats (it writes between their read and write).
    beaten_updates: std::sync::atomic::AtomicU32,
    /// Who creates the Lease just before the next create (which then gets 409).
    rival_create: Mutex<Option<String>>,
    /// `(revision, namespace, event)` as they happen, for open watches.
    events: broadcast::Sender<(u64, String, Value)>,
}

/// The audience a token gets when its projection names none: the API server's own.
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc";

/// A projected service-account token, as the kubelet gets it for a pod.
#[derive(Debug, Clone)]
struct PodToken {
    namespace: String,
    service_account: String,
    pod_name: String,
    pod_uid: String,
    audiences: Vec<String>,
    expires: std::time::Instant,
}

/// The custom resources served, as `(group, version, plural)`: what `ado-scaler serve` reads
/// to keep KEDA's trigger TLS current.
pub const CUSTOM_RESOURCES: [(&str, &str, &str); 4] = [
    ("keda.sh", "v1alpha1", "scaledjobs"),
    ("batch", "v1", "jobs"),
    ("keda.sh", "v1alpha1", "triggerauthentications"),
    ("cert-manager.io", "v1", "certificates"),
];

/// RFC 7386 JSON merge patch, as the API server applies `application/merge-patch+json`.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

impl Store {
    /// Creates or replaces a custom resource as the API server would: uid and generation 1
    /// when new; a changed `spec` bumps `metadata.generation`; any change bumps the
    /// `resourceVersion`, and no change leaves the object as it was.
    fn put_custom(&mut self, group: &str, plural: &str, mut object: Value) -> Value {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let key = (group.to_owned(), plural.to_owned(), namespace, name);
        match self.custom.get(&key) {
            Some(old) => {
                for field in ["uid", "generation", "resourceVersion", "creationTimestamp"] {
                    object["metadata"][field] = old["metadata"][field].clone();
                }
                if *old == object {
                    return object;
                }
                if old["spec"] != object["spec"] {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(generation + 1);
                }
            }
            None => {
                let revision = self.revision + 1;
                object["metadata"]["uid"] = json!(format!("uid-{revision}"));
                object["metadata"]["generation"] = json!(1);
                object["metadata"]["creationTimestamp"] = json!(jiff::Timestamp::now().to_string());
            }
        }
        object["metadata"]["resourceVersion"] = json!(self.next_revision());
        self.custom.insert(key, object.clone());
        object
    }
}

/// Handle to the simulated API server.
#[derive(Debug, Clone)]
pub struct KubeSim {
    state: Arc<KubeState>,
}

impl KubeSim {
    /// `token` is the bearer token its kubeconfig carries.
    pub fn new(token: &str) -> Self {
        Self {
            state: Arc::new(KubeState {
                token: token.to_owned(),
                store: Mutex::default(),
                faults: Mutex::default(),
                requests: Mutex::default(),
                beaten_updates: std::sync::atomic::AtomicU32::new(0),
                rival_create: Mutex::default(),
                grants: Mutex::default(),
                forbidden: std::sync::atomic::AtomicU64::new(0),
                events: broadcast::channel(WATCH_HISTORY).0,
            }),
        }
    }

    /// The bearer token the kubeconfig carries (a service-account token: a secret).
    pub fn token(&self) -> &str {
        &self.state.token
    }

    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// A kubeconfig (JSON, which is YAML) for `server`, trusting `ca_pem`, with the token.
    pub fn kubeconfig(&self, server: &str, ca_pem: &str, namespace: &str) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "sim", "cluster": { "server": server, "certificate-authority-data": ca } }],
            "users": [{ "name": "ado-scaler", "user": { "token": self.state.token } }],
            "contexts": [{ "name": "sim", "context": { "cluster": "sim", "user": "ado-scaler", "namespace": namespace } }],
            "current-context": "sim",
        })
        .to_string()
    }

    /// Creates or replaces a custom resource (`group` and `plural` from [`CUSTOM_RESOURCES`];
    /// namespace and name from its metadata), as `kubectl apply` or a controller would.
    pub fn put_custom(&self, group: &str, plural: &str, object: Value) -> Value {
        self.store().put_custom(group, plural, object)
    }

    /// A custom resource as stored, if it exists.
    pub fn custom(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.store()
            .custom
            .get(&(group.into(), plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    pub fn delete_custom(&self, group: &str, plural: &str, namespace: &str, name: &str) {
        self.store()
            .custom
            .remove(&(group.into(), plural.into(), namespace.into(), name.into()));
    }

    /// Starts a pod (phase `Running`), as the Job controller would for an agent.
    pub fn create_pod(&self, namespace: &str, name: &str) {
        let mut store = self.store();
        let pod = Pod {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".to_owned(),
                    "ado-agent".to_owned(),
                )])),
                ..store.new_meta(namespace, name)
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "agent".into(),
                    image: Some("ado-agent".into()),
                    ..Container::default()
                }],
                restart_policy: Some("Never".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
        };
        store
            .pods
            .insert((namespace.to_owned(), name.to_owned()), pod.clone());
        self.record(&mut store, namespace, "ADDED", &pod);
    }

    /// An agent pod as KEDA's Job makes it: running `service_account`, controlled by the
    /// Job `owner` (`(name, uid)`) when given; returns the pod's UID.
    pub fn create_agent_pod(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        owner: Option<(&str, &str)>,
    ) -> String {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        self.create_pod(namespace, name);
        let mut store = self.store();
        let pod = store
            .pods
            .get_mut(&(namespace.to_owned(), name.to_owned()))
            .expect("pod just created");
        pod.metadata.owner_references = owner.map(|(job, uid)| {
            vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: job.into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        });
        if let Some(spec) = pod.spec.as_mut() {
            spec.service_account_name = Some(service_account.into());
        }
        pod.metadata.uid.clone().expect("uid")
    }

    /// A ScaledJob with these triggers (`[{type, metadata}]`) and one Job it controls, as
    /// KEDA creates them; returns the Job's `(name, uid)`.
    pub fn create_scaled_job_with_job(
        &self,
        namespace: &str,
        scaled_job: &str,
        triggers: Value,
        job: &str,
    ) -> (String, String) {
        let uid = self.create_scaled_job(namespace, scaled_job, triggers);
        self.create_job(namespace, (scaled_job, &uid), job)
    }

    /// A ScaledJob with these triggers (`[{type, metadata}]`); returns its UID.
    pub fn create_scaled_job(&self, namespace: &str, scaled_job: &str, triggers: Value) -> String {
        let scaled = self.put_custom(
            "keda.sh",
            "scaledjobs",
            json!({
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledJob",
                "metadata": { "name": scaled_job, "namespace": namespace },
                "spec": { "jobTargetRef": { "template": {} }, "triggers": triggers },
            }),
        );
        scaled["metadata"]["uid"].as_str().expect("uid").to_owned()
    }

    /// A Job controlled by the ScaledJob `owner` (`(name, uid)`), as KEDA creates one per
    /// agent; returns the Job's `(name, uid)`.
    pub fn create_job(&self, namespace: &str, owner: (&str, &str), job: &str) -> (String, String) {
        let (scaled_job, scaled_uid) = owner;
        let created = self.put_custom(
            "batch",
            "jobs",
            json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": job,
                    "namespace": namespace,
                    "labels": { "scaledjob.keda.sh/name": scaled_job },
                    "ownerReferences": [{
                        "apiVersion": "keda.sh/v1alpha1",
                        "kind": "ScaledJob",
                        "name": scaled_job,
                        "uid": scaled_uid,
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "spec": { "template": {} },
            }),
        );
        (
            job.to_owned(),
            created["metadata"]["uid"].as_str().expect("uid").to_owned(),
        )
    }

    /// The projected token the kubelet would mount into the pod (`serviceAccountToken` with
    /// `audience` and `expirationSeconds`). A secret: the registrar's tests present it.
    pub fn pod_token(
        &self,
        namespace: &str,
        pod: &str,
        audience: &str,
        ttl: std::time::Duration,
    ) -> String {
        let mut store = self.store();
        let found = store
            .pods
            .get(&(namespace.to_owned(), pod.to_owned()))
            .expect("the pod exists");
        let issued = PodToken {
            namespace: namespace.into(),
            service_account: found
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            pod_name: pod.into(),
            pod_uid: found.metadata.uid.clone().expect("uid"),
            audiences: vec![audience.into()],
            expires: std::time::Instant::now() + ttl,
        };
        // Shaped as the kubelet's: a JWT whose claims name the audience, the account and the
        // pod (the signature is the API server's business: only TokenReview validates it).
        let token = {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let exp = jiff::Timestamp::now().as_second() + ttl.as_secs() as i64;
            let claims = json!({
                "iss": "https://kubernetes.default.svc.cluster.local",
                "sub": format!("system:serviceaccount:{namespace}:{}", issued.service_account),
                "aud": [audience],
                "exp": exp,
                "kubernetes.io": {
                    "namespace": namespace,
                    "pod": { "name": pod, "uid": issued.pod_uid },
                    "serviceaccount": { "name": issued.service_account },
                },
            });
            format!(
                "{}.{}.{}",
                b64.encode(r#"{"alg":"RS256","kid":"sim"}"#),
                b64.encode(claims.to_string()),
                b64.encode(rand::random::<[u8; 32]>())
            )
        };
        store.pod_tokens.insert(token.clone(), issued);
        token
    }

    /// A container of the pod has exited (`exit_code`), as the kubelet reports it; the pod
    /// stays, its phase unchanged until every container has ended.
    pub fn terminate_container(&self, namespace: &str, pod: &str, container: &str, exit_code: i32) {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateTerminated, ContainerStatus,
        };
        let mut store = self.store();
        let revision = store.next_revision();
        let Some(found) = store.pods.get_mut(&(namespace.to_owned(), pod.to_owned())) else {
            return;
        };
        found.metadata.resource_version = Some(revision);
        let status = found.status.get_or_insert_with(PodStatus::default);
        let statuses = status.container_statuses.get_or_insert_with(Vec::new);
        statuses.retain(|c| c.name != container);
        statuses.push(ContainerStatus {
            name: container.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        });
        let snapshot = found.clone();
        self.record(&mut store, namespace, "MODIFIED", &snapshot);
    }

    /// Deletes a pod (its Job was cleaned up, or its node is gone).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut store = self.store();
        if let Some(mut pod) = store.pods.remove(&(namespace.to_owned(), name.to_owned())) {
            pod.metadata.resource_version = Some(store.next_revision());
            self.record(&mut store, namespace, "DELETED", &pod);
        }
    }

    pub fn pod_names(&self, namespace: &str) -> Vec<String> {
        self.store()
            .pods
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, name)| name.clone())
            .collect()
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Option<Lease> {
        self.store()
            .leases
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// A Lease last renewed now by `holder` (a replica that may since have gone).
    pub fn put_lease(&self, namespace: &str, name: &str, holder: &str, duration_seconds: i32) {
        self.store()
            .put_held_lease(namespace, name, holder, duration_seconds);
    }

    /// The next Lease create loses a race: `holder` creates the Lease first, so the create
    /// gets the API server's 409 `AlreadyExists`.
    pub fn beat_next_lease_create(&self, holder: &str) {
        *self.state.rival_create.lock().expect("rival") = Some(holder.to_owned());
    }

    /// Another writer updates the Lease (a new revision, same holder): whoever read it before
    /// now holds a stale `resourceVersion`.
    pub fn touch_lease(&self, namespace: &str, name: &str) {
        let mut store = self.store();
        let revision = store.next_revision();
        if let Some(lease) = store
            .leases
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        {
            lease.metadata.resource_version = Some(revision);
        }
    }

    /// The next `n` Lease updates lose a race: another writer updates the Lease first, so
    /// their `resourceVersion` is stale and they get the API server's 409.
    pub fn beat_next_lease_updates(&self, n: u32) {
        self.state
            .beaten_updates
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Enforces RBAC as the API server does for the kubeconfig's service account: only these
    /// grants, and 403 for anything else.
    pub fn enforce_rbac(&self, grants: Vec<Grant>) {
        *self.state.grants.lock().expect("grants") = Some(grants);
    }

    /// Requests RBAC refused.
    pub fn forbidden(&self) -> u64 {
        self.state
            .forbidden
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn add_fault(&self, fault: KubeFault) {
        self.state.faults.lock().expect("faults").push(fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().expect("faults").clear();
    }

    pub fn requests(&self, endpoint: KubeEndpoint) -> u64 {
        self.state
            .requests
            .lock()
            .expect("requests")
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    fn record(&self, store: &mut Store, namespace: &str, kind: &str, pod: &Pod) {
        let revision = store.revision;
        let event = json!({ "type": kind, "object": pod });
        store
            .pod_events
            .push_back((revision, namespace.to_owned(), event.clone()));
        if store.pod_events.len() > WATCH_HISTORY {
            store.pod_events.pop_front();
        }
        let _ = self
            .state
            .events
            .send((revision, namespace.to_owned(), event));
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state.store.lock().expect("store")
    }
}
