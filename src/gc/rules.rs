//! Which registrations the collector may delete: pure, so every rule is tested by a table.
//!
//! A registration is deleted only when every rule says so; anything unknown keeps it.

use std::{collections::HashSet, time::Duration};

use time::OffsetDateTime;

use crate::ado::models::Agent;

/// Placeholders the scaler registers without an `agentNamePrefix` start with this.
const PLACEHOLDER_PREFIX: &str = "ado-scaler-placeholder-";
/// Placeholders with an `agentNamePrefix` are `{prefix}placeholder`; whatever the prefix.
const PLACEHOLDER_SUFFIX: &str = "placeholder";

/// Why a registration stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Its name starts with none of `--gc-agent-prefix`.
    NotManaged,
    /// It keeps jobs queued while the pool is scaled to zero.
    Placeholder,
    /// Online, or a status we do not know.
    NotOffline,
    /// Offline for no longer than `--gc-grace` (or in the future: a skewed clock).
    WithinGrace,
    /// Neither `statusChangedOn` nor `createdOn`: how long it has been offline is unknown.
    NoTimestamp,
    /// ADO still has a job assigned to it (it gives up on a lost agent later).
    HoldsRequest,
    /// A pod of that name exists: the agent may be starting or shutting down.
    PodExists,
}

/// What to do with one registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delete { offline_for: Duration },
    Keep(Keep),
}

/// Names of the pods in the agents' namespace, compared ignoring case as ADO compares agent
/// names.
#[derive(Debug, Clone, Default)]
pub struct PodNames(HashSet<String>);

impl PodNames {
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(&name.to_ascii_lowercase())
    }
}

impl<S: AsRef<str>> FromIterator<S> for PodNames {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|n| n.as_ref().to_ascii_lowercase())
                .collect(),
        )
    }
}

/// The collector's rules: which names it manages and how long an agent must be offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    prefixes: Vec<String>,
    grace: Duration,
}

impl Rules {
    /// `prefixes` must be non-empty strings: an empty one would manage every agent in the pool.
    pub fn new(prefixes: Vec<String>, grace: Duration) -> Result<Self, String> {
        if prefixes.is_empty() {
            return Err("--gc-agent-prefix: at least one prefix is required".into());
        }
        if prefixes.iter().any(|p| p.trim().is_empty()) {
            return Err(
                "--gc-agent-prefix: an empty prefix would match every agent in the pool".into(),
            );
        }
        Ok(Self { prefixes, grace })
    }

    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Case-sensitive, as the prefix is matched against names the agents registered
    /// themselves from their pod names: a looser match could touch someone else's agents.
    pub fn is_managed(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    pub fn verdict(&self, agent: &Agent, pods: &PodNames, now: OffsetDateTime) -> Verdict {
        if !self.is_managed(&agent.name) {
            return Verdict::Keep(Keep::NotManaged);
        }
        if is_placeholder(&agent.name) {
            return Verdict::Keep(Keep::Placeholder);
        }
        if !agent
            .status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("offline"))
        {
            return Verdict::Keep(Keep::NotOffline);
        }
        let Some(since) = agent.status_changed_on.or(agent.created_on) else {
            return Verdict::Keep(Keep::NoTimestamp);
        };
        let offline_for = match Duration::try_from(now - since) {
            Ok(d) if d > self.grace => d,
            _ => return Verdict::Keep(Keep::WithinGrace),
        };
        if agent.assigned_request.is_some() {
            return Verdict::Keep(Keep::HoldsRequest);
        }
        if pods.contains(&agent.name) {
            return Verdict::Keep(Keep::PodExists);
        }
        Verdict::Delete { offline_for }
    }
}

/// A placeholder registration, by name alone: whether or not a trigger still asks for it.
pub fn is_placeholder(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(PLACEHOLDER_PREFIX) || lower.ends_with(PLACEHOLDER_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ado::models::JobRequest;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-26 12:00:00 UTC);
    const GRACE: Duration = Duration::from_secs(600);

    fn rules() -> Rules {
        Rules::new(vec!["ado-agent-".into(), "gpu-".into()], GRACE).unwrap()
    }

    fn agent(name: &str, status: Option<&str>, changed_secs_ago: Option<i64>) -> Agent {
        Agent {
            id: 1,
            name: name.into(),
            status: status.map(Into::into),
            status_changed_on: changed_secs_ago.map(|s| NOW - time::Duration::seconds(s)),
            created_on: Some(NOW - time::Duration::days(1)),
            ..Agent::default()
        }
    }

    fn busy(mut a: Agent) -> Agent {
        a.assigned_request = Some(Box::new(JobRequest {
            request_id: 9,
            queue_time: None,
            assign_time: None,
            receive_time: None,
            finish_time: None,
            result: None,
            demands: vec![],
            matched_agents: None,
            matches_all_agents_in_pool: false,
            reserved_agent: None,
            pool_id: 1,
            plan_type: None,
            plan_id: None,
            job_id: None,
            definition: None,
            owner: None,
            data: Default::default(),
        }));
        a
    }

    #[test]
    fn each_rule_alone_keeps_a_registration() {
        let pods: PodNames = ["ado-agent-live"].into_iter().collect();
        let offline = Some("offline");
        let cases: Vec<(Agent, Verdict)> = vec![
            (
                agent("ado-agent-dead", offline, Some(601)),
                Verdict::Delete {
                    offline_for: Duration::from_secs(601),
                },
            ),
            (
                agent("gpu-dead", Some("Offline"), Some(3600)),
                Verdict::Delete {
                    offline_for: Duration::from_secs(3600),
                },
            ),
            (
                agent("build-01", offline, Some(3600)),
                Verdict::Keep(Keep::NotManaged),
            ),
            (
                agent("ADO-AGENT-dead", offline, Some(3600)),
                Verdict::Keep(Keep::NotManaged),
            ),
            (
                agent("xado-agent-dead", offline, Some(3600)),
                Verdict::Keep(Keep::NotManaged),
            ),
            (
                agent("ado-agent-placeholder", offline, Some(86_400)),
                Verdict::Keep(Keep::Placeholder),
            ),
            (
                agent("ado-agent-gpu-Placeholder", offline, Some(86_400)),
                Verdict::Keep(Keep::Placeholder),
            ),
            (
                agent("ado-agent-dead", Some("online"), Some(3600)),
                Verdict::Keep(Keep::NotOffline),
            ),
            (
                agent("ado-agent-dead", None, Some(3600)),
                Verdict::Keep(Keep::NotOffline),
            ),
            (
                agent("ado-agent-dead", offline, Some(600)),
                Verdict::Keep(Keep::WithinGrace),
            ),
            (
                agent("ado-agent-dead", offline, Some(-60)),
                Verdict::Keep(Keep::WithinGrace),
            ),
            (
                busy(agent("ado-agent-dead", offline, Some(3600))),
                Verdict::Keep(Keep::HoldsRequest),
            ),
            (
                agent("ado-agent-live", offline, Some(3600)),
                Verdict::Keep(Keep::PodExists),
            ),
            (
                agent("ado-agent-LIVE", offline, Some(3600)),
                Verdict::Keep(Keep::PodExists),
            ),
        ];
        for (a, want) in cases {
            assert_eq!(
                rules().verdict(&a, &pods, NOW),
                want,
                "{} {:?} {:?}",
                a.name,
                a.status,
                a.status_changed_on
            );
        }
    }

    #[test]
    fn offline_time_falls_back_to_created_on_and_unknown_keeps() {
        let pods = PodNames::default();
        let mut never_connected = agent("ado-agent-x", Some("offline"), None);
        never_connected.created_on = Some(NOW - time::Duration::seconds(700));
        assert_eq!(
            rules().verdict(&never_connected, &pods, NOW),
            Verdict::Delete {
                offline_for: Duration::from_secs(700)
            }
        );
        never_connected.created_on = Some(NOW - time::Duration::seconds(500));
        assert_eq!(
            rules().verdict(&never_connected, &pods, NOW),
            Verdict::Keep(Keep::WithinGrace)
        );
        // statusChangedOn wins over an old createdOn.
        let recent = agent("ado-agent-x", Some("offline"), Some(30));
        assert_eq!(
            rules().verdict(&recent, &pods, NOW),
            Verdict::Keep(Keep::WithinGrace)
        );
        never_connected.created_on = None;
        assert_eq!(
            rules().verdict(&never_connected, &pods, NOW),
            Verdict::Keep(Keep::NoTimestamp)
        );
    }

    #[test]
    fn combinations_keep_for_the_first_failed_rule() {
        let pods: PodNames = ["ado-agent-both"].into_iter().collect();
        let both = busy(agent("ado-agent-both", Some("offline"), Some(3600)));
        assert_eq!(
            rules().verdict(&both, &pods, NOW),
            Verdict::Keep(Keep::HoldsRequest)
        );
        let online_placeholder = agent("ado-agent-placeholder", Some("online"), Some(1));
        assert_eq!(
            rules().verdict(&online_placeholder, &pods, NOW),
            Verdict::Keep(Keep::Placeholder)
        );
        let hashed = agent(
            "ado-scaler-placeholder-390cc09b",
            Some("offline"),
            Some(9999),
        );
        let everything = Rules::new(vec!["ado-".into()], GRACE).unwrap();
        assert_eq!(
            everything.verdict(&hashed, &pods, NOW),
            Verdict::Keep(Keep::Placeholder)
        );
    }

    #[test]
    fn placeholders_are_recognised_by_name() {
        assert!(is_placeholder("ado-agent-placeholder"));
        assert!(is_placeholder("ADO-SCALER-PLACEHOLDER-0123abcd"));
        assert!(is_placeholder("ado-scaler-placeholder-"));
        assert!(!is_placeholder("ado-agent-placeholders"));
        assert!(!is_placeholder("ado-scaler-placeholde"));
        assert!(!is_placeholder("ado-agent-7f9c2-x8k2p"));
    }

    #[test]
    fn empty_prefixes_are_refused() {
        assert!(
            Rules::new(vec![], GRACE)
                .unwrap_err()
                .contains("--gc-agent-prefix")
        );
        let err = Rules::new(vec!["ado-agent-".into(), " ".into()], GRACE).unwrap_err();
        assert!(err.contains("every agent"), "{err}");
        let ok = Rules::new(vec!["a-".into()], GRACE).unwrap();
        assert_eq!(ok.prefixes(), ["a-"]);
        assert_eq!(ok.grace(), GRACE);
    }

    #[test]
    fn pod_names_ignore_case() {
        let pods: PodNames = ["Ado-Agent-1", "ado-agent-3"].into_iter().collect();
        assert!(pods.contains("ado-agent-1") && pods.contains("ADO-AGENT-1"));
        assert!(pods.contains("Ado-Agent-3"));
        assert!(!pods.contains("ado-agent-2"));
        assert!(!PodNames::default().contains("ado-agent-1"));
    }
}
