//! The simulated API server's HTTP side: paths, RBAC and faults, `Status` errors.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
};
use serde_json::{Value, json};

use super::{Access, KubeState, Store};

pub(super) fn router(state: Arc<KubeState>) -> Router {
    Router::new()
        .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
            get(list_leases).post(create_lease),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(get_lease).put(replace_lease),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}",
            get(list_custom),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}",
            get(get_custom).patch(patch_custom),
        )
        .route(
            "/api/v1/namespaces/{ns}/{plural}",
            axum::routing::post(create_core),
        )
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}",
            get(get_core).put(replace_core),
        )
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            axum::routing::post(create_token_review),
        )
        .fallback(|| async {
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .with_state(state)
}

/// A `Status` object, as the API server answers every error.
fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

fn not_found(resource: &str, name: &str) -> Response {
    status(404, "NotFound", &format!("{resource} \"{name}\" not found"))
}

/// Bearer-token check, counting and scripted faults, shared by every path: the answer that
/// replaces the real one, if any.
fn rejection(state: &KubeState, headers: &HeaderMap, access: &Access<'_>) -> Option<Response> {
    let endpoint = access.endpoint;
    *state
        .requests
        .lock()
        .expect("requests")
        .entry(endpoint)
        .or_default() += 1;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(state.token.as_str()) {
        return Some(status(401, "Unauthorized", "Unauthorized"));
    }
    let grants = state.grants.lock().expect("grants");
    if let Some(grants) = grants.as_ref()
        && !grants.iter().any(|g| g.allows(access))
    {
        state
            .forbidden
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let group = if access.api_group.is_empty() {
            String::new()
        } else {
            format!(".{}", access.api_group)
        };
        let what = access.name.map_or_else(
            || format!("{}{group}", access.resource),
            |n| format!("{}{group} \"{n}\"", access.resource),
        );
        return Some(status(
            403,
            "Forbidden",
            &format!(
                "{what} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" in the namespace \"{}\"",
                crate::SIM_SUBJECT,
                access.verb,
                access.resource,
                access.api_group,
                access.namespace
            ),
        ));
    }
    drop(grants);
    let mut faults = state.faults.lock().expect("faults");
    if let Some(i) = faults.iter().position(|f| f.endpoint == endpoint) {
        let code = faults[i].status;
        if let Some(n) = faults[i].times.as_mut() {
            *n -= 1;
            if *n == 0 {
                faults.remove(i);
            }
        }
        let reason = match code {
            403 => "Forbidden",
            409 => "Conflict",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        return Some(status(code, reason, "simulated fault"));
    }
    None
}

fn store(state: &KubeState) -> std::sync::MutexGuard<'_, Store> {
    state.store.lock().expect("store")
}

fn truthy(query: &HashMap<String, String>, key: &str) -> bool {
    query
        .get(key)
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

async fn list_pods(
    State(state): State<Arc<KubeState>>,
    Path(ns): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = rejection(
        &state,
        &headers,
        &Access::pods(
            if truthy(&query, "watch") {
                "watch"
            } else {
                "list"
            },
            &ns,
            None,
        ),
    ) {
        return r;
    }
    if truthy(&query, "watch") {
        return watch_pods(&state, ns, &query);
    }
    let store = store(&state);
    let pods = store
        .pods
        .iter()
        .filter(|((pod_ns, _), _)| *pod_ns == ns)
        .map(|(_, pod)| pod);
    let metadata_only = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=PartialObjectMetadataList"));
    let list_meta = json!({ "resourceVersion": store.revision.to_string() });
    if metadata_only {
        let items: Vec<Value> = pods
            .map(|p| json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": p.metadata }))
            .collect();
        return Json(json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": list_meta,
            "items": items,
        }))
        .into_response();
    }
    let items: Vec<&Pod> = pods.collect();
    Json(json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": list_meta,
        "items": items,
    }))
    .into_response()
}

/// Events after `resourceVersion`, then live ones, as JSON lines until `timeoutSeconds`.
fn watch_pods(state: &KubeState, ns: String, query: &HashMap<String, String>) -> Response {
    let since: u64 = match query.get("resourceVersion").map(|v| v.parse()) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(_)) => return status(400, "BadRequest", "invalid resourceVersion"),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(
            std::time::Duration::from_secs(300),
            std::time::Duration::from_secs,
        );
    // Subscribe before reading the history so that nothing falls between the two.
    let mut live = state.events.subscribe();
    let store = store(state);
    let compacted = store
        .pod_events
        .front()
        .is_some_and(|(oldest, _, _)| since + 1 < *oldest);
    let mut backlog: Vec<Value> = Vec::new();
    if compacted {
        backlog.push(json!({ "type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {since}"), "reason": "Expired", "code": 410 } }));
    } else if since > 0 {
        backlog.extend(
            store
                .pod_events
                .iter()
                .filter(|(rev, event_ns, _)| *rev > since && *event_ns == ns)
                .map(|(_, _, e)| e.clone()),
        );
    } else {
        // No resourceVersion: the current pods as ADDED, then changes.
        backlog.extend(
            store
                .pods
                .iter()
                .filter(|((pod_ns, _), _)| *pod_ns == ns)
                .map(|(_, pod)| json!({ "type": "ADDED", "object": pod })),
        );
    }
    let last_sent = store.revision.max(since);
    drop(store);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    tokio::spawn(async move {
        let line = |event: &Value| Ok(format!("{event}\n"));
        for event in &backlog {
            if tx.send(line(event)).await.is_err() {
                return;
            }
        }
        if compacted {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok((rev, event_ns, event)) if rev > last_sent && event_ns == ns => {
                        if tx.send(line(&event)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Too slow a reader: end the watch; the client lists again.
                    Err(_) => return,
                },
                () = &mut deadline => return,
                () = tx.closed() => return,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|_| status(500, "InternalError", "watch"))
}

/// The core resources served besides pods: the registrar's own CA Secret and ConfigMap.
const CORE_RESOURCES: [&str; 2] = ["secrets", "configmaps"];

fn core_rejection(
    state: &KubeState,
    headers: &HeaderMap,
    verb: &str,
    plural: &str,
    ns: &str,
    name: Option<&str>,
) -> Option<Response> {
    if !CORE_RESOURCES.contains(&plural) {
        return Some(status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    rejection(state, headers, &Access::custom(verb, "", plural, ns, name))
}

async fn get_core(
    State(state): State<Arc<KubeState>>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = core_rejection(&state, &headers, "get", &plural, &ns, Some(&name)) {
        return r;
    }
    match store(&state)
        .custom
        .get(&(String::new(), plural.clone(), ns, name.clone()))
    {
        Some(object) => Json(object).into_response(),
        None => not_found(&plural, &name),
    }
}

/// Create: 409 `AlreadyExists` when the name is taken (two replicas racing).
async fn create_core(
    State(state): State<Arc<KubeState>>,
    Path((ns, plural)): Path<(String, String)>,
    headers: HeaderMap,
    Json(mut object): Json<Value>,
) -> Response {
    if let Some(r) = core_rejection(&state, &headers, "create", &plural, &ns, None) {
        return r;
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    object["metadata"]["namespace"] = json!(ns);
    let mut store = store(&state);
    if store
        .custom
        .contains_key(&(String::new(), plural.clone(), ns.clone(), name.clone()))
    {
        return status(
            409,
            "AlreadyExists",
            &format!("{plural} \"{name}\" already exists"),
        );
    }
    let created = store.put_custom("", &plural, object);
    (StatusCode::CREATED, Json(created)).into_response()
}

/// Replace with optimistic concurrency: a stale `metadata.resourceVersion` gets 409.
async fn replace_core(
    State(state): State<Arc<KubeState>>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(mut object): Json<Value>,
) -> Response {
    if let Some(r) = core_rejection(&state, &headers, "update", &plural, &ns, Some(&name)) {
        return r;
    }
    object["metadata"]["namespace"] = json!(ns);
    let mut store = store(&state);
    let key = (String::new(), plural.clone(), ns, name.clone());
    let Some(current) = store.custom.get(&key) else {
        return not_found(&plural, &name);
    };
    let sent = object["metadata"]["resourceVersion"].as_str();
    if sent.is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str()) {
        return status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    Json(store.put_custom("", &plural, object)).into_response()
}

/// `POST tokenreviews`: cluster-scoped, so RBAC needs a ClusterRole grant (namespace `""`).
async fn create_token_review(
    State(state): State<Arc<KubeState>>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> Response {
    let access = Access::custom("create", "authentication.k8s.io", "tokenreviews", "", None);
    if let Some(r) = rejection(&state, &headers, &access) {
        return r;
    }
    let Some(token) = review["spec"]["token"].as_str() else {
        return status(400, "BadRequest", "spec.token: Required value");
    };
    let audiences: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let answer = store(&state).review(token, &audiences);
    Json(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": { "creationTimestamp": null },
        "spec": { "audiences": audiences },
        "status": answer,
    }))
    .into_response()
}

async fn get_pod(
    State(state): State<Arc<KubeState>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = rejection(&state, &headers, &Access::pods("get", &ns, Some(&name))) {
        return r;
    }
    match store(&state).pods.get(&(ns, name.clone())) {
        Some(pod) => Json(pod).into_response(),
        None => not_found("pods", &name),
    }
}

async fn list_leases(
    State(state): State<Arc<KubeState>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = rejection(&state, &headers, &Access::leases("list", &ns, None)) {
        return r;
    }
    let store = store(&state);
    let items: Vec<&Lease> = store
        .leases
        .iter()
        .filter(|((lease_ns, _), _)| *lease_ns == ns)
        .map(|(_, lease)| lease)
        .collect();
    Json(json!({
        "kind": "LeaseList",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": { "resourceVersion": store.revision.to_string() },
        "items": items,
    }))
    .into_response()
}

async fn get_lease(
    State(state): State<Arc<KubeState>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = rejection(&state, &headers, &Access::leases("get", &ns, Some(&name))) {
        return r;
    }
    match store(&state).leases.get(&(ns, name.clone())) {
        Some(lease) => Json(lease).into_response(),
        None => not_found("leases.coordination.k8s.io", &name),
    }
}

/// The body as a Lease, or the API server's 400 for what it cannot decode.
fn lease_body(body: &[u8]) -> Result<Lease, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("the body of the request was in an unknown format: {e}"))
}

async fn create_lease(
    State(state): State<Arc<KubeState>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = rejection(&state, &headers, &Access::leases("create", &ns, None)) {
        return r;
    }
    let mut lease = match lease_body(&body) {
        Ok(l) => l,
        Err(e) => return status(400, "BadRequest", &e),
    };
    let Some(name) = lease.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return status(
            422,
            "Invalid",
            "Lease.coordination.k8s.io is invalid: metadata.name: Required value",
        );
    };
    let mut store = store(&state);
    if let Some(rival) = state.rival_create.lock().expect("rival").take() {
        store.put_held_lease(&ns, &name, &rival, 15);
    }
    let key = (ns.clone(), name.clone());
    if store.leases.contains_key(&key) {
        return status(
            409,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io \"{name}\" already exists"),
        );
    }
    let revision = store.next_revision();
    lease.metadata.namespace = Some(ns);
    lease.metadata.uid = Some(format!("uid-{revision}"));
    lease.metadata.creation_timestamp = Some(Time(jiff::Timestamp::now()));
    lease.metadata.resource_version = Some(revision);
    store.leases.insert(key, lease.clone());
    (StatusCode::CREATED, Json(lease)).into_response()
}

async fn replace_lease(
    State(state): State<Arc<KubeState>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = rejection(
        &state,
        &headers,
        &Access::leases("update", &ns, Some(&name)),
    ) {
        return r;
    }
    let mut lease = match lease_body(&body) {
        Ok(l) => l,
        Err(e) => return status(400, "BadRequest", &e),
    };
    if lease.metadata.name.as_deref() != Some(name.as_str()) {
        return status(
            400,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        );
    }
    let mut store = store(&state);
    let key = (ns.clone(), name.clone());
    if !store.leases.contains_key(&key) {
        return not_found("leases.coordination.k8s.io", &name);
    }
    let beaten = state
        .beaten_updates
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        )
        .is_ok();
    if beaten {
        let revision = store.next_revision();
        if let Some(other) = store.leases.get_mut(&key) {
            other.metadata.resource_version = Some(revision);
        }
    }
    let Some(current) = store.leases.get(&key) else {
        return not_found("leases.coordination.k8s.io", &name);
    };
    let presented = lease
        .metadata
        .resource_version
        .as_deref()
        .filter(|v| !v.is_empty());
    if presented.is_some_and(|v| Some(v) != current.metadata.resource_version.as_deref()) {
        return status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": \
                 the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    let (uid, created) = (
        current.metadata.uid.clone(),
        current.metadata.creation_timestamp.clone(),
    );
    let revision = store.next_revision();
    lease.metadata.namespace = Some(ns);
    lease.metadata.uid = uid;
    lease.metadata.creation_timestamp = created;
    lease.metadata.resource_version = Some(revision);
    store.leases.insert(key, lease.clone());
    Json(lease).into_response()
}

/// The served custom resource at this path, if it is one.
fn custom_resource(group: &str, version: &str, plural: &str) -> bool {
    super::CUSTOM_RESOURCES.contains(&(group, version, plural))
}

/// What every custom-resource path checks first: a served resource, then the token, RBAC
/// and faults; the answer that replaces the real one, if any.
fn custom_rejection(
    state: &KubeState,
    headers: &HeaderMap,
    verb: &str,
    (group, version, plural): (&str, &str, &str),
    ns: &str,
    name: Option<&str>,
) -> Option<Response> {
    if !custom_resource(group, version, plural) {
        return Some(status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    rejection(
        state,
        headers,
        &Access::custom(verb, group, plural, ns, name),
    )
}

async fn list_custom(
    State(state): State<Arc<KubeState>>,
    Path((group, version, ns, plural)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let resource = (group.as_str(), version.as_str(), plural.as_str());
    if let Some(r) = custom_rejection(&state, &headers, "list", resource, &ns, None) {
        return r;
    }
    let store = store(&state);
    let items: Vec<&Value> = store
        .custom
        .iter()
        .filter(|((g, p, n, _), _)| *g == group && *p == plural && *n == ns)
        .map(|(_, object)| object)
        .collect();
    Json(json!({
        "kind": "List",
        "apiVersion": format!("{group}/{version}"),
        "metadata": { "resourceVersion": store.revision.to_string() },
        "items": items,
    }))
    .into_response()
}

async fn get_custom(
    State(state): State<Arc<KubeState>>,
    Path((group, version, ns, plural, name)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let resource = (group.as_str(), version.as_str(), plural.as_str());
    if let Some(r) = custom_rejection(&state, &headers, "get", resource, &ns, Some(name.as_str())) {
        return r;
    }
    match store(&state)
        .custom
        .get(&(group.clone(), plural.clone(), ns, name.clone()))
    {
        Some(object) => Json(object).into_response(),
        None => not_found(&format!("{plural}.{group}"), &name),
    }
}

/// Merge patches only (what the refresher sends); the others get the API server's 415.
async fn patch_custom(
    State(state): State<Arc<KubeState>>,
    Path((group, version, ns, plural, name)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let resource = (group.as_str(), version.as_str(), plural.as_str());
    if let Some(r) = custom_rejection(
        &state,
        &headers,
        "patch",
        resource,
        &ns,
        Some(name.as_str()),
    ) {
        return r;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/merge-patch+json" {
        return status(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json; got {content_type}"
            ),
        );
    }
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(e) => return status(400, "BadRequest", &e.to_string()),
    };
    let mut store = store(&state);
    let Some(mut object) = store
        .custom
        .get(&(group.clone(), plural.clone(), ns, name.clone()))
        .cloned()
    else {
        return not_found(&format!("{plural}.{group}"), &name);
    };
    super::merge_patch(&mut object, &patch);
    Json(store.put_custom(&group, &plural, object)).into_response()
}
