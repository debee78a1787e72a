//! The HTTP side of the simulated organisation: one handler per REST path, sharing
//! [`guard`] (request counting, faults, organisation and token checks).

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use time::OffsetDateTime;

use super::{AdoSim, AdoState, BodyFault, Endpoint, SIGN_IN_PAGE, agent_capabilities};
use ado_scaler::{
    ado::{
        self,
        models::{Agent, AgentPackage, AgentRef, JobRequest, List, PackageVersion, Pool},
    },
    count::{Capabilities, Requirement},
};

pub(super) fn router(state: Arc<AdoState>) -> Router {
    Router::new()
        .route("/{org}/_apis/distributedtask/pools", get(list_pools))
        .route(
            "/{org}/_apis/distributedtask/pools/{pool_id}/jobrequests",
            get(list_job_requests),
        )
        .route(
            "/{org}/_apis/distributedtask/pools/{pool_id}/agents",
            get(list_agents).post(add_agent),
        )
        .route(
            "/{org}/_apis/distributedtask/pools/{pool_id}/agents/{agent_id}",
            axum::routing::delete(delete_agent).put(replace_agent),
        )
        .route(
            "/{org}/_apis/distributedtask/packages/agent",
            get(list_packages),
        )
        .route(
            "/{org}/_apis/distributedtask/resourceusage",
            get(resource_usage),
        )
        .route("/_sim/downloads/{file}", get(download_package))
        .route(
            "/_sim/vstoken/{org}",
            axum::routing::post(client_credentials),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), logged))
        .with_state(state)
}

/// How many requests the log keeps (the oldest go first).
const LOGGED_REQUESTS: usize = 10_000;

/// Puts every request, answered or not, into the request log: `METHOD /path?query`.
async fn logged(
    State(state): State<Arc<AdoState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!(
        "{} {}",
        request.method(),
        request.uri().path_and_query().map_or("", |p| p.as_str())
    );
    {
        let mut log = state.log.lock().expect("request log");
        if log.len() == LOGGED_REQUESTS {
            log.pop_front();
        }
        log.push_back(line);
    }
    next.run(request).await
}

/// Counting, faults, organisation and bearer-token checks every endpoint shares.
/// A fault's body shaping, if the fault that matched has one, is returned for the handler to
/// apply to its real answer.
async fn guard(
    state: &AdoState,
    endpoint: Endpoint,
    org: &str,
    headers: &HeaderMap,
) -> Result<Option<BodyFault>, Response> {
    *state
        .requests
        .lock()
        .expect("requests")
        .entry(endpoint)
        .or_default() += 1;
    let fault = {
        let mut faults = state.faults.lock().expect("faults");
        let found = faults
            .iter_mut()
            .position(|f| f.endpoint.is_none_or(|e| e == endpoint));
        found.map(|i| {
            let f = faults[i].clone();
            if let Some(n) = faults[i].times.as_mut() {
                *n -= 1;
                if *n == 0 {
                    faults.remove(i);
                }
            }
            f
        })
    };
    let body_fault = fault.as_ref().and_then(|f| f.body);
    if let Some(fault) = fault {
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        if let Some(status) = fault.status {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                Json(json!({ "message": format!("TF400733: simulated fault {status}"), "typeKey": "SimulatedFault" })),
            )
                .into_response();
            if let Some(seconds) = fault.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            return Err(response);
        }
    }
    if !org.eq_ignore_ascii_case(&state.org) {
        return Err((
            StatusCode::NOT_FOUND,
            Json(json!({ "message": format!("TF400813: organisation {org} not found") })),
        )
            .into_response());
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token);
    let member = state
        .accept_tokens
        .load(std::sync::atomic::Ordering::SeqCst);
    if !member || !token.is_some_and(|t| state.tokens.is_valid(&t)) {
        // ADO's answer to an unknown or unauthorised identity: 203 and a sign-in page.
        return Err((
            StatusCode::NON_AUTHORITATIVE_INFORMATION,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            SIGN_IN_PAGE,
        )
            .into_response());
    }
    Ok(body_fault)
}

/// The token of `Bearer <token>`, or of `Basic base64(<any user>:<token>)` as the agent sends
/// the token it was configured with (`--auth PAT`, user `VstsAgent`).
fn presented_token(authorization: &str) -> Option<String> {
    use base64::Engine as _;
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        return Some(token.to_owned());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(authorization.strip_prefix("Basic ")?)
        .ok()?;
    let (_user, token) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(token.to_owned())
}

fn with_rate_headers(state: &AdoState, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let windowed = state
        .rate_limit_window
        .lock()
        .expect("rate limit")
        .as_mut()
        .map(|(limit, times)| {
            let now = std::time::Instant::now();
            times.push_back(now);
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(300))
            {
                times.pop_front();
            }
            (*limit - times.len() as i64).max(0)
        });
    let fixed = *state.rate_limit_remaining.lock().expect("rate limit");
    if let Some(remaining) = fixed.or(windowed) {
        let h = response.headers_mut();
        h.insert("x-ratelimit-resource", HeaderValue::from_static("Core"));
        h.insert("x-ratelimit-limit", HeaderValue::from(200));
        h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from(OffsetDateTime::now_utc().unix_timestamp() + 300),
        );
    }
    response
}

fn pool_not_found(pool_id: u32) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "message": format!("No agent pool found with identifier {pool_id}.") })),
    )
        .into_response()
}

fn list<T: serde::Serialize>(value: Vec<T>) -> Json<List<T>> {
    Json(List {
        count: value.len(),
        value,
    })
}

/// `GET …/resourceusage?parallelismTag=&poolIsHosted=&includeRunningRequests=`, a preview
/// resource: without `-preview` in `api-version` ADO refuses it (400). Shaped as
/// `ResourceUsage` in microsoft/azure-devops-node-api; `resourceLimitsData` as the
/// organisation's free and purchased counts.
async fn resource_usage(
    State(state): State<Arc<AdoState>>,
    Path(org): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, Endpoint::ResourceUsage, &org, &headers).await {
        return r;
    }
    let version = query.get("api-version").map_or("", String::as_str);
    if !version.contains("-preview") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "message": format!("The requested REST API version of {version} is out of range for this server, or is a preview version that must be requested with -preview."),
                "typeKey": "VssInvalidPreviewVersionException",
            })),
        )
            .into_response();
    }
    if let Some(body) = state
        .resource_usage_answer
        .lock()
        .expect("resource usage answer")
        .clone()
    {
        return with_rate_headers(&state, Json(body));
    }
    let tag = query
        .get("parallelismTag")
        .map_or("Private", String::as_str);
    let hosted = query
        .get("poolIsHosted")
        .is_some_and(|h| h.eq_ignore_ascii_case("true"));
    let store = state.store.lock().expect("store");
    // Only the private self-hosted limit is simulated; others have none in use.
    let private_self_hosted = tag.eq_ignore_ascii_case("Private") && !hosted;
    let total = match private_self_hosted {
        true => store
            .parallel_jobs
            .unwrap_or(super::UNLIMITED_PARALLEL_JOBS),
        false => 0,
    };
    let running: Vec<&JobRequest> = match private_self_hosted {
        true => store.running_private().collect(),
        false => Vec::new(),
    };
    let mut answer = json!({
        "resourceLimit": {
            "resourceLimitsData": {
                "FreeCount": total.min(1).to_string(),
                "PurchasedCount": total.saturating_sub(1).to_string(),
            },
            "hostId": "00000000-0000-0000-0000-00000000c0de",
            "parallelismTag": tag,
            "isHosted": hosted,
            "totalCount": total,
            "isPremium": false,
            "failedToReachAllProviders": false,
        },
        "usedCount": running.len(),
        "usedMinutes": 0,
    });
    if query
        .get("includeRunningRequests")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        answer["runningRequests"] = json!(running);
    }
    with_rate_headers(&state, Json(answer))
}

async fn list_pools(
    State(state): State<Arc<AdoState>>,
    Path(org): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, Endpoint::Pools, &org, &headers).await {
        return r;
    }
    let store = state.store.lock().expect("store");
    let pools: Vec<Pool> = store
        .pools
        .iter()
        .filter(|p| {
            query
                .get("poolName")
                .is_none_or(|n| n.eq_ignore_ascii_case(&p.name))
        })
        .cloned()
        .collect();
    with_rate_headers(&state, list(pools))
}

async fn list_job_requests(
    State(state): State<Arc<AdoState>>,
    Path((org, pool_id)): Path<(String, u32)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let body_fault = match guard(&state, Endpoint::JobRequests, &org, &headers).await {
        Ok(fault) => fault,
        Err(r) => return r,
    };
    let paging = *state.paging.lock().expect("paging");
    let mut store = state.store.lock().expect("store");
    if !store.pools.iter().any(|p| p.id == pool_id) {
        return pool_not_found(pool_id);
    }
    if let Some(body) = store.recorded_answers.get(&pool_id) {
        let response = (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )],
            body.clone(),
        );
        return with_rate_headers(&state, response.into_response());
    }
    let visible = state.finished_visible_for;
    store
        .jobs
        .retain(|_, j| j.finished_at.is_none_or(|t| t.elapsed() < visible));
    // A page starts after the request id its token names (ids ascend, as the store is ordered).
    let after: u64 = match query.get("continuationToken").map(|t| t.parse()) {
        None => 0,
        Some(Ok(id)) => id,
        Some(Err(_)) => {
            // What ADO answers to a token it did not issue is not known (REALITY.md): a plain
            // 400, no invented error code. The scaler only ever sends tokens ADO gave it.
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "message": "the continuation token is not valid" })),
            )
                .into_response();
        }
    };
    // Each agent's capabilities, merged once per call rather than once per job.
    let agents: Vec<(&Agent, Capabilities)> = store
        .agents
        .get(&pool_id)
        .into_iter()
        .flatten()
        .map(|a| (a, agent_capabilities(a)))
        .collect();
    let mut requests: Vec<JobRequest> = store
        .jobs
        .range(after + 1..)
        .map(|(_, j)| j)
        .filter(|j| j.request.pool_id == pool_id)
        .map(|j| {
            let mut r = j.request.clone();
            let demands: Vec<Requirement> =
                r.demands.iter().map(|d| Requirement::parse(d)).collect();
            let matched: Vec<AgentRef> = agents
                .iter()
                .filter(|(_, capabilities)| demands.iter().all(|d| d.satisfied_by(capabilities)))
                .map(|(a, _)| AgentRef {
                    id: a.id,
                    name: a.name.clone(),
                    version: a.version.clone(),
                    status: a.status.clone(),
                    enabled: a.enabled,
                })
                .collect();
            // As before this change: set for a job whose only demand is the agent version
            // ADO adds (what ADO itself sets here is not known).
            r.matches_all_agents_in_pool = r
                .demands
                .iter()
                .all(|d| d.to_ascii_lowercase().starts_with("agent.version "));
            r.matched_agents = Some(matched);
            r
        })
        .collect();
    drop(store);
    let mut next_token = None;
    if let Some(page) = paging.page_size.filter(|&page| requests.len() > page) {
        requests.truncate(page);
        next_token = requests.last().map(|r| r.request_id.to_string());
    }
    if let Some(cap) = paging.silent_cap {
        requests.truncate(cap);
    }
    if let Some(BodyFault::Oversized { size, .. }) = body_fault {
        pad_matched_agents(&mut requests, size);
    }
    let mut response = match body_fault {
        Some(fault) => {
            let json = serde_json::to_vec(&List {
                count: requests.len(),
                value: requests,
            })
            .expect("serialisable");
            fault.respond(json)
        }
        None => list(requests).into_response(),
    };
    if let Some(token) = next_token {
        response.headers_mut().insert(
            ado::CONTINUATION_TOKEN,
            HeaderValue::from_str(&token).expect("digits"),
        );
    }
    with_rate_headers(&state, response)
}

/// Adds matched agents (as a pool with many has) until the answer is at least `size` bytes.
fn pad_matched_agents(requests: &mut [JobRequest], size: usize) {
    const PER_AGENT: usize = 120;
    let Some(count) = std::num::NonZeroUsize::new(requests.len()) else {
        return;
    };
    let per_request = size / PER_AGENT / count + 1;
    for request in requests {
        let matched = request.matched_agents.get_or_insert_with(Vec::new);
        matched.extend((0..per_request).map(|i| AgentRef {
            id: 1_000_000 + i as u32,
            name: format!("padding-agent-{i:08}-of-a-very-large-pool-xxxxxxxxxxxx"),
            version: Some("4.261.0".into()),
            status: Some("offline".into()),
            enabled: Some(true),
        }));
    }
}

async fn list_agents(
    State(state): State<Arc<AdoState>>,
    Path((org, pool_id)): Path<(String, u32)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, Endpoint::Agents, &org, &headers).await {
        return r;
    }
    let store = state.store.lock().expect("store");
    let asked = |flag: &str| {
        query
            .get(flag)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    };
    let (with_capabilities, with_request) = (
        asked("includeCapabilities"),
        asked("includeAssignedRequest"),
    );
    let agents: Vec<Agent> = store
        .agents
        .get(&pool_id)
        .into_iter()
        .flatten()
        .filter(|a| {
            query
                .get("agentName")
                .is_none_or(|n| n.eq_ignore_ascii_case(&a.name))
        })
        .map(|a| Agent {
            assigned_request: with_request
                .then(|| store.assigned_request(a.id).map(Box::new))
                .flatten(),
            ..listed(a, with_capabilities)
        })
        .collect();
    with_rate_headers(&state, list(agents))
}

/// An agent as ADO lists it: never its key, capabilities only when asked for.
fn listed(agent: &Agent, with_capabilities: bool) -> Agent {
    let mut agent = agent.clone();
    agent.authorization = None;
    if !with_capabilities {
        agent.system_capabilities.clear();
        agent.user_capabilities.clear();
    }
    agent
}

/// ADO's answer when a Reader tries to manage agents.
fn denied_unless_administrator(state: &AdoState) -> Option<Response> {
    state
        .reader_only
        .load(std::sync::atomic::Ordering::SeqCst)
        .then(|| {
            (
                StatusCode::FORBIDDEN,
                Json(json!({
                    "message": "Access denied. The identity needs Manage permissions for the agent pool to perform the action.",
                    "typeKey": "AccessDeniedException"
                })),
            )
                .into_response()
        })
}

/// A registration needs a name and the public key the agent will sign its session with.
fn invalid_registration(agent: &Agent) -> Option<Response> {
    let key = agent.authorization.as_ref().map(|a| &a.public_key);
    let problem = if agent.name.trim().is_empty() {
        "The agent name is required."
    } else if key.is_none_or(|k| k.exponent.is_empty() || k.modulus.is_empty()) {
        "The agent's authorization.publicKey is required."
    } else {
        return None;
    };
    Some(
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": problem, "typeKey": "ArgumentException" })),
        )
            .into_response(),
    )
}

/// What registering and replacing share: the caller, its role, and the body.
async fn registration_allowed(
    state: &AdoState,
    org: &str,
    headers: &HeaderMap,
    agent: &Agent,
) -> Result<(), Response> {
    guard(state, Endpoint::Agents, org, headers).await?;
    match denied_unless_administrator(state).or_else(|| invalid_registration(agent)) {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

fn agent_not_found(pool_id: u32, agent_id: u32) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "message": format!("No agent found in pool {pool_id} having identifier {agent_id}.") })),
    )
        .into_response()
}

/// `PUT …/agents/{id}`: replaces a registration (`config.sh --replace`, or a placeholder
/// whose capabilities changed), keeping its id.
async fn replace_agent(
    State(state): State<Arc<AdoState>>,
    Path((org, pool_id, agent_id)): Path<(String, u32, u32)>,
    headers: HeaderMap,
    Json(agent): Json<Agent>,
) -> Response {
    if let Err(r) = registration_allowed(&state, &org, &headers, &agent).await {
        return r;
    }
    let mut store = state.store.lock().expect("store");
    let Some(existing) = store
        .agents
        .get_mut(&pool_id)
        .and_then(|agents| agents.iter_mut().find(|a| a.id == agent_id))
    else {
        return agent_not_found(pool_id, agent_id);
    };
    *existing = Agent {
        id: existing.id,
        created_on: existing.created_on,
        status: existing.status.take(),
        status_changed_on: existing.status_changed_on,
        assigned_request: None,
        ..agent
    };
    let replaced = listed(existing, true);
    drop(store);
    with_rate_headers(&state, Json(replaced))
}

async fn add_agent(
    State(state): State<Arc<AdoState>>,
    Path((org, pool_id)): Path<(String, u32)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Json(mut agent): Json<Agent>,
) -> Response {
    if let Err(r) = registration_allowed(&state, &org, &headers, &agent).await {
        return r;
    }
    let sim = AdoSim {
        state: state.clone(),
    };
    if !sim.store().pools.iter().any(|p| p.id == pool_id) {
        return pool_not_found(pool_id);
    }
    let exists = sim
        .agents(pool_id)
        .iter()
        .any(|a| a.name.eq_ignore_ascii_case(&agent.name));
    if exists {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "message": format!("An agent named {} already exists in pool {pool_id}.", agent.name), "typeKey": "AgentExistsException" })),
        )
            .into_response();
    }
    // The OAuth client the listener will sign its session assertions as, and where it posts
    // them (Azure DevOps Services: the token service, which the agent also uses as
    // `oauthEndpointUrl`).
    let host = authority(&headers, &uri);
    if let Some(auth) = agent.authorization.as_mut() {
        auth.client_id = Some(format!("{:032x}", rand::random::<u128>()));
        auth.authorization_url = Some(format!("https://{host}/_sim/vstoken/{org}"));
    }
    // A new registration is offline until its listener opens a session.
    let id = sim.add_registration(
        Agent {
            status: Some("offline".into()),
            ..agent
        },
        pool_id,
    );
    // The answer carries the authorization back (client id, URL, public key), as ADO's does.
    let created = sim
        .agents(pool_id)
        .into_iter()
        .find(|a| a.id == id)
        .map(|a| {
            let authorization = a.authorization.clone();
            Agent {
                authorization,
                ..listed(&a, true)
            }
        });
    with_rate_headers(&state, Json(created))
}

/// The token service's `client_credentials` grant with a JWT client assertion, as the
/// listener uses it at every session start (REALITY.md: `OAuthCredential.cs`): the assertion
/// must be signed by the key the registration carried, name the registration's client id as
/// `iss` and `sub` and this URL as `aud`, be valid now for at most five minutes, and not be
/// replayed. A deleted registration's client is unknown.
async fn client_credentials(
    State(state): State<Arc<AdoState>>,
    Path(org): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<HashMap<String, String>>,
) -> Response {
    let host = authority(&headers, &uri);
    let here = format!("https://{host}/_sim/vstoken/{org}");
    match accept_assertion(&state, &form, &here) {
        Ok(agent_id) => {
            state.store.lock().expect("store").sessions.push(agent_id);
            Json(json!({
                "access_token": format!("sim-session-{:032x}", rand::random::<u128>()),
                "token_type": "bearer",
                "expires_in": 3600,
            }))
            .into_response()
        }
        Err(why) => {
            state
                .store
                .lock()
                .expect("store")
                .refused_assertions
                .push(why.clone());
            (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "invalid_client", "error_description": why })),
            )
                .into_response()
        }
    }
}

/// The host and port the client asked for: `Host` over HTTP/1.1, `:authority` over h2.
fn authority(headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "127.0.0.1".into())
}

fn accept_assertion(
    state: &AdoState,
    form: &HashMap<String, String>,
    here: &str,
) -> Result<u32, String> {
    let field = |name: &str| {
        form.get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("{name} is missing"))
    };
    if field("grant_type")? != "client_credentials" {
        return Err("grant_type must be client_credentials".into());
    }
    if field("client_assertion_type")? != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return Err("client_assertion_type must be jwt-bearer".into());
    }
    let assertion = field("client_assertion")?;
    // Who it claims to be, before the signature says whether it is.
    let claimed = assertion
        .split('.')
        .nth(1)
        .and_then(|c| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
        .and_then(|c| c["iss"].as_str().map(str::to_owned))
        .ok_or("the assertion names no issuer")?;
    let mut store = state.store.lock().expect("store");
    let agent = store
        .agents
        .values()
        .flatten()
        .find(|a| {
            a.authorization
                .as_ref()
                .is_some_and(|z| z.client_id.as_deref() == Some(claimed.as_str()))
        })
        .cloned()
        .ok_or("no registration has this client id")?;
    let authorization = agent.authorization.clone().unwrap_or_default();
    let (header, claims) = crate::jwt::verify(
        assertion,
        &authorization.public_key.modulus,
        &authorization.public_key.exponent,
    )?;
    if header["alg"] != "RS256" {
        return Err("alg must be RS256".into());
    }
    if claims["sub"].as_str() != Some(claimed.as_str()) {
        return Err("sub must equal iss (the client id)".into());
    }
    if claims["aud"].as_str() != Some(here)
        || authorization.authorization_url.as_deref() != Some(here)
    {
        return Err(format!("aud must be the authorization URL {here}"));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (Some(nbf), Some(exp)) = (claims["nbf"].as_i64(), claims["exp"].as_i64()) else {
        return Err("nbf and exp are required".into());
    };
    if nbf > now + 60 || exp <= now || exp - nbf > crate::jwt::MAX_LIFETIME_SECS + 60 {
        return Err("the assertion is not valid now, or lives longer than five minutes".into());
    }
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or("jti is required")?;
    if !store.assertions_seen.insert(jti.to_owned()) {
        return Err("the assertion was used before (replay)".into());
    }
    Ok(agent.id)
}

async fn delete_agent(
    State(state): State<Arc<AdoState>>,
    Path((org, pool_id, agent_id)): Path<(String, u32, u32)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, Endpoint::Agents, &org, &headers).await {
        return r;
    }
    if let Some(r) = denied_unless_administrator(&state) {
        return r;
    }
    let mut store = state.store.lock().expect("store");
    // The service refuses to remove an agent that is running a job (the agent's
    // `config.sh remove` then prints this message; MicrosoftDocs/azure-devops-docs#10586).
    if let Some(job) = store
        .assigned_request(agent_id)
        .filter(|j| j.assign_time.is_some())
    {
        let name = job.reserved_agent.map(|a| a.name).unwrap_or_default();
        let pool = store
            .pools
            .iter()
            .find(|p| p.id == pool_id)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": format!("Agent \"{name}\" is running a job for pool \"{pool}\"") })),
        )
            .into_response();
    }
    let agents = store.agents.entry(pool_id).or_default();
    let before = agents.len();
    agents.retain(|a| a.id != agent_id);
    if agents.len() == before {
        return agent_not_found(pool_id, agent_id);
    }
    store.deletions.push((agent_id, std::time::Instant::now()));
    StatusCode::NO_CONTENT.into_response()
}

async fn list_packages(
    State(state): State<Arc<AdoState>>,
    Path(org): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, Endpoint::Packages, &org, &headers).await {
        return r;
    }
    // HTTP/2 carries the authority in the URI, HTTP/1.1 in `Host`.
    let host = uri
        .authority()
        .map(ToString::to_string)
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "127.0.0.1".into());
    let platform = query
        .get("platform")
        .cloned()
        .unwrap_or_else(|| "linux-x64".into());
    let offered = state.agent_package.lock().expect("package").clone();
    let packages: Vec<AgentPackage> = offered
        .filter(|_| platform == "linux-x64" || platform == "linux-arm64")
        .map(|(version, _)| {
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let filename = format!("vsts-agent-{platform}-{version}.tar.gz");
            AgentPackage {
                kind: "agent".into(),
                platform: platform.clone(),
                download_url: format!("https://{host}/_sim/downloads/{filename}"),
                filename,
                version: PackageVersion {
                    major: parts.next().unwrap_or(0),
                    minor: parts.next().unwrap_or(0),
                    patch: parts.next().unwrap_or(0),
                    is_prerelease: false,
                },
            }
        })
        .into_iter()
        .collect();
    with_rate_headers(&state, list(packages))
}

async fn download_package(
    State(state): State<Arc<AdoState>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    *state
        .requests
        .lock()
        .expect("requests")
        .entry(Endpoint::Download)
        .or_default() += 1;
    if headers.contains_key(header::AUTHORIZATION) {
        state
            .download_authorizations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let offered = state.agent_package.lock().expect("package").clone();
    match offered {
        Some((version, bytes)) if file.contains(&version) => (
            [(header::CONTENT_TYPE, "application/gzip")],
            bytes.as_ref().clone(),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
