//! Simulated Azure DevOps organisation: the distributed-task REST paths the scaler and agent
//! use, with ADO's field names and quirks (203 + HTML sign-in page for an unknown caller,
//! finished requests still listed for a while, 429 with `Retry-After`), a job store tests and
//! the demo drive, per-endpoint request counters and switchable faults.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use serde_json::json;
use time::OffsetDateTime;

use super::entra::TokenStore;
use crate::{
    ado::models::{
        Agent, AgentPackage, AgentRef, JobRequest, List, NamedRef, PackageVersion, Pool,
    },
    count::{Demand, parse_demands},
};

/// The REST endpoints, for counters and faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Pools,
    JobRequests,
    Agents,
    /// `…/distributedtask/packages/agent`.
    Packages,
    /// The package download itself (a CDN in reality: no token).
    Download,
}

/// A scripted failure: the next `times` matching requests (all, when `None`) get it.
#[derive(Debug, Clone)]
pub struct Fault {
    pub endpoint: Option<Endpoint>,
    /// HTTP status to answer instead of the real response; `None` only delays.
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    pub delay: Duration,
    pub times: Option<u32>,
}

impl Fault {
    pub fn status(endpoint: Endpoint, status: u16) -> Self {
        Self {
            endpoint: Some(endpoint),
            status: Some(status),
            retry_after: None,
            delay: Duration::ZERO,
            times: None,
        }
    }

    pub fn delay(endpoint: Endpoint, delay: Duration) -> Self {
        Self {
            endpoint: Some(endpoint),
            status: None,
            retry_after: None,
            delay,
            times: None,
        }
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

#[derive(Debug, Clone)]
struct SimJob {
    request: JobRequest,
    finished_at: Option<std::time::Instant>,
}

#[derive(Debug, Default)]
struct Store {
    pools: Vec<Pool>,
    jobs: BTreeMap<u64, SimJob>,
    agents: BTreeMap<u32, Vec<Agent>>,
    next_request_id: u64,
    next_agent_id: u32,
    next_pool_id: u32,
}

#[derive(Debug)]
struct AdoState {
    org: String,
    tokens: Arc<TokenStore>,
    store: Mutex<Store>,
    requests: Mutex<HashMap<Endpoint, u64>>,
    faults: Mutex<Vec<Fault>>,
    /// ADO keeps listing a finished request for a while despite `completedRequestCount=0`.
    finished_visible_for: Duration,
    rate_limit_remaining: Mutex<Option<i64>>,
    /// `(limit, request times)`: a budget over ADO's 5-minute sliding window, one unit a request.
    rate_limit_window: Mutex<Option<(i64, std::collections::VecDeque<std::time::Instant>)>>,
    /// `false` simulates an identity that was never added to the organisation.
    accept_tokens: std::sync::atomic::AtomicBool,
    /// The offered agent package: version and `.tar.gz` bytes.
    agent_package: Mutex<Option<(String, Arc<Vec<u8>>)>>,
    /// `Authorization` headers seen on downloads (there must be none).
    download_authorizations: std::sync::atomic::AtomicU64,
}

/// Handle to the simulated organisation.
#[derive(Debug, Clone)]
pub struct AdoSim {
    state: Arc<AdoState>,
}

const SIGN_IN_PAGE: &str = "<!DOCTYPE html><html><head><title>Azure DevOps Services | Sign In</title></head>\
<body><p>Sign in to your account to continue to Azure DevOps.</p></body></html>";

impl AdoSim {
    pub fn new(org: &str, tokens: Arc<TokenStore>) -> Self {
        Self {
            state: Arc::new(AdoState {
                org: org.to_owned(),
                tokens,
                store: Mutex::new(Store {
                    next_request_id: 1000,
                    next_agent_id: 1,
                    ..Store::default()
                }),
                requests: Mutex::default(),
                faults: Mutex::default(),
                finished_visible_for: Duration::from_secs(2),
                rate_limit_remaining: Mutex::new(None),
                rate_limit_window: Mutex::new(None),
                accept_tokens: std::sync::atomic::AtomicBool::new(true),
                agent_package: Mutex::new(None),
                download_authorizations: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    pub fn router(&self) -> Router {
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
                delete(delete_agent),
            )
            .route(
                "/{org}/_apis/distributedtask/packages/agent",
                get(list_packages),
            )
            .route("/_sim/downloads/{file}", get(download_package))
            .with_state(self.state.clone())
    }

    pub fn add_pool(&self, name: &str) -> u32 {
        let mut store = self.store();
        store.next_pool_id += 1;
        let id = 9 + store.next_pool_id;
        store.pools.push(Pool {
            id,
            name: name.to_owned(),
            is_hosted: false,
            pool_type: Some("automation".into()),
            size: 0,
        });
        id
    }

    /// Deletes a pool with its jobs and agents.
    pub fn delete_pool(&self, pool_id: u32) {
        let mut store = self.store();
        store.pools.retain(|p| p.id != pool_id);
        store.jobs.retain(|_, j| j.request.pool_id != pool_id);
        store.agents.remove(&pool_id);
    }

    /// Queues a job; like ADO, every job also demands a minimum agent version.
    pub fn enqueue(&self, pool_id: u32, demands: &[&str]) -> u64 {
        let mut store = self.store();
        store.next_request_id += 1;
        let id = store.next_request_id;
        let mut all: Vec<String> = demands.iter().map(|d| d.to_string()).collect();
        all.push("Agent.Version -gtVersion 2.163.1".into());
        let request = JobRequest {
            request_id: id,
            queue_time: Some(OffsetDateTime::now_utc()),
            assign_time: None,
            receive_time: None,
            finish_time: None,
            result: None,
            demands: all,
            matched_agents: None,
            matches_all_agents_in_pool: false,
            reserved_agent: None,
            pool_id,
            plan_type: Some("Build".into()),
            plan_id: Some(format!("plan-{id}")),
            job_id: Some(format!("job-{id}")),
            definition: Some(NamedRef {
                id: 1,
                name: "ci".into(),
            }),
            owner: Some(NamedRef {
                id: id * 10,
                name: format!("2026.{id}"),
            }),
        };
        store.jobs.insert(
            id,
            SimJob {
                request,
                finished_at: None,
            },
        );
        id
    }

    /// Gives the oldest queued job whose demands `capabilities` meet to `agent`, as ADO's
    /// dispatcher does for an idle agent.
    pub fn assign_next(
        &self,
        pool_id: u32,
        agent: &str,
        capabilities: &BTreeMap<String, String>,
    ) -> Option<u64> {
        let mut store = self.store();
        let agent_id = store
            .agents
            .get(&pool_id)
            .and_then(|a| a.iter().find(|a| a.name == agent))
            .map_or(0, |a| a.id);
        let job = store.jobs.values_mut().find(|j| {
            j.request.pool_id == pool_id
                && j.finished_at.is_none()
                && j.request.reserved_agent.is_none()
                && parse_demands(j.request.demands.iter().map(String::as_str))
                    .iter()
                    .all(|d| d.satisfied_by(capabilities))
        })?;
        let now = OffsetDateTime::now_utc();
        job.request.assign_time = Some(now);
        job.request.receive_time = Some(now);
        job.request.reserved_agent = Some(AgentRef {
            id: agent_id,
            name: agent.to_owned(),
            version: Some("4.261.0".into()),
            status: Some("online".into()),
            enabled: Some(true),
        });
        Some(job.request.request_id)
    }

    /// Cancels a job no agent has taken yet (a user cancelling a queued run); `false` if one has.
    pub fn cancel_if_queued(&self, request_id: u64) -> bool {
        let queued = self
            .store()
            .jobs
            .get(&request_id)
            .is_some_and(|j| j.finished_at.is_none() && j.request.reserved_agent.is_none());
        if queued {
            self.finish(request_id, "canceled");
        }
        queued
    }

    pub fn finish(&self, request_id: u64, result: &str) {
        let mut store = self.store();
        if let Some(job) = store.jobs.get_mut(&request_id) {
            job.request.finish_time = Some(OffsetDateTime::now_utc());
            job.request.result = Some(result.to_owned());
            job.finished_at = Some(std::time::Instant::now());
        }
    }

    /// Unfinished jobs of a pool: `(queued, in flight)`, as the jobrequests endpoint reports them.
    pub fn queue_counts(&self, pool_id: u32) -> (usize, usize) {
        let store = self.store();
        let unfinished = store
            .jobs
            .values()
            .filter(|j| j.request.pool_id == pool_id && j.finished_at.is_none());
        unfinished.fold((0, 0), |(q, f), j| {
            if j.request.reserved_agent.is_none() {
                (q + 1, f)
            } else {
                (q, f + 1)
            }
        })
    }

    pub fn job(&self, request_id: u64) -> Option<JobRequest> {
        self.store()
            .jobs
            .get(&request_id)
            .map(|j| j.request.clone())
    }

    /// Registers an agent directly (as `config.sh` would).
    pub fn register_agent(
        &self,
        pool_id: u32,
        name: &str,
        capabilities: &BTreeMap<String, String>,
    ) -> u32 {
        self.add_registration(
            Agent {
                id: 0,
                name: name.to_owned(),
                version: Some("4.261.0".into()),
                status: Some("online".into()),
                enabled: Some(true),
                created_on: None,
                system_capabilities: BTreeMap::new(),
                user_capabilities: capabilities.clone(),
            },
            pool_id,
        )
    }

    /// Stores a registration as posted, with a new id and creation time; returns the id.
    fn add_registration(&self, mut agent: Agent, pool_id: u32) -> u32 {
        let mut store = self.store();
        agent.id = store.next_agent_id;
        store.next_agent_id += 1;
        agent.created_on = Some(OffsetDateTime::now_utc());
        let id = agent.id;
        store.agents.entry(pool_id).or_default().push(agent);
        id
    }

    pub fn remove_agent(&self, pool_id: u32, name: &str) {
        if let Some(agents) = self.store().agents.get_mut(&pool_id) {
            agents.retain(|a| a.name != name);
        }
    }

    pub fn agents(&self, pool_id: u32) -> Vec<Agent> {
        self.store()
            .agents
            .get(&pool_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Requests received at `endpoint`, whatever their outcome.
    pub fn requests(&self, endpoint: Endpoint) -> u64 {
        self.state
            .requests
            .lock()
            .expect("requests")
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.state.requests.lock().expect("requests").values().sum()
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state.faults.lock().expect("faults").push(fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().expect("faults").clear();
    }

    /// Offers `bytes` (a `.tar.gz`) as the released `linux-x64` agent `version` (`major.minor.patch`).
    pub fn set_agent_package(&self, version: &str, bytes: Vec<u8>) {
        *self.state.agent_package.lock().expect("package") =
            Some((version.to_owned(), Arc::new(bytes)));
    }

    /// Downloads that carried an `Authorization` header (a token leaking to the CDN).
    pub fn download_authorizations(&self) -> u64 {
        self.state
            .download_authorizations
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Report `X-RateLimit-*` headers from a 5-minute sliding window of `limit` requests.
    pub fn simulate_rate_limit(&self, limit: i64) {
        *self.state.rate_limit_window.lock().expect("rate limit") =
            Some((limit, Default::default()));
    }

    /// Whether Entra tokens are accepted; `false` is an identity that is not a member of the organisation.
    pub fn accept_tokens(&self, accept: bool) {
        self.state
            .accept_tokens
            .store(accept, std::sync::atomic::Ordering::SeqCst);
    }

    /// Send `X-RateLimit-*` headers with this remaining budget on every answer.
    pub fn set_rate_limit_remaining(&self, remaining: Option<i64>) {
        *self.state.rate_limit_remaining.lock().expect("rate limit") = remaining;
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state.store.lock().expect("store")
    }
}

/// Counting, faults, organisation and bearer-token checks every endpoint shares.
async fn guard(
    state: &AdoState,
    endpoint: Endpoint,
    org: &str,
    headers: &HeaderMap,
) -> Result<(), Response> {
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
    Ok(())
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

/// ADO matches demands against system and user capabilities; a user one wins a clash.
fn all_capabilities(agent: &Agent) -> BTreeMap<String, String> {
    let mut all = agent.system_capabilities.clone();
    all.extend(agent.user_capabilities.clone());
    all
}

fn list<T: serde::Serialize>(value: Vec<T>) -> Json<List<T>> {
    Json(List {
        count: value.len(),
        value,
    })
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
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, Endpoint::JobRequests, &org, &headers).await {
        return r;
    }
    let mut store = state.store.lock().expect("store");
    if !store.pools.iter().any(|p| p.id == pool_id) {
        return pool_not_found(pool_id);
    }
    let visible = state.finished_visible_for;
    store
        .jobs
        .retain(|_, j| j.finished_at.is_none_or(|t| t.elapsed() < visible));
    // Each agent's capabilities, merged once per call rather than once per job.
    let agents: Vec<(&Agent, BTreeMap<String, String>)> = store
        .agents
        .get(&pool_id)
        .into_iter()
        .flatten()
        .map(|a| (a, all_capabilities(a)))
        .collect();
    let requests: Vec<JobRequest> = store
        .jobs
        .values()
        .filter(|j| j.request.pool_id == pool_id)
        .map(|j| {
            let mut r = j.request.clone();
            let demands: Vec<Demand> = parse_demands(r.demands.iter().map(String::as_str));
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
            r.matches_all_agents_in_pool = demands.is_empty();
            r.matched_agents = Some(matched);
            r
        })
        .collect();
    with_rate_headers(&state, list(requests))
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
        .cloned()
        .collect();
    with_rate_headers(&state, list(agents))
}

async fn add_agent(
    State(state): State<Arc<AdoState>>,
    Path((org, pool_id)): Path<(String, u32)>,
    headers: HeaderMap,
    Json(agent): Json<Agent>,
) -> Response {
    if let Err(r) = guard(&state, Endpoint::Agents, &org, &headers).await {
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
    // A new registration is offline until its listener opens a session.
    let id = sim.add_registration(
        Agent {
            status: Some("offline".into()),
            ..agent
        },
        pool_id,
    );
    let created = sim.agents(pool_id).into_iter().find(|a| a.id == id);
    with_rate_headers(&state, Json(created))
}

async fn delete_agent(
    State(state): State<Arc<AdoState>>,
    Path((org, pool_id, agent_id)): Path<(String, u32, u32)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, Endpoint::Agents, &org, &headers).await {
        return r;
    }
    let mut store = state.store.lock().expect("store");
    let agents = store.agents.entry(pool_id).or_default();
    let before = agents.len();
    agents.retain(|a| a.id != agent_id);
    if agents.len() == before {
        return (StatusCode::NOT_FOUND, Json(json!({ "message": format!("No agent found in pool {pool_id} having identifier {agent_id}.") }))).into_response();
    }
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
