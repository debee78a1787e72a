//! `ado-scaler check`: runs the real auth and REST calls of the scaler (or an agent) and prints
//! a checklist, ✔ or ✗ with the fix, so that a setup mistake explains itself.

mod access;
mod clients;
mod collector;
mod registrar;

use std::{fmt, sync::Arc};

use crate::{
    ado::{AdoClient, OrgUrl},
    auth::{
        AssertionClaims, AuthMode, AuthSettings, CredentialSettings, TokenSource, WorkloadIdentity,
    },
    count::{Filter, claims},
    error::{Error, Result},
    gc::GcSettings,
    placeholder,
    poller::Answer,
    scaler::{access::Access, metadata::Trigger},
};

const AUDIENCE: &str = "api://AzureADTokenExchange";

/// Which pod `check` runs as: decides the expected service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckAs {
    Scaler,
    Agent,
}

/// What to check, from `check`'s flags.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    pub org: String,
    pub pool: String,
    /// A trigger's demands (comma list).
    pub demands: String,
    /// One `capabilities` list per ScaledJob on the pool.
    pub capabilities: Vec<String>,
    pub agent_name_prefix: Option<String>,
    /// Check (and register if missing) each trigger's placeholder.
    pub placeholder: bool,
    pub as_: CheckAs,
    /// Expected service account as `namespace:name`; `None`: deploy/'s for `as_`.
    pub service_account: Option<String>,
    pub scaler_metrics_url: Option<String>,
    pub credential: CredentialSettings,
    /// The collector's settings as `serve` would validate them (the error names the flag).
    pub gc: std::result::Result<Option<GcSettings>, String>,
    /// `--allowed-*` as `serve` would validate them.
    pub access: std::result::Result<Access, String>,
    /// `--max-pools` as `serve` would validate it.
    pub max_pools: std::result::Result<usize, String>,
    /// The namespace of the trigger's ScaledJob; `None`: the namespace list is not judged.
    pub namespace: Option<String>,
    /// With `as_` agent: just-in-time registration, the registrar checked instead of Entra.
    pub registrar: Option<RegistrarProbe>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Information, not a verdict (e.g. how a queued job would be counted).
    Info,
    /// Not run: an earlier check failed.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub status: Status,
    pub title: String,
    pub detail: String,
    pub fix: Option<String>,
}

/// The checklist.
#[derive(Debug, Default)]
pub struct Report {
    pub items: Vec<Item>,
}

impl Report {
    fn push(
        &mut self,
        status: Status,
        title: &str,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.items.push(Item {
            status,
            title: title.to_owned(),
            detail: detail.into(),
            fix,
        });
    }

    fn pass(&mut self, title: &str, detail: impl Into<String>) {
        self.push(Status::Pass, title, detail, None);
    }

    fn fail(&mut self, title: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Fail, title, detail, Some(fix.into()));
    }

    fn skip(&mut self, titles: &[&str]) {
        for title in titles {
            self.push(
                Status::Skipped,
                title,
                "skipped: an earlier check failed",
                None,
            );
        }
    }

    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| i.status != Status::Fail)
    }

    pub fn item(&self, title: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.title == title)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            let mark = match item.status {
                Status::Pass => "✔",
                Status::Fail => "✗",
                Status::Info => "·",
                Status::Skipped => "-",
            };
            writeln!(f, "{mark} {}: {}", item.title, item.detail)?;
            if let Some(fix) = &item.fix {
                writeln!(f, "    fix: {fix}")?;
            }
        }
        let failed = self
            .items
            .iter()
            .filter(|i| i.status == Status::Fail)
            .count();
        match failed {
            0 => write!(f, "all checks passed"),
            n => write!(f, "{n} check(s) failed"),
        }
    }
}

pub const WI_VARIABLES: &str = "workload identity variables";
pub const FEDERATED_TOKEN: &str = "federated token";
pub const TOKEN_EXCHANGE: &str = "token exchange";
pub const REACHABLE: &str = "organisation reachable";
pub const ACCEPTED: &str = "identity accepted";
pub const POOL_FOUND: &str = "pool found";
pub const JOBS_READABLE: &str = "job requests readable";
pub const PLACEHOLDER: &str = "placeholder registration";
pub const UNCLAIMED: &str = "unclaimed jobs";
pub const PARALLEL_JOBS: &str = "parallel jobs";
pub use access::{ACCESS_SETTINGS, TRIGGER_ALLOWED};
pub use clients::{GRPC_CLIENTS, POOL_BOUND, REFRESH, REFUSED_CALLS, check_clients};
pub use collector::{GC_API, GC_LEASE, GC_PODS, GC_SETTINGS, GC_STALE};
pub use registrar::{REGISTRAR_CA, REGISTRAR_REACHABLE, REGISTRAR_TOKEN, RegistrarProbe};

/// Runs the checks and prints the report; exit code 1 when any check failed.
pub async fn run(args: CheckSettings) -> Result<u8> {
    let report = check(&args, &|name| std::env::var(name).ok()).await;
    println!("{report}");
    Ok(if report.ok() { 0 } else { 1 })
}

/// Runs every check it can; `env` reads the pod's environment.
pub async fn check(args: &CheckSettings, env: &dyn Fn(&str) -> Option<String>) -> Report {
    let mut report = Report::default();
    // First: it needs no identity, and the checks below may end early.
    if let Some(url) = &args.scaler_metrics_url {
        clients::check_clients(url, &mut report).await;
    }
    // Needs no identity either: the scaler refuses such a trigger before asking ADO.
    let admitted = access::check_access(args, &mut report);
    if let (CheckAs::Agent, Some(probe)) = (args.as_, &args.registrar) {
        let expected = args
            .service_account
            .clone()
            .unwrap_or_else(|| "ado-agents:ado-agent".to_owned());
        registrar::check_registrar(probe, &expected, &mut report).await;
        report.push(
            Status::Info,
            "agent identity",
            "none: with just-in-time registration the agent pod holds no Entra identity, so Entra and Azure DevOps are checked from the scaler (check --as scaler)",
            None,
        );
        return report;
    }
    let remote = [
        TOKEN_EXCHANGE,
        REACHABLE,
        ACCEPTED,
        POOL_FOUND,
        JOBS_READABLE,
    ];

    let org = match OrgUrl::parse(&args.org) {
        Ok(org) => org,
        Err(e) => {
            report.fail(
                "organisation URL",
                e.to_string(),
                "pass --org https://dev.azure.com/ORG",
            );
            return report;
        }
    };

    let settings = match args.credential.resolve(env) {
        Ok(AuthSettings::WorkloadIdentity(wi)) => {
            federated_token(args, &wi, &mut report);
            AuthSettings::WorkloadIdentity(wi)
        }
        Ok(settings) => settings,
        Err(e) => {
            let detail = match e {
                Error::Config(detail) => detail,
                other => other.to_string(),
            };
            match args.credential.mode {
                AuthMode::WorkloadIdentity => {
                    report.fail(WI_VARIABLES, detail, WI_FIX);
                    report.skip(&[FEDERATED_TOKEN]);
                }
                AuthMode::ManagedIdentity => {
                    report.fail("managed identity", detail, "see the message")
                }
                AuthMode::Pat => report.fail(
                    "PAT file",
                    detail,
                    "pass --pat-file, or use workload identity",
                ),
            }
            report.skip(&remote);
            return report;
        }
    };

    let http = match args.credential.http_client() {
        Ok(http) => http,
        Err(e) => {
            report.fail("CA file", e.to_string(), "point --ca-file at a PEM bundle");
            report.skip(&remote);
            return report;
        }
    };
    let source = match TokenSource::new(&settings, &http, None) {
        Ok(source) => source,
        Err(e) => {
            report.fail(TOKEN_EXCHANGE, e.to_string(), "see the message");
            report.skip(&remote[1..]);
            return report;
        }
    };
    match source.token().await {
        Ok(_) => report.pass(TOKEN_EXCHANGE, "Entra issued a token for Azure DevOps"),
        Err(e) => {
            let (detail, fix) = match e {
                Error::Token { message, hint } => (
                    message,
                    hint.unwrap_or("check the identity's federated credentials and client id"),
                ),
                other => (other.to_string(), "see the message"),
            };
            report.fail(TOKEN_EXCHANGE, detail, fix);
            report.skip(&remote[1..]);
            return report;
        }
    }

    let ado = AdoClient::new(http, source, Arc::default());
    let pool = match ado.find_pool(&org, &args.pool).await {
        Ok(pool) => {
            report.pass(REACHABLE, org.to_string());
            report.pass(ACCEPTED, "Azure DevOps answers this identity with JSON");
            report.pass(POOL_FOUND, format!("{} (id {})", pool.name, pool.id));
            pool
        }
        Err(e) => {
            explain_pool_error(&mut report, &org, &args.pool, e);
            if report.item(JOBS_READABLE).is_none() {
                report.skip(&[JOBS_READABLE]);
            }
            return report;
        }
    };

    // `check` has no `parent` triggers: no matched agent names are kept.
    let mut answer = Answer::default();
    match ado.job_requests(&org, pool.id, &mut answer).await {
        Ok(_) => {}
        Err(e) => {
            let fix = match &e {
                Error::Forbidden { .. } | Error::NotAccepted { .. } => {
                    format!(
                        "give the identity a role on pool {} (Organization settings > Agent pools > Security)",
                        pool.name
                    )
                }
                _ => "retry; if it persists, see the scaler's logs".to_owned(),
            };
            report.fail(JOBS_READABLE, e.to_string(), fix);
            return report;
        }
    };
    let jobs = answer.jobs;
    let queued = jobs.iter().filter(|j| j.is_queued()).count();
    report.pass(
        JOBS_READABLE,
        format!(
            "{} unfinished: {queued} queued, {} in flight",
            jobs.len(),
            jobs.len() - queued
        ),
    );

    parallel_jobs(&ado, &org, pool.id, &jobs, &mut report).await;

    let Some(triggers) = admitted else {
        report.skip(&[UNCLAIMED]);
        return report;
    };
    if args.as_ == CheckAs::Scaler && args.placeholder {
        check_placeholders(&ado, &org, pool.id, &pool.name, &triggers, &mut report).await;
    }
    let named: Vec<(String, Filter)> = triggers
        .iter()
        .map(|(n, t)| (n.clone(), t.filter.clone()))
        .collect();
    let found = claims(&jobs, &named);
    let several = named.len() > 1;
    for claim in &found {
        let job = claim.job;
        let what = format!(
            "job {} ({})",
            job.request_id,
            job.definition.as_deref().unwrap_or("?")
        );
        let verdict = if claim.is_unclaimed() {
            let reasons: Vec<String> = claim
                .refused_by
                .iter()
                .map(|(name, why)| {
                    if several {
                        format!("{name}: {why}")
                    } else {
                        why.to_string()
                    }
                })
                .collect();
            format!("not counted: {}", reasons.join("; "))
        } else if claim.is_multiclaimed() {
            format!(
                "counted by {}: each starts an agent for it",
                claim.claimed_by.join(" and ")
            )
        } else {
            "counted".to_owned()
        };
        report.push(Status::Info, &what, verdict, None);
    }
    let unclaimed: Vec<String> = found
        .iter()
        .filter(|c| c.is_unclaimed())
        .map(|c| c.job.request_id.to_string())
        .collect();
    report.push(
        Status::Info,
        UNCLAIMED,
        if unclaimed.is_empty() {
            "none: every queued job is counted by a trigger".to_owned()
        } else {
            format!(
                "{} queued job(s) no trigger counts, no agent will start for them: {}",
                unclaimed.len(),
                unclaimed.join(", ")
            )
        },
        None,
    );
    if args.as_ == CheckAs::Scaler {
        collector::check_collector(args, &ado, &mut report).await;
    }
    if args.as_ == CheckAs::Agent {
        report.push(
            Status::Info,
            "agent registration",
            "registering needs the Administrator role on the pool; check cannot test it without registering",
            None,
        );
    }
    report
}

/// The organisation's parallel jobs, and how many of this pool's queued jobs wait for one (as
/// `serve` caps them; other watched pools of the organisation would share the free ones).
async fn parallel_jobs(
    ado: &AdoClient,
    org: &OrgUrl,
    pool_id: u32,
    jobs: &[crate::count::Job],
    report: &mut Report,
) {
    use crate::count::parallelism::{PoolJobs, cap};
    match ado.resource_usage(org).await {
        Ok(usage) => {
            let cap = cap(&usage, &[PoolJobs { pool_id, jobs }]);
            report.push(
                Status::Info,
                PARALLEL_JOBS,
                format!(
                    "{} self-hosted parallel job(s): {} running, {} free; {} of this pool's queued job(s) wait for one and are not counted",
                    cap.total,
                    cap.running,
                    cap.free,
                    cap.waiting.len()
                ),
                None,
            );
        }
        Err(e) => report.push(
            Status::Info,
            PARALLEL_JOBS,
            format!("cannot be read ({e}): serve counts every queued job, uncapped"),
            Some(
                "nothing to do unless you want the cap: the identity reads it as it reads the pool's jobs; see README, Parallel jobs"
                    .into(),
            ),
        ),
    }
}

/// Checks (and creates, as `serve` would) each trigger's placeholder registration.
async fn check_placeholders(
    ado: &AdoClient,
    org: &OrgUrl,
    pool_id: u32,
    pool_name: &str,
    triggers: &[(String, Trigger)],
    report: &mut Report,
) {
    for (name, trigger) in triggers {
        let Some(spec) = &trigger.placeholder else {
            continue;
        };
        let title = format!("{PLACEHOLDER} {}", spec.name);
        match placeholder::ensure(ado, org, pool_id, spec).await {
            Ok(done) => report.pass(&title, format!("{done:?} for {name}: ADO queues jobs while no agent runs")),
            Err(e @ Error::Forbidden { .. }) => report.fail(
                &title,
                e.to_string(),
                format!(
                    "give the identity the Administrator role on pool {pool_name} (Organization settings > Agent pools > {pool_name} > Security; \
                     Reader or Service Account cannot register agents). Without a registration that satisfies a job's demands, \
                     ADO fails the job at once while the pool is scaled to zero. Or keep your own registration and set placeholder: \"false\""
                ),
            ),
            Err(e) => report.fail(&title, e.to_string(), "retry; if it persists, see the scaler's logs".to_owned()),
        }
    }
}

const WI_FIX: &str = "label the pod azure.workload.identity/use: \"true\", annotate its service account with \
     azure.workload.identity/client-id, and make sure the cluster has workload identity \
     enabled (az aks update --enable-oidc-issuer --enable-workload-identity)";

/// The webhook's variables are there: say so, then check the projected token they point at
/// (audience, expiry, the service account it names) before Entra is asked.
fn federated_token(args: &CheckSettings, wi: &WorkloadIdentity, report: &mut Report) {
    report.pass(
        WI_VARIABLES,
        format!(
            "AZURE_CLIENT_ID={}, AZURE_TENANT_ID={}, AZURE_FEDERATED_TOKEN_FILE={}",
            wi.client_id,
            wi.tenant_id,
            wi.token_file.display()
        ),
    );

    let expected = args.service_account.clone().unwrap_or_else(|| {
        match args.as_ {
            CheckAs::Scaler => "ado-scaler:ado-scaler",
            CheckAs::Agent => "ado-agents:ado-agent",
        }
        .to_owned()
    });
    let expected_subject = format!("system:serviceaccount:{expected}");
    let Some(claims) = std::fs::read_to_string(&wi.token_file)
        .ok()
        .and_then(|t| AssertionClaims::from_jwt(&t))
    else {
        report.fail(
            FEDERATED_TOKEN,
            format!(
                "{} is missing, unreadable or not a JWT",
                wi.token_file.display()
            ),
            "the workload identity webhook mounts it; restart the pod after labelling it",
        );
        return;
    };
    let shown = format!(
        "iss={}, sub={}, aud={}",
        claims.iss,
        claims.sub,
        claims.aud.join(" ")
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if !claims.aud.iter().any(|a| a == AUDIENCE) {
        report.fail(
            FEDERATED_TOKEN,
            shown,
            format!("the token's audience must be {AUDIENCE}: is this the webhook's token?"),
        );
    } else if claims.exp.is_some_and(|exp| exp <= now) {
        report.fail(
            FEDERATED_TOKEN,
            format!("{shown}; expired"),
            "kubelet refreshes the projected token; check the volume",
        );
    } else if claims.sub != expected_subject {
        report.fail(
            FEDERATED_TOKEN,
            format!("{shown}; expected sub={expected_subject}"),
            format!(
                "run the pod as service account {expected}, or register a federated credential for {} \
                 (deploy/azure/setup.sh)",
                claims.sub
            ),
        );
    } else {
        report.pass(FEDERATED_TOKEN, shown);
    }
}

fn explain_pool_error(report: &mut Report, org: &OrgUrl, pool: &str, err: Error) {
    match err {
        Error::Transport { reason, .. } => {
            report.fail(REACHABLE, format!("{org}: {reason}"), "check DNS, egress network policies, proxies, and --ca-file for a TLS-inspecting proxy");
            report.skip(&[ACCEPTED, POOL_FOUND]);
        }
        e @ Error::NotAccepted { .. } => {
            report.pass(REACHABLE, org.to_string());
            report.fail(
                ACCEPTED,
                e.to_string(),
                format!("add the identity to {org} (Organization settings > Users > Add, or deploy/azure/setup.sh)"),
            );
            report.skip(&[POOL_FOUND]);
        }
        Error::NotFound(what) => {
            report.pass(REACHABLE, org.to_string());
            report.pass(ACCEPTED, "Azure DevOps answers this identity with JSON");
            report.fail(
                POOL_FOUND,
                format!("{what} (ADO lists only pools the identity has a role on)"),
                format!("create pool {pool}, fix --pool, or give the identity a role on it"),
            );
        }
        e @ (Error::Forbidden { .. } | Error::AmbiguousPool { .. }) => {
            report.pass(REACHABLE, org.to_string());
            report.pass(ACCEPTED, "Azure DevOps answers this identity with JSON");
            report.fail(
                POOL_FOUND,
                e.to_string(),
                "give the identity a role on the pool, or use poolID",
            );
        }
        e => {
            report.fail(
                REACHABLE,
                e.to_string(),
                "retry; Azure DevOps answered with an error",
            );
            report.skip(&[ACCEPTED, POOL_FOUND]);
        }
    }
}
