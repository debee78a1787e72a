//! Simulated Azure DevOps organisation: the distributed-task REST paths the scaler and agent
//! use, with ADO's field names and quirks (203 + HTML sign-in page for an unknown caller,
//! finished requests still listed for a while, 429 with `Retry-After`), a job store tests and
//! the demo drive, per-endpoint request counters and switchable faults.

mod faults;
pub mod generate;
mod routes;

pub use faults::{BodyFault, Endpoint, Fault};

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use time::OffsetDateTime;

use super::entra::TokenStore;
use ado_scaler::{
    ado::models::{Agent, AgentRef, JobRequest, NamedRef, Pool},
    count::{Capabilities, Requirement},
};

/// The agent version simulated agents report: the one the agent image is built with.
pub const SIM_AGENT_VERSION: &str = ado_scaler::placeholder::DEFAULT_AGENT_VERSION;

/// How job-request answers are split or cut.
#[derive(Debug, Clone, Copy, Default)]
struct Paging {
    /// At most this many rows an answer, with `x-ms-continuationtoken` naming the next page.
    page_size: Option<usize>,
    /// At most this many rows an answer, silently (KEDA issue 6819's cap).
    silent_cap: Option<usize>,
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
    /// Jobs failed at enqueue because no registration in the pool satisfied their demands.
    rejected_no_agent: u64,
    /// `(agent id, when)` of every registration deleted through the REST API.
    deletions: Vec<(u32, std::time::Instant)>,
    /// Job-request answers given as they are: see `record_job_requests_answer`.
    recorded_answers: HashMap<u32, axum::body::Bytes>,
    /// `jti` of every client assertion accepted (a replay is refused).
    assertions_seen: std::collections::HashSet<String>,
    /// Agent ids whose listener's client assertion was accepted, in order.
    sessions: Vec<u32>,
    /// Why each refused client assertion was refused.
    refused_assertions: Vec<String>,
    /// The organisation's private self-hosted parallel jobs; `None`: [`UNLIMITED_PARALLEL_JOBS`].
    parallel_jobs: Option<u64>,
}

/// What the organisation reports as its parallel jobs when no limit was set: more than any
/// test or demo runs at once.
pub const UNLIMITED_PARALLEL_JOBS: u64 = 10_000;

/// The tag ADO puts into a request's `data` for the parallel jobs it takes.
const PARALLELISM_TAG: &str = "ParallelismTag";

impl Store {
    /// Unfinished requests holding one of the organisation's private parallel jobs (every pool:
    /// the limit is the organisation's).
    fn running_private(&self) -> impl Iterator<Item = &JobRequest> {
        self.jobs
            .values()
            .filter(|j| j.finished_at.is_none() && j.request.reserved_agent.is_some())
            .map(|j| &j.request)
            .filter(|r| takes_private(r))
    }

    /// The queued requests that have a parallel job: ADO gives the free ones to the oldest
    /// queued private requests of the organisation, whatever their pool; a public project's
    /// request needs none.
    fn startable(&self) -> std::collections::HashSet<u64> {
        let limit = self.parallel_jobs.unwrap_or(UNLIMITED_PARALLEL_JOBS);
        let free = limit.saturating_sub(self.running_private().count() as u64);
        let queued = self
            .jobs
            .values()
            .filter(|j| j.finished_at.is_none() && j.request.reserved_agent.is_none());
        let (private, public): (Vec<&SimJob>, Vec<&SimJob>) =
            queued.partition(|j| takes_private(&j.request));
        // Request ids grow with queue time: the map's order is the queue's.
        private
            .into_iter()
            .take(usize::try_from(free).unwrap_or(usize::MAX))
            .chain(public)
            .map(|j| j.request.request_id)
            .collect()
    }

    fn agent_mut(&mut self, pool_id: u32, name: &str) -> Option<&mut Agent> {
        self.agents
            .get_mut(&pool_id)?
            .iter_mut()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The unfinished request reserved for an agent, as `assignedRequest` lists it.
    fn assigned_request(&self, agent_id: u32) -> Option<JobRequest> {
        self.jobs
            .values()
            .find(|j| {
                j.finished_at.is_none()
                    && j.request
                        .reserved_agent
                        .as_ref()
                        .is_some_and(|a| a.id == agent_id)
            })
            .map(|j| j.request.clone())
    }
}

#[derive(Debug)]
struct AdoState {
    org: String,
    tokens: Arc<TokenStore>,
    store: Mutex<Store>,
    requests: Mutex<HashMap<Endpoint, u64>>,
    /// Every request, as `METHOD /path?query`, newest last.
    log: Mutex<std::collections::VecDeque<String>>,
    faults: Mutex<Vec<Fault>>,
    paging: Mutex<Paging>,
    /// ADO keeps listing a finished request for a while despite `completedRequestCount=0`.
    finished_visible_for: Duration,
    rate_limit_remaining: Mutex<Option<i64>>,
    /// `(limit, request times)`: a budget over ADO's 5-minute sliding window, one unit a request.
    rate_limit_window: Mutex<Option<(i64, std::collections::VecDeque<std::time::Instant>)>>,
    /// `false` simulates an identity that was never added to the organisation.
    accept_tokens: std::sync::atomic::AtomicBool,
    /// `true`: the identity has only the Reader role on pools, so it may list agents but not
    /// register, replace or delete them (403, `AccessDeniedException`).
    reader_only: std::sync::atomic::AtomicBool,
    /// The offered agent package: version and `.tar.gz` bytes.
    agent_package: Mutex<Option<(String, Arc<Vec<u8>>)>>,
    /// `Authorization` headers seen on downloads (there must be none).
    download_authorizations: std::sync::atomic::AtomicU64,
    /// Answers `resourceusage` with this body instead (a shape the scaler does not know).
    resource_usage_answer: Mutex<Option<serde_json::Value>>,
}

/// Handle to the simulated organisation.
#[derive(Debug, Clone)]
pub struct AdoSim {
    state: Arc<AdoState>,
}

/// The system capabilities the real agent reports about itself (`AgentCapabilitiesProvider`:
/// also `InteractiveSession`, `Agent.ComputerName`, `Agent.HomeDirectory`, which no demand here
/// uses).
pub fn system_capabilities(name: &str) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.insert("Agent.Name", name);
    caps.insert("Agent.OS", "Linux");
    caps.insert("Agent.OSArchitecture", "X64");
    caps.insert("Agent.Version", SIM_AGENT_VERSION);
    caps
}

/// An agent's capabilities as ADO matches them: what it reports of itself, and its user ones.
fn user_and_system(agent: &str, capabilities: &BTreeMap<String, String>) -> Capabilities {
    let mut caps = system_capabilities(agent);
    for (name, value) in capabilities {
        caps.insert(name, value);
    }
    caps
}

fn satisfied(request: &JobRequest, caps: &Capabilities) -> bool {
    request
        .demands
        .iter()
        .all(|d| Requirement::parse(d).satisfied_by(caps))
}

fn takes_private(request: &JobRequest) -> bool {
    request
        .data
        .get(PARALLELISM_TAG)
        .is_some_and(|t| t.eq_ignore_ascii_case("Private"))
}

/// ADO matches demands against system and user capabilities; a user one wins a clash.
fn agent_capabilities(agent: &Agent) -> Capabilities {
    let mut all = Capabilities::default();
    for (name, value) in agent
        .system_capabilities
        .iter()
        .chain(&agent.user_capabilities)
    {
        all.insert(name, value);
    }
    all
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
                log: Mutex::default(),
                faults: Mutex::default(),
                paging: Mutex::default(),
                finished_visible_for: Duration::from_secs(2),
                rate_limit_remaining: Mutex::new(None),
                rate_limit_window: Mutex::new(None),
                accept_tokens: std::sync::atomic::AtomicBool::new(true),
                reader_only: std::sync::atomic::AtomicBool::new(false),
                agent_package: Mutex::new(None),
                download_authorizations: std::sync::atomic::AtomicU64::new(0),
                resource_usage_answer: Mutex::new(None),
            }),
        }
    }

    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
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

    /// Queues a job; like ADO, every job also demands a minimum agent version. Like ADO, a job
    /// that no registered agent (online or offline) satisfies fails at once instead of
    /// waiting: it is listed as finished with `result: failed`.
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
            // A private project's run, as ADO marks it.
            data: BTreeMap::from([
                (PARALLELISM_TAG.to_owned(), "Private".to_owned()),
                ("IsScheduledKey".to_owned(), "False".to_owned()),
            ]),
        };
        let requirements: Vec<Requirement> = request
            .demands
            .iter()
            .map(|d| Requirement::parse(d))
            .collect();
        let satisfiable = store.agents.get(&pool_id).into_iter().flatten().any(|a| {
            // Whether a disabled registration keeps jobs queued is not known: assume not.
            let caps = agent_capabilities(a);
            a.enabled != Some(false) && requirements.iter().all(|r| r.satisfied_by(&caps))
        });
        store.jobs.insert(
            id,
            SimJob {
                request,
                finished_at: None,
            },
        );
        if !satisfiable {
            store.rejected_no_agent += 1;
            drop(store);
            self.finish(id, "failed");
        }
        id
    }

    /// Jobs failed at once because no agent in their pool satisfied their demands.
    pub fn jobs_rejected_no_agent(&self) -> u64 {
        self.store().rejected_no_agent
    }

    /// The organisation's private self-hosted parallel jobs (`None`: no limit). ADO runs at
    /// most that many private jobs at once; the others stay queued until one finishes.
    pub fn set_parallel_jobs(&self, limit: Option<u64>) {
        self.store().parallel_jobs = limit;
    }

    /// Answers `resourceusage` with `body` (`None`: the real shape again).
    pub fn answer_resource_usage_with(&self, body: Option<serde_json::Value>) {
        *self
            .state
            .resource_usage_answer
            .lock()
            .expect("resource usage answer") = body;
    }

    /// Marks a queued request as a public project's: it takes no private parallel job.
    pub fn make_public(&self, request_id: u64) {
        if let Some(job) = self.store().jobs.get_mut(&request_id) {
            job.request
                .data
                .insert(PARALLELISM_TAG.to_owned(), "Public".to_owned());
        }
    }

    /// Whether a queued job of the pool that `capabilities` satisfy waits for a parallel job
    /// (and none that could start matches): an agent with them would wait for nothing.
    pub fn waits_for_parallelism(
        &self,
        pool_id: u32,
        agent: &str,
        capabilities: &BTreeMap<String, String>,
    ) -> bool {
        let store = self.store();
        let caps = user_and_system(agent, capabilities);
        let startable = store.startable();
        let matching: Vec<u64> = store
            .jobs
            .values()
            .filter(|j| {
                j.request.pool_id == pool_id
                    && j.finished_at.is_none()
                    && j.request.reserved_agent.is_none()
                    && satisfied(&j.request, &caps)
            })
            .map(|j| j.request.request_id)
            .collect();
        !matching.is_empty() && matching.iter().all(|id| !startable.contains(id))
    }

    /// Gives the oldest queued job that has a parallel job to `agent`, as ADO's dispatcher does
    /// for an idle agent whose user capabilities are `capabilities` (system capabilities are
    /// added as the real agent reports them).
    pub fn assign_next(
        &self,
        pool_id: u32,
        agent: &str,
        capabilities: &BTreeMap<String, String>,
    ) -> Option<u64> {
        let mut store = self.store();
        let startable = store.startable();
        let agent_id = store
            .agents
            .get(&pool_id)
            .and_then(|a| a.iter().find(|a| a.name == agent))
            .map_or(0, |a| a.id);
        let caps = user_and_system(agent, capabilities);
        let job = store.jobs.values_mut().find(|j| {
            j.request.pool_id == pool_id
                && j.finished_at.is_none()
                && j.request.reserved_agent.is_none()
                && startable.contains(&j.request.request_id)
                && satisfied(&j.request, &caps)
        })?;
        let now = OffsetDateTime::now_utc();
        job.request.assign_time = Some(now);
        job.request.receive_time = Some(now);
        job.request.reserved_agent = Some(AgentRef {
            id: agent_id,
            name: agent.to_owned(),
            version: Some(SIM_AGENT_VERSION.into()),
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

    /// Registers an agent directly (as `config.sh` would), online, with the system
    /// capabilities a real agent reports and these user capabilities.
    pub fn register_agent(
        &self,
        pool_id: u32,
        name: &str,
        capabilities: &BTreeMap<String, String>,
    ) -> u32 {
        self.register(pool_id, name, capabilities, "online")
    }

    /// Registers an agent with its public key, offline until its listener opens a session, as
    /// `POST …/agents` does; returns its id and OAuth client id.
    pub fn register_with_key(
        &self,
        pool_id: u32,
        name: &str,
        public_key: ado_scaler::ado::models::AgentPublicKey,
        authorization_url: &str,
    ) -> (u32, String) {
        let client_id = format!("{:032x}", rand::random::<u128>());
        let id = self.add_registration(
            Agent {
                name: name.to_owned(),
                version: Some(SIM_AGENT_VERSION.into()),
                status: Some("offline".into()),
                enabled: Some(true),
                system_capabilities: system_capabilities(name).to_map(),
                authorization: Some(ado_scaler::ado::models::AgentAuthorization {
                    public_key,
                    client_id: Some(client_id.clone()),
                    authorization_url: Some(authorization_url.to_owned()),
                }),
                ..Agent::default()
            },
            pool_id,
        );
        (id, client_id)
    }

    /// Registers an offline agent, as the "template" agent users of KEDA's scaler keep so
    /// that ADO queues jobs while no agent runs.
    pub fn register_offline_agent(
        &self,
        pool_id: u32,
        name: &str,
        capabilities: &BTreeMap<String, String>,
    ) -> u32 {
        self.register(pool_id, name, capabilities, "offline")
    }

    fn register(
        &self,
        pool_id: u32,
        name: &str,
        capabilities: &BTreeMap<String, String>,
        status: &str,
    ) -> u32 {
        self.add_registration(
            Agent {
                id: 0,
                name: name.to_owned(),
                version: Some(SIM_AGENT_VERSION.into()),
                status: Some(status.into()),
                enabled: Some(true),
                created_on: None,
                status_changed_on: (status == "online").then(OffsetDateTime::now_utc),
                system_capabilities: system_capabilities(name).to_map(),
                user_capabilities: capabilities.clone(),
                ..Agent::default()
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

    /// An agent's listener opening (`true`) or losing (`false`) its session: ADO flips the
    /// status and stamps `statusChangedOn`. A killed agent goes offline this way too.
    pub fn set_agent_online(&self, pool_id: u32, name: &str, online: bool) {
        let status = if online { "online" } else { "offline" };
        if let Some(agent) = self.store().agent_mut(pool_id, name)
            && agent.status.as_deref() != Some(status)
        {
            agent.status = Some(status.into());
            agent.status_changed_on = Some(OffsetDateTime::now_utc());
        }
    }

    /// Moves an agent's `createdOn` and `statusChangedOn` back by `by`, as if it were that
    /// much older.
    pub fn age_agent(&self, pool_id: u32, name: &str, by: Duration) {
        if let Some(agent) = self.store().agent_mut(pool_id, name) {
            for at in [&mut agent.created_on, &mut agent.status_changed_on]
                .into_iter()
                .flatten()
            {
                *at -= by;
            }
        }
    }

    /// Registrations deleted through the REST API: `(agent id, when)`, in order.
    pub fn deletions(&self) -> Vec<(u32, std::time::Instant)> {
        self.store().deletions.clone()
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

    /// Agent ids whose listener's client assertion was accepted (a session opened), in order.
    pub fn agent_sessions(&self) -> Vec<u32> {
        self.store().sessions.clone()
    }

    /// Why each refused client assertion was refused.
    pub fn refused_assertions(&self) -> Vec<String> {
        self.store().refused_assertions.clone()
    }

    /// The public key a registration carried, as `(modulus, exponent)` base64.
    pub fn registered_key(&self, pool_id: u32, name: &str) -> Option<(String, String)> {
        self.agents(pool_id)
            .into_iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .and_then(|a| a.authorization)
            .map(|a| (a.public_key.modulus, a.public_key.exponent))
    }

    /// The request log: every request received, as `METHOD /path?query`, oldest first.
    pub fn request_log(&self) -> Vec<String> {
        self.state
            .log
            .lock()
            .expect("request log")
            .iter()
            .cloned()
            .collect()
    }

    pub fn total_requests(&self) -> u64 {
        self.state.requests.lock().expect("requests").values().sum()
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state.faults.lock().expect("faults").push(fault);
    }

    /// Job-request answers of at most `rows` rows, each naming the next page in an
    /// `x-ms-continuationtoken` header; `None`: one answer.
    pub fn page_job_requests(&self, rows: Option<usize>) {
        self.state.paging.lock().expect("paging").page_size = rows;
    }

    /// Answers the pool's job requests with `body` as it is, whatever the pool holds (`None`:
    /// from the pool again). For benchmarks of big pools, with bodies from [`generate`].
    pub fn record_job_requests_answer(&self, pool_id: u32, body: Option<Vec<u8>>) {
        let mut store = self.state.store.lock().expect("store");
        match body {
            Some(body) => store.recorded_answers.insert(pool_id, body.into()),
            None => store.recorded_answers.remove(&pool_id),
        };
    }

    /// Job-request answers cut at `rows` rows with nothing to say so, as ADO does with `$top`.
    pub fn cap_job_requests(&self, rows: Option<usize>) {
        self.state.paging.lock().expect("paging").silent_cap = rows;
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

    /// `true`: the identity may read the pool but not manage its agents (Reader, not Administrator).
    pub fn reader_only(&self, reader: bool) {
        self.state
            .reader_only
            .store(reader, std::sync::atomic::Ordering::SeqCst);
    }

    /// Send `X-RateLimit-*` headers with this remaining budget on every answer.
    pub fn set_rate_limit_remaining(&self, remaining: Option<i64>) {
        *self.state.rate_limit_remaining.lock().expect("rate limit") = remaining;
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state.store.lock().expect("store")
    }
}
