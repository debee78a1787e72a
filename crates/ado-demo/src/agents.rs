//! Simulated `--once` agents: registered by the scaler's registrar from their pod's init
//! container (or, self-registering, through the REST API as `config.sh` does), take one job,
//! run it, tear down and leave.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::DemoConfig;
use ado_scaler::{
    ado::{
        AdoClient, OrgUrl,
        models::{Agent, AgentAuthorization},
    },
    agent::prepare::{self, PrepareSettings},
    auth::{TokenMetrics, TokenSource},
    error::{Error, Result},
    registrar::{DEFAULT_SERVICE_ACCOUNT, cleanup::AGENT_CONTAINER, wire::TOKEN_AUDIENCE},
};
use ado_sim::{AdoSim, KubeSim, SIM_AGENT_NAMESPACE, SimCloud};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Starting,
    Idle,
    Running,
    TearingDown,
    Done,
}

#[derive(Debug, Default)]
pub(super) struct Stats {
    /// (ScaledJob index, phase) per agent.
    pub(super) agents: Vec<(usize, Phase)>,
    pub(super) waits: Vec<Duration>,
    pub(super) completed: u64,
    pub(super) queued: u64,
    pub(super) cancelled: u64,
    pub(super) ran_a_job: u64,
    pub(super) left_idle: u64,
    pub(super) durations: HashMap<u64, Duration>,
    /// Agents killed without deregistering, by name.
    pub(super) killed: Vec<String>,
    /// Jobs failed because their agent was killed.
    pub(super) lost: u64,
    /// Agents that, registered and idle, found every job they could run waiting for a
    /// parallel job.
    pub(super) without_parallel_job: u64,
    /// Time agents spent registered without a job (until taking one or leaving).
    pub(super) idle: Duration,
}

impl Stats {
    pub(super) fn running_jobs(&self, scaled_job: usize) -> u64 {
        self.agents
            .iter()
            .filter(|(sj, p)| *sj == scaled_job && *p != Phase::Done)
            .count() as u64
    }

    pub(super) fn phase_count(&self, phase: Phase) -> usize {
        self.agents.iter().filter(|(_, p)| *p == phase).count()
    }
}

pub(super) type Shared = Arc<Mutex<Stats>>;

/// How the simulated agents come to be registered: the two modes of `deploy/`.
#[derive(Clone)]
pub(super) enum Enrolment {
    /// The default: each pod's init container has the scaler's registrar register the key it
    /// made (`agent prepare`, the production code), and the agent container holds no
    /// credential; the registrar deletes the registration once the agent container ended.
    JustInTime(JustInTime),
    /// `deploy/self-registration/`: each agent exchanges its own workload identity and
    /// registers and deregisters itself, as `config.sh` does.
    SelfRegistration(Box<SelfRegistration>),
}

impl Enrolment {
    /// Tokens the simulated agents themselves requested from Entra.
    pub(super) fn agent_token_requests(&self) -> u64 {
        match self {
            Self::JustInTime(_) => 0,
            Self::SelfRegistration(own) => own.token_requests(),
        }
    }

    /// Agents registered, by whichever means.
    pub(super) fn registered(&self) -> u64 {
        match self {
            Self::JustInTime(jit) => jit.registered.load(Ordering::SeqCst),
            Self::SelfRegistration(own) => own.registered.load(Ordering::SeqCst),
        }
    }
}

/// The registrar's address and trust, and the ScaledJobs whose Jobs own the agent pods.
#[derive(Clone)]
pub(super) struct JustInTime {
    /// The registrar's base URL, as `AZP_REGISTRAR`.
    pub(super) registrar: String,
    /// The registrar's CA, as the `ado-scaler-registrar-ca` ConfigMap mounts it.
    pub(super) ca_file: PathBuf,
    /// Each pod's volumes: the projected token (init container only) and the agent config.
    pub(super) pods_dir: PathBuf,
    /// `(name, uid)` of each ScaledJob, by index.
    pub(super) scaled_jobs: Vec<(String, String)>,
    pub(super) registered: Arc<AtomicU64>,
}

impl JustInTime {
    /// The pod's init container: `agent prepare` with a projected token of audience
    /// `ado-scaler`; the token file is gone once it ends (only the init container mounts it).
    async fn prepare(&self, kube: &KubeSim, name: &str) -> Result<u32> {
        let dir = self.pods_dir.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        let token_file = dir.join("token");
        let token = kube.pod_token(
            SIM_AGENT_NAMESPACE,
            name,
            TOKEN_AUDIENCE,
            Duration::from_secs(600),
        );
        std::fs::write(&token_file, token).map_err(|e| Error::Config(e.to_string()))?;
        let settings = PrepareSettings {
            registrar: self.registrar.clone(),
            token_file: token_file.clone(),
            ca_file: self.ca_file.clone(),
            config_dir: dir.join("agent-config"),
            agent_dir: dir.clone(),
            work: "_work".into(),
            timeout: Duration::from_secs(30),
        };
        let answer = prepare::register_pod(&settings, ado_sim::SIM_AGENT_VERSION.into()).await;
        let _ = std::fs::remove_file(&token_file);
        let answer = answer?;
        self.registered.fetch_add(1, Ordering::SeqCst);
        Ok(answer.agent_id)
    }
}

/// Registers and deregisters simulated agents through the simulated ADO's REST API, with
/// the production client, as `config.sh` does.
#[derive(Clone)]
pub(super) struct SelfRegistration {
    pub(super) ado: AdoClient,
    pub(super) tokens: Arc<TokenMetrics>,
    pub(super) org: OrgUrl,
    pub(super) pool_id: u32,
    /// One key for every simulated agent: they never open a session that would use it.
    pub(super) authorization: AgentAuthorization,
    registered: Arc<AtomicU64>,
}

impl SelfRegistration {
    pub(super) fn new(sim: &SimCloud, pool_id: u32) -> Result<Self> {
        let http = sim.http_client()?;
        let tokens = Arc::new(TokenMetrics::default());
        let token = TokenSource::new(&sim.auth_settings(), &http, Some(tokens.clone()))?;
        Ok(Self {
            ado: AdoClient::new(http, token, Arc::default()),
            tokens,
            org: OrgUrl::parse(&sim.org_url).map_err(|e| Error::Config(e.to_string()))?,
            pool_id,
            authorization: AgentAuthorization::fresh().map_err(Error::Config)?,
            registered: Arc::default(),
        })
    }

    async fn register(&self, name: &str, capabilities: &BTreeMap<String, String>) -> Result<u32> {
        let agent = Agent {
            name: name.to_owned(),
            version: Some(ado_sim::SIM_AGENT_VERSION.into()),
            enabled: Some(true),
            os_description: Some("Linux (simulated)".into()),
            authorization: Some(self.authorization.clone()),
            system_capabilities: ado_sim::system_capabilities(name).to_map(),
            user_capabilities: capabilities.clone(),
            ..Agent::default()
        };
        let created = self.ado.add_agent(&self.org, self.pool_id, &agent).await?;
        self.registered.fetch_add(1, Ordering::SeqCst);
        created
            .map(|a| a.id)
            .ok_or_else(|| Error::Config(format!("agent {name} already registered")))
    }

    /// Tokens the simulated agents requested.
    fn token_requests(&self) -> u64 {
        ["success", "error"]
            .into_iter()
            .map(|result| {
                self.tokens
                    .requests
                    .get_or_create(&ado_scaler::telemetry::ResultLabels { result })
                    .get()
            })
            .sum()
    }

    async fn deregister(&self, agent_id: u32) {
        if let Err(e) = self
            .ado
            .delete_agent(&self.org, self.pool_id, agent_id)
            .await
        {
            tracing::warn!(error = %e, "simulated agent could not deregister");
        }
    }
}

/// How a simulated agent ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fate {
    /// Runs its job (or idles out), tears down and deregisters.
    Deregisters,
    /// OOM-killed, evicted or its node lost this far (0 to 1) into its job: no deregistration,
    /// and ADO fails the job once it notices the agent is gone.
    KilledRunning(f64),
    /// SIGKILLed at the end of the grace period while tearing down: the job succeeded, the
    /// registration stays.
    KilledTearingDown,
}

/// What every simulated agent shares.
#[derive(Clone)]
pub(super) struct World {
    pub(super) config: DemoConfig,
    pub(super) stats: Shared,
    pub(super) ado: AdoSim,
    pub(super) kube: KubeSim,
    pub(super) pool_id: u32,
    pub(super) enrolment: Enrolment,
    pub(super) stop: tokio_util::sync::CancellationToken,
}

/// How long ADO takes to fail the job of an agent that vanished (minutes in reality).
const LOST_AGENT_NOTICED_AFTER: Duration = Duration::from_secs(1);

/// One agent pod, from its Job's creation until its pod is gone.
pub(super) async fn simulated_agent(
    world: World,
    slot: usize,
    name: String,
    capabilities: BTreeMap<String, String>,
    fate: Fate,
) {
    let World {
        config,
        stats,
        ado,
        kube,
        pool_id,
        enrolment,
        stop,
    } = world;
    // Shared by the steps below, each a closure or a future of its own.
    let (kube, name, enrolment) = (&kube, name.as_str(), &enrolment);
    let scaled_job = stats.lock().expect("stats").agents[slot].0;
    let set = |phase| stats.lock().expect("stats").agents[slot].1 = phase;
    // The pod exists from the Job's creation; when the agent is done, its Job is cleaned up.
    match enrolment {
        Enrolment::JustInTime(jit) => {
            let (scaled, uid) = &jit.scaled_jobs[scaled_job];
            let job = kube.create_job(SIM_AGENT_NAMESPACE, (scaled, uid), name);
            kube.create_agent_pod(
                SIM_AGENT_NAMESPACE,
                name,
                DEFAULT_SERVICE_ACCOUNT,
                Some((&job.0, &job.1)),
            );
        }
        Enrolment::SelfRegistration(_) => kube.create_pod(SIM_AGENT_NAMESPACE, name),
    }
    let pod_gone = || {
        kube.delete_pod(SIM_AGENT_NAMESPACE, name);
        kube.delete_custom("batch", "jobs", SIM_AGENT_NAMESPACE, name);
    };
    let killed = |phase: &str| {
        // The listener's session drops: ADO marks the agent offline. No deregistration.
        ado.set_agent_online(pool_id, name, false);
        pod_gone();
        let mut s = stats.lock().expect("stats");
        s.killed.push(name.to_owned());
        s.agents[slot].1 = Phase::Done;
        tracing::debug!(agent = name, phase, "simulated agent killed");
    };
    // The init container (or `config.sh`) registers while the pod starts.
    let registered = async {
        match enrolment {
            Enrolment::JustInTime(jit) => jit.prepare(kube, name).await,
            Enrolment::SelfRegistration(own) => own.register(name, &capabilities).await,
        }
    };
    let agent_id = tokio::select! {
        (_, registered) = async { tokio::join!(tokio::time::sleep(config.pod_start), registered) } => registered,
        () = stop.cancelled() => return,
    };
    let agent_id = match agent_id {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(agent = name, error = %e, "simulated agent could not register");
            pod_gone();
            set(Phase::Done);
            return;
        }
    };
    // The listener opens its session.
    ado.set_agent_online(pool_id, name, true);
    set(Phase::Idle);
    let leave = |agent_id| async move {
        match enrolment {
            // The agent container exits; the registrar deregisters it.
            Enrolment::JustInTime(_) => {
                kube.terminate_container(SIM_AGENT_NAMESPACE, name, AGENT_CONTAINER, 0);
            }
            Enrolment::SelfRegistration(own) => own.deregister(agent_id).await,
        }
        pod_gone();
        set(Phase::Done);
    };
    // As `ado-scaler agent --idle-timeout`: an agent whose job was cancelled or taken leaves.
    let idle_since = Instant::now();
    let idle_until = (!config.idle_timeout.is_zero()).then(|| idle_since + config.idle_timeout);
    let mut starved = false;
    let idled = |stats: &Shared| {
        stats.lock().expect("stats").idle += idle_since.elapsed();
    };
    let request_id = loop {
        if let Some(id) = ado.assign_next(pool_id, name, &capabilities) {
            idled(&stats);
            break id;
        }
        // The jobs it could run are queued but past the organisation's parallel jobs.
        if !starved && ado.waits_for_parallelism(pool_id, name, &capabilities) {
            starved = true;
            stats.lock().expect("stats").without_parallel_job += 1;
        }
        if idle_until.is_some_and(|t| Instant::now() >= t) {
            idled(&stats);
            set(Phase::TearingDown);
            tokio::time::sleep(config.teardown).await;
            stats.lock().expect("stats").left_idle += 1;
            leave(agent_id).await;
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = stop.cancelled() => {
                idled(&stats);
                return;
            }
        }
    };
    set(Phase::Running);
    let run_for = {
        let mut s = stats.lock().expect("stats");
        if let Some(job) = ado.job(request_id)
            && let (Some(q), Some(a)) = (job.queue_time, job.assign_time)
        {
            s.waits.push((a - q).try_into().unwrap_or_default());
        }
        s.durations
            .get(&request_id)
            .copied()
            .unwrap_or(config.job_run.0)
    };
    if let Fate::KilledRunning(into) = fate {
        tokio::time::sleep(run_for.mul_f64(into.clamp(0.0, 1.0))).await;
        killed("running");
        tokio::time::sleep(LOST_AGENT_NOTICED_AFTER).await;
        ado.finish(request_id, "failed");
        stats.lock().expect("stats").lost += 1;
        return;
    }
    tokio::time::sleep(run_for).await;
    ado.finish(request_id, "succeeded");
    set(Phase::TearingDown);
    {
        let mut s = stats.lock().expect("stats");
        s.completed += 1;
        s.ran_a_job += 1;
    }
    tokio::time::sleep(config.teardown).await;
    if fate == Fate::KilledTearingDown {
        killed("tearing down");
        return;
    }
    leave(agent_id).await;
}
