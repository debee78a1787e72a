//! Which job requests count for a trigger. Pure: no I/O, no clock reads.
//!
//! The poller turns each ADO snapshot into [`Job`]s once; every trigger on the
//! pool then filters the same slice with its own [`Filter`], and [`claims`] tells
//! which queued jobs no trigger, or more than one, counts.

pub mod demand;
pub mod parallelism;
pub mod request;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

pub use demand::{Capabilities, Demand, Requirement, parse_demands};

use tokio::time::Instant;

pub use request::JobRequestView;

/// Agent names a pool's `parent` triggers ask about.
pub type AgentNames = BTreeSet<String>;

/// The part of a job request that counting needs, extracted once per poll.
///
/// Compact because a snapshot of a big pool holds hundreds: the parsed demands are shared
/// by every job with the same list ([`DemandSets`]), and of the agents ADO matched only the
/// names a `parent` trigger asks about are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub request_id: u64,
    /// KEDA-normalised demands without `Agent.Version`, for `demands` triggers.
    pub demands: Arc<[Demand]>,
    /// Every demand as ADO evaluates it, for `capabilities` triggers.
    pub requirements: Arc<[Requirement]>,
    /// The pipeline's name, for logs.
    pub definition: Option<String>,
    pub matches_all_agents: bool,
    /// The matched agents among the names the job was read for (see [`Job::from_view`]).
    pub matched_agents: Vec<String>,
    /// The agent the job is assigned to; `None` while it is queued.
    pub reserved_agent: Option<String>,
    pub queue_time: Option<time::OffsetDateTime>,
    pub assign_time: Option<time::OffsetDateTime>,
    /// It takes one of the organisation's private parallel jobs ([`parallelism`]).
    pub private_parallelism: bool,
}

/// Parsed demand lists of one poll, shared between the jobs that have the same list: a pool's
/// jobs come from a handful of pipelines, so a few lists cover hundreds of jobs.
#[derive(Debug, Default)]
pub struct DemandSets {
    sets: HashMap<Vec<String>, ParsedDemands>,
}

/// One demand list parsed both ways: for `demands` triggers and for `capabilities` ones.
pub type ParsedDemands = (Arc<[Demand]>, Arc<[Requirement]>);

impl DemandSets {
    /// The parsed forms of `raw`, parsed once per distinct list.
    pub fn get<S: AsRef<str>>(&mut self, raw: &[S]) -> ParsedDemands {
        let key: Vec<String> = raw.iter().map(|d| d.as_ref().to_owned()).collect();
        let (demands, requirements) = self.sets.entry(key).or_insert_with_key(|raw| {
            (
                parse_demands(raw.iter().map(String::as_str)).into(),
                raw.iter().map(|d| Requirement::parse(d)).collect(),
            )
        });
        (demands.clone(), requirements.clone())
    }

    /// Distinct demand lists seen.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

impl Job {
    /// `None` for a finished request. Of the matched agents, only those `wanted` (the
    /// `parent` names of the pool's triggers) are kept.
    pub fn from_view(
        req: &JobRequestView<'_>,
        wanted: &AgentNames,
        demand_sets: &mut DemandSets,
    ) -> Option<Self> {
        if req.is_finished() {
            return None;
        }
        let assigned = req.assign_time.is_some() || req.reserved_agent.is_some();
        let (demands, requirements) = demand_sets.get(&req.demands);
        let matched_agents = match wanted.is_empty() {
            true => Vec::new(),
            false => req
                .matched_agents
                .iter()
                .flatten()
                .filter(|a| wanted.contains(a.name.as_ref()))
                .map(|a| a.name.clone().into_owned())
                .collect(),
        };
        Some(Self {
            request_id: req.request_id,
            demands,
            requirements,
            definition: req.definition.as_ref().map(|d| d.name.clone().into_owned()),
            matches_all_agents: req.matches_all_agents_in_pool,
            matched_agents,
            reserved_agent: assigned.then(|| {
                req.reserved_agent
                    .as_ref()
                    .map(|a| a.name.clone().into_owned())
                    .unwrap_or_default()
            }),
            queue_time: req.queue_time,
            assign_time: req.assign_time,
            private_parallelism: req.takes_private_parallel_job(),
        })
    }

    pub fn is_queued(&self) -> bool {
        self.reserved_agent.is_none()
    }
}

/// A job that was in flight at one poll and finished or vanished by a later one.
#[derive(Debug, Clone, PartialEq)]
pub struct Departed {
    pub job: Job,
    /// When the poller noticed the departure.
    pub left_at: Instant,
}

/// How a trigger's demands are compared with a job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemandRule {
    /// Every job demand is among the trigger's (a job with no demands matches).
    #[default]
    JobSubsetOfTrigger,
    /// `requireAllDemands`: the two sets are equal.
    Equal,
    /// `requireAllDemandsAndIgnoreOthers`: every trigger demand is among the job's.
    TriggerSubsetOfJob,
}

/// One trigger's view of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// What this trigger's agents offer (system capabilities included): when set, a job
    /// counts only if ADO would find every one of its demands satisfied, and `demands`,
    /// `rule`, `case_insensitive` and `parent` are unused.
    pub capabilities: Option<Capabilities>,
    pub demands: Vec<Demand>,
    pub rule: DemandRule,
    pub case_insensitive: bool,
    /// Template agent: when set, demands are ignored and ADO's own matching decides.
    pub parent: Option<String>,
    pub scale_on_in_flight: bool,
    pub agent_name_prefix: Option<String>,
    pub teardown_window: Duration,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            capabilities: None,
            demands: Vec::new(),
            rule: DemandRule::default(),
            case_insensitive: false,
            parent: None,
            scale_on_in_flight: true,
            agent_name_prefix: None,
            teardown_window: Duration::from_secs(10),
        }
    }
}

/// A trigger's value, split by where each counted job stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub queued: u64,
    pub in_flight: u64,
    pub tearing_down: u64,
    /// Matching queued jobs not counted: they wait for a parallel job ([`parallelism`]).
    pub waiting_for_parallelism: u64,
}

impl Counted {
    pub fn total(&self) -> u64 {
        self.queued + self.in_flight + self.tearing_down
    }
}

/// Why a job does not match a trigger, for the `check` command and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The job needs a demand the trigger does not offer.
    JobDemandNotOffered(String),
    /// The trigger requires a demand the job lacks.
    TriggerDemandMissing(String),
    /// `parent` is not among the agents ADO matched for the job.
    ParentNotMatched(String),
    /// The trigger's capabilities do not satisfy this job demand (or ADO could not parse it).
    DemandNotMet(String),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JobDemandNotOffered(d) => write!(f, "job demand `{d}` is not in `demands`"),
            Self::TriggerDemandMissing(d) => write!(f, "trigger demand `{d}` is not in the job"),
            Self::ParentNotMatched(p) => write!(f, "`parent` {p} is not a matched agent"),
            Self::DemandNotMet(d) => write!(f, "job demand `{d}` is not met by `capabilities`"),
        }
    }
}

impl Filter {
    /// `Ok` when the trigger's agents can run `job`, otherwise the first reason they cannot.
    pub fn check(&self, job: &Job) -> Result<(), Mismatch> {
        if let Some(caps) = &self.capabilities {
            return match job.requirements.iter().find(|r| !r.satisfied_by(caps)) {
                None => Ok(()),
                Some(unmet) => Err(Mismatch::DemandNotMet(unmet.to_string())),
            };
        }
        if let Some(parent) = &self.parent {
            return if job.matches_all_agents || job.matched_agents.iter().any(|a| a == parent) {
                Ok(())
            } else {
                Err(Mismatch::ParentNotMatched(parent.clone()))
            };
        }
        if self.demands.is_empty() {
            return Ok(());
        }
        let ci = self.case_insensitive;
        let missing_in = |needles: &[Demand], hay: &[Demand]| {
            needles
                .iter()
                .find(|n| !hay.iter().any(|h| h.same(n, ci)))
                .map(ToString::to_string)
        };
        let job_not_offered = || missing_in(&job.demands, &self.demands);
        let trigger_missing = || missing_in(&self.demands, &job.demands);
        let failure = match self.rule {
            DemandRule::JobSubsetOfTrigger => job_not_offered().map(Mismatch::JobDemandNotOffered),
            DemandRule::TriggerSubsetOfJob => trigger_missing().map(Mismatch::TriggerDemandMissing),
            DemandRule::Equal => job_not_offered()
                .map(Mismatch::JobDemandNotOffered)
                .or_else(|| trigger_missing().map(Mismatch::TriggerDemandMissing)),
        };
        failure.map_or(Ok(()), Err)
    }

    pub fn matches(&self, job: &Job) -> bool {
        self.check(job).is_ok()
    }

    fn on_our_agent(&self, job: &Job) -> bool {
        match (&self.agent_name_prefix, &job.reserved_agent) {
            (None, _) => true,
            (Some(prefix), Some(agent)) => agent.starts_with(prefix.as_str()),
            (Some(_), None) => false,
        }
    }

    /// The trigger's value at `now`: matching queued jobs, plus (with `scaleOnInFlight`)
    /// matching jobs on our agents that are running or left that state less than
    /// `teardown_window` ago.
    pub fn count(&self, jobs: &[Job], departed: &[Departed], now: Instant) -> Counted {
        self.count_within(jobs, departed, now, &HashSet::new())
    }

    /// Like [`Self::count`], leaving out the queued jobs in `held_back` (by request id): they
    /// wait for a parallel job, and an agent started for them would wait too.
    pub fn count_within(
        &self,
        jobs: &[Job],
        departed: &[Departed],
        now: Instant,
        held_back: &HashSet<u64>,
    ) -> Counted {
        let mut counted = Counted::default();
        let mut memo = MatchMemo::default();
        for job in jobs.iter().filter(|j| memo.matches(self, j)) {
            if job.is_queued() {
                // Most counts hold nothing back: no hashing then.
                if !held_back.is_empty() && held_back.contains(&job.request_id) {
                    counted.waiting_for_parallelism += 1;
                } else {
                    counted.queued += 1;
                }
            } else if self.scale_on_in_flight && self.on_our_agent(job) {
                counted.in_flight += 1;
            }
        }
        if self.scale_on_in_flight && !self.teardown_window.is_zero() {
            counted.tearing_down = departed
                .iter()
                .filter(|d| now.saturating_duration_since(d.left_at) < self.teardown_window)
                .filter(|d| self.on_our_agent(&d.job) && self.matches(&d.job))
                .count() as u64;
        }
        counted
    }
}

/// Remembers, within one count, whether the filter matches each shared demand list: without
/// `parent`, a job's match depends on its demands alone, and a big pool's hundreds of jobs
/// share a few lists ([`DemandSets`]). Counting is then a pass over the jobs, not hundreds of
/// demand comparisons, on every KEDA call.
#[derive(Default)]
struct MatchMemo {
    lists: Vec<(*const [Demand], *const [Requirement], bool)>,
}

impl MatchMemo {
    /// Past this many distinct lists, matching is not remembered (nor the memo searched).
    const MAX_LISTS: usize = 16;

    fn matches(&mut self, filter: &Filter, job: &Job) -> bool {
        if filter.parent.is_some() {
            return filter.matches(job);
        }
        let (demands, requirements) = (Arc::as_ptr(&job.demands), Arc::as_ptr(&job.requirements));
        let known = self
            .lists
            .iter()
            .find(|(d, r, _)| std::ptr::eq(*d, demands) && std::ptr::eq(*r, requirements));
        if let Some(&(_, _, matched)) = known {
            return matched;
        }
        let matched = filter.matches(job);
        if self.lists.len() < Self::MAX_LISTS {
            self.lists.push((demands, requirements, matched));
        }
        matched
    }
}

/// Who counts one queued job: the triggers that do, and why each other one does not.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim<'a> {
    pub job: &'a Job,
    pub claimed_by: Vec<&'a str>,
    pub refused_by: Vec<(&'a str, Mismatch)>,
}

impl Claim<'_> {
    /// No agent will ever start for this job.
    pub fn is_unclaimed(&self) -> bool {
        self.claimed_by.is_empty()
    }

    /// Several ScaledJobs start an agent for it; all but one are wasted.
    pub fn is_multiclaimed(&self) -> bool {
        self.claimed_by.len() > 1
    }
}

/// For every queued job, which of the named triggers count it.
pub fn claims<'a>(jobs: &'a [Job], triggers: &'a [(String, Filter)]) -> Vec<Claim<'a>> {
    jobs.iter()
        .filter(|j| j.is_queued())
        .map(|job| {
            let mut claim = Claim {
                job,
                claimed_by: Vec::new(),
                refused_by: Vec::new(),
            };
            for (name, filter) in triggers {
                match filter.check(job) {
                    Ok(()) => claim.claimed_by.push(name),
                    Err(why) => claim.refused_by.push((name, why)),
                }
            }
            claim
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, demands: &[&str], agent: Option<&str>) -> Job {
        Job {
            request_id: id,
            demands: parse_demands(demands.iter().copied()).into(),
            requirements: demands.iter().map(|d| Requirement::parse(d)).collect(),
            definition: None,
            matches_all_agents: false,
            matched_agents: vec![],
            reserved_agent: agent.map(str::to_owned),
            queue_time: None,
            assign_time: None,
            private_parallelism: true,
        }
    }

    fn filter(demands: &[&str], rule: DemandRule, ci: bool) -> Filter {
        Filter {
            demands: parse_demands(demands.iter().copied()),
            rule,
            case_insensitive: ci,
            ..Filter::default()
        }
    }

    #[test]
    fn parses_demands() {
        let cases: &[(&str, Option<&str>)] = &[
            ("maven", Some("maven")),
            ("  java   -equals   17 ", Some("java -equals 17")),
            ("Agent.OS -Equals Linux", Some("Agent.OS -equals Linux")),
            ("docker -exists", Some("docker")),
            ("", None),
            ("   ", None),
        ];
        for (raw, want) in cases {
            assert_eq!(
                Demand::parse(raw).map(|d| d.to_string()).as_deref(),
                *want,
                "{raw:?}"
            );
        }
        let list = parse_demands(
            "maven, Agent.Version -gtVersion 3.0 ,agent.version -gtVersion 2, ,java".split(','),
        );
        assert_eq!(
            list.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["maven", "java"]
        );
    }

    #[test]
    fn demand_rules_table() {
        use DemandRule::*;
        // (trigger demands, rule, case-insensitive, job demands, matches)
        type Row = (
            &'static [&'static str],
            DemandRule,
            bool,
            &'static [&'static str],
            bool,
        );
        let table: &[Row] = &[
            // No trigger demands: every job counts, as in KEDA.
            (&[], JobSubsetOfTrigger, false, &["maven"], true),
            (&[], Equal, false, &["maven"], true),
            // Default: job demands must all be offered by the trigger.
            (
                &["maven", "java"],
                JobSubsetOfTrigger,
                false,
                &["maven"],
                true,
            ),
            (
                &["maven"],
                JobSubsetOfTrigger,
                false,
                &["maven", "java"],
                false,
            ),
            (&["maven"], JobSubsetOfTrigger, false, &[], true),
            // Agent.Version is removed from both sides.
            (
                &["maven"],
                JobSubsetOfTrigger,
                false,
                &["maven", "Agent.Version -gtVersion 3.1"],
                true,
            ),
            (
                &["maven", "Agent.Version -gtVersion 9"],
                Equal,
                false,
                &["maven"],
                true,
            ),
            // Spacing and operator case do not matter; value case does unless asked.
            (
                &["java -equals 17"],
                JobSubsetOfTrigger,
                false,
                &["java  -EQUALS 17"],
                true,
            ),
            (&["Maven"], JobSubsetOfTrigger, false, &["maven"], false),
            (&["Maven"], JobSubsetOfTrigger, true, &["maven"], true),
            (
                &["java -equals JDK17"],
                JobSubsetOfTrigger,
                true,
                &["JAVA -equals jdk17"],
                true,
            ),
            // requireAllDemands: sets equal.
            (&["maven", "java"], Equal, false, &["java", "maven"], true),
            (&["maven", "java"], Equal, false, &["maven"], false),
            (&["maven"], Equal, false, &["maven", "java"], false),
            // requireAllDemandsAndIgnoreOthers: trigger demands all present in the job.
            (
                &["maven"],
                TriggerSubsetOfJob,
                false,
                &["maven", "java"],
                true,
            ),
            (
                &["maven", "gpu"],
                TriggerSubsetOfJob,
                false,
                &["maven", "java"],
                false,
            ),
            (&["maven"], TriggerSubsetOfJob, false, &[], false),
            // A different condition is a different demand.
            (
                &["java -equals 17"],
                JobSubsetOfTrigger,
                false,
                &["java -equals 21"],
                false,
            ),
            (
                &["java"],
                JobSubsetOfTrigger,
                false,
                &["java -equals 21"],
                false,
            ),
        ];
        for (i, (t, rule, ci, j, want)) in table.iter().enumerate() {
            let f = filter(t, *rule, *ci);
            assert_eq!(
                f.matches(&job(1, j, None)),
                *want,
                "row {i}: {t:?} {rule:?} ci={ci} vs {j:?}"
            );
        }
    }

    fn with_caps(list: &str) -> Filter {
        Filter {
            capabilities: Some(Capabilities::parse(list).unwrap()),
            // Ignored once capabilities are set.
            demands: parse_demands(["nothing-matches-this"]),
            rule: DemandRule::TriggerSubsetOfJob,
            parent: Some("template".into()),
            ..Filter::default()
        }
    }

    #[test]
    fn capabilities_count_a_job_only_if_every_demand_is_met() {
        let f = with_caps("Agent.OS=Linux,Agent.Version=4.261.0,java=17,docker");
        // (job demands as ADO lists them, counted)
        let table: &[(&[&str], bool)] = &[
            (&[], true),
            (&["docker", "Agent.Version -gtVersion 2.163.1"], true),
            (
                &["DOCKER", "java -equals 17", "Agent.OS -equals linux"],
                true,
            ),
            (&["docker", "maven"], false),
            (&["java -equals 21"], false),
            (&["Agent.Version -gtVersion 4.300.0"], false),
            (&["docker -exists"], false),
        ];
        for (demands, want) in table {
            assert_eq!(f.matches(&job(1, demands, None)), *want, "{demands:?}");
        }
        assert_eq!(
            f.check(&job(1, &["docker", "maven", "gpu"], None)),
            Err(Mismatch::DemandNotMet("maven".into()))
        );
        let counted = f.count(
            &[job(1, &["docker"], None), job(2, &["gpu"], None)],
            &[],
            Instant::now(),
        );
        assert_eq!(counted.queued, 1);
    }

    #[test]
    fn claims_show_unclaimed_and_multiclaimed_jobs() {
        let triggers = vec![
            ("java".to_owned(), with_caps("java,docker")),
            ("any-docker".to_owned(), with_caps("docker")),
            (
                "keda".to_owned(),
                filter(&["gpu"], DemandRule::JobSubsetOfTrigger, false),
            ),
        ];
        let jobs = vec![
            job(1, &["java", "docker"], None),
            job(2, &["docker"], None),
            job(3, &["gpu"], None),
            job(4, &["windows"], None),
            job(5, &["windows"], Some("someone")),
        ];
        let claims = claims(&jobs, &triggers);
        let summary: Vec<(u64, Vec<&str>, bool, bool)> = claims
            .iter()
            .map(|c| {
                (
                    c.job.request_id,
                    c.claimed_by.clone(),
                    c.is_unclaimed(),
                    c.is_multiclaimed(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, vec!["java"], false, false),
                (2, vec!["java", "any-docker"], false, true),
                (3, vec!["keda"], false, false),
                (4, vec![], true, false),
            ]
        );
        assert_eq!(
            claims[3].refused_by,
            [
                ("java", Mismatch::DemandNotMet("windows".into())),
                ("any-docker", Mismatch::DemandNotMet("windows".into())),
                ("keda", Mismatch::JobDemandNotOffered("windows".into())),
            ]
        );
        assert_eq!(
            claims[3].refused_by[0].1.to_string(),
            "job demand `windows` is not met by `capabilities`"
        );
    }

    #[test]
    fn mismatch_names_the_failing_demand() {
        let f = filter(&["maven"], DemandRule::JobSubsetOfTrigger, false);
        assert_eq!(
            f.check(&job(1, &["maven", "gpu"], None)),
            Err(Mismatch::JobDemandNotOffered("gpu".into()))
        );
        let f = filter(&["maven", "gpu"], DemandRule::TriggerSubsetOfJob, false);
        assert_eq!(
            f.check(&job(1, &["maven"], None)),
            Err(Mismatch::TriggerDemandMissing("gpu".into()))
        );
    }

    #[test]
    fn parent_uses_ado_matching_and_ignores_demands() {
        let f = Filter {
            parent: Some("template".into()),
            demands: parse_demands(["nothing-matches-this"]),
            ..Filter::default()
        };
        let mut j = job(1, &["maven"], None);
        assert!(!f.matches(&j));
        j.matched_agents = vec!["other".into(), "template".into()];
        assert!(f.matches(&j));
        j.matched_agents.clear();
        j.matches_all_agents = true;
        assert!(f.matches(&j));
    }

    #[test]
    fn in_flight_and_teardown_counting() {
        let now = Instant::now();
        let jobs = vec![
            job(1, &[], None),
            job(2, &[], None),
            job(3, &[], Some("agents-abc")),
            job(4, &[], Some("other-pool-agent")),
        ];
        let departed = vec![
            Departed {
                job: job(5, &[], Some("agents-x")),
                left_at: now - Duration::from_secs(2),
            },
            Departed {
                job: job(6, &[], Some("agents-y")),
                left_at: now - Duration::from_secs(20),
            },
            Departed {
                job: job(7, &[], Some("stranger")),
                left_at: now - Duration::from_secs(1),
            },
        ];
        // (scaleOnInFlight, prefix, window, expected queued/in-flight/tearing-down)
        type Row = (bool, Option<&'static str>, u64, (u64, u64, u64));
        let table: &[Row] = &[
            (false, None, 10, (2, 0, 0)),
            (true, None, 10, (2, 2, 2)),
            (true, Some("agents-"), 10, (2, 1, 1)),
            (true, Some("agents-"), 0, (2, 1, 0)),
            (true, Some("agents-"), 30, (2, 1, 2)),
            (true, Some("nobody"), 30, (2, 0, 0)),
        ];
        for (on, prefix, window, (q, i, t)) in table {
            let f = Filter {
                scale_on_in_flight: *on,
                agent_name_prefix: prefix.map(str::to_owned),
                teardown_window: Duration::from_secs(*window),
                ..Filter::default()
            };
            let c = f.count(&jobs, &departed, now);
            assert_eq!(
                (c.queued, c.in_flight, c.tearing_down),
                (*q, *i, *t),
                "{on} {prefix:?} {window}"
            );
            assert_eq!(c.total(), q + i + t);
        }
    }

    #[test]
    fn demands_filter_applies_to_in_flight_and_departed_too() {
        let now = Instant::now();
        let f = filter(&["maven"], DemandRule::JobSubsetOfTrigger, false);
        let jobs = vec![
            job(1, &["gpu"], None),
            job(2, &["gpu"], Some("a")),
            job(3, &["maven"], Some("a")),
        ];
        let departed = vec![Departed {
            job: job(4, &["gpu"], Some("a")),
            left_at: now,
        }];
        assert_eq!(
            f.count(&jobs, &departed, now),
            Counted {
                queued: 0,
                in_flight: 1,
                tearing_down: 0,
                waiting_for_parallelism: 0,
            }
        );
    }

    #[test]
    fn a_departure_counts_for_less_than_the_teardown_window() {
        let left_at = Instant::now();
        let f = Filter {
            teardown_window: Duration::from_secs(10),
            ..Filter::default()
        };
        let departed = vec![Departed {
            job: job(1, &[], Some("agent")),
            left_at,
        }];
        let at = |secs: u64| f.count(&[], &departed, left_at + Duration::from_millis(secs));
        assert_eq!(at(9_999).tearing_down, 1);
        assert_eq!(at(10_000).tearing_down, 0, "the window's end is outside it");
    }

    #[test]
    fn queued_jobs_held_back_wait_and_do_not_count() {
        let now = Instant::now();
        let f = filter(&["gpu"], DemandRule::JobSubsetOfTrigger, false);
        let jobs = vec![
            job(1, &["gpu"], None),
            job(2, &["gpu"], None),
            job(3, &["maven"], None),
            job(4, &["gpu"], Some("a")),
        ];
        // Held back: one matching queued job, one that does not match, one running.
        let held_back = HashSet::from([2, 3, 4]);
        let counted = f.count_within(&jobs, &[], now, &held_back);
        assert_eq!(
            (
                counted.queued,
                counted.waiting_for_parallelism,
                counted.in_flight
            ),
            (1, 1, 1)
        );
        assert_eq!(counted.total(), 2, "waiting jobs are not in the value");
        assert_eq!(f.count(&jobs, &[], now).queued, 2);
    }

    #[test]
    fn a_request_takes_a_private_parallel_job_only_when_marked_so() {
        let tagged = |tag: &str| {
            from_json(
                &format!(r#"{{"requestId":1,"data":{{"ParallelismTag":"{tag}","IsScheduledKey":"False"}}}}"#),
                &[],
            )
            .unwrap()
            .private_parallelism
        };
        assert!(tagged("Private"));
        assert!(tagged("private"));
        assert!(!tagged("Public"));
        assert!(
            !from_json(r#"{"requestId":1}"#, &[])
                .unwrap()
                .private_parallelism
        );
        assert!(
            !from_json(r#"{"requestId":1,"data":{}}"#, &[])
                .unwrap()
                .private_parallelism
        );
    }

    /// A view of `json`, turned into a job that wants `parents`.
    fn from_json(json: &str, parents: &[&str]) -> Option<Job> {
        let view: JobRequestView = serde_json::from_str(json).unwrap();
        let wanted = parents.iter().map(|p| p.to_string()).collect();
        Job::from_view(&view, &wanted, &mut DemandSets::default())
    }

    #[test]
    fn finished_requests_are_not_jobs() {
        let queued = r#"{"requestId":1,"demands":["maven"],"queueTime":"2026-01-01T00:00:00Z"}"#;
        assert!(from_json(queued, &[]).unwrap().is_queued());
        let assigned = r#"{"requestId":1,"assignTime":"2026-01-01T00:00:01Z","reservedAgent":{"id":1,"name":"a1"}}"#;
        assert_eq!(
            from_json(assigned, &[]).unwrap().reserved_agent.as_deref(),
            Some("a1")
        );
        let assigned_unnamed = r#"{"requestId":1,"assignTime":"2026-01-01T00:00:01Z"}"#;
        assert_eq!(
            from_json(assigned_unnamed, &[])
                .unwrap()
                .reserved_agent
                .as_deref(),
            Some("")
        );
        let reserved_only = r#"{"requestId":1,"reservedAgent":{"id":1,"name":"a2"}}"#;
        assert!(!from_json(reserved_only, &[]).unwrap().is_queued());
        for finished in [
            r#"{"requestId":1,"result":"succeeded"}"#,
            r#"{"requestId":1,"finishTime":"2026-01-01T00:00:02Z"}"#,
        ] {
            assert!(from_json(finished, &[]).is_none(), "{finished}");
        }
        assert!(from_json(r#"{"requestId":1,"result":null}"#, &[]).is_some());
    }

    #[test]
    fn only_wanted_matched_agents_are_kept() {
        let json = r#"{"requestId":1,"matchesAllAgentsInPool":true,"definition":{"id":2,"name":"ci"},
            "matchedAgents":[{"id":1,"name":"tmpl","status":"offline"},{"id":2,"name":"other"},{"id":3,"name":"t\u006dpl2"}]}"#;
        let none = from_json(json, &[]).unwrap();
        assert!(none.matched_agents.is_empty());
        assert!(none.matches_all_agents);
        assert_eq!(none.definition.as_deref(), Some("ci"));
        let some = from_json(json, &["tmpl", "tmpl2", "absent"]).unwrap();
        assert_eq!(some.matched_agents, ["tmpl", "tmpl2"]);
    }

    #[test]
    fn counting_remembers_matches_per_shared_demand_list_only() {
        let now = Instant::now();
        let mut sets = DemandSets::default();
        // 40 queued jobs on 20 lists (past the memo's bound), each list shared by two jobs
        // whose matched agents differ; and one job with list 1's content in a list of its own.
        let mut jobs: Vec<Job> = (0..40)
            .map(|i| {
                let (demands, requirements) =
                    sets.get(&[format!("team-{}", i % 20), "maven".into()]);
                Job {
                    demands,
                    requirements,
                    matched_agents: if i % 3 == 0 {
                        vec!["template".into()]
                    } else {
                        vec![]
                    },
                    ..job(i, &[], None)
                }
            })
            .collect();
        jobs.push(job(100, &["team-1", "maven"], None));
        let parent = Filter {
            parent: Some("template".into()),
            ..Filter::default()
        };
        let capabilities = Filter {
            capabilities: Some(Capabilities::parse("team-1,maven,Agent.Version=4.0.0").unwrap()),
            ..Filter::default()
        };
        let cases = [
            (
                filter(&["team-1", "maven"], DemandRule::JobSubsetOfTrigger, false),
                3,
            ),
            (
                filter(&["TEAM-19"], DemandRule::TriggerSubsetOfJob, true),
                2,
            ),
            (
                filter(&["team-19"], DemandRule::TriggerSubsetOfJob, false),
                2,
            ),
            (filter(&["maven"], DemandRule::Equal, false), 0),
            (parent, 14),
            (capabilities, 3),
            (Filter::default(), 41),
        ];
        for (f, want) in cases {
            let one_by_one = jobs.iter().filter(|j| f.matches(j)).count() as u64;
            assert_eq!(one_by_one, want, "{f:?}");
            assert_eq!(f.count(&jobs, &[], now).queued, want, "{f:?}");
        }
    }

    #[test]
    fn jobs_with_the_same_demands_share_one_parsed_list() {
        let mut sets = DemandSets::default();
        assert!(sets.is_empty());
        let (a, ra) = sets.get(&["maven", "Agent.Version -gtVersion 3.0"]);
        let (b, rb) = sets.get(&[
            "maven".to_owned(),
            "Agent.Version -gtVersion 3.0".to_owned(),
        ]);
        let (c, _) = sets.get(&["gpu"]);
        assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&ra, &rb));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(sets.len(), 2);
        assert!(!sets.is_empty());
        assert_eq!(a.len(), 1, "Agent.Version is not a KEDA demand");
        assert_eq!(ra.len(), 2, "but ADO evaluates it");
    }
}
