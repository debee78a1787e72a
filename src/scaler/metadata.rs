//! Trigger metadata, compatible with KEDA's `azure-pipelines` scaler so that a migration is a
//! change of `type:`. Every error names the key and the bad value.

use std::{collections::HashMap, sync::Once, time::Duration};

use crate::{
    ado::{OrgUrl, OrgUrlError},
    count::{Capabilities, DemandRule, Filter, parse_demands},
    error::{Error, Result},
    placeholder::{DEFAULT_AGENT_VERSION, PlaceholderSpec},
    poller::MAX_TEARDOWN_WINDOW,
    scaler::allowlist::OrgAllowlist,
    standby::Standby,
};

/// A pool by name (resolved through the pools API) or by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolRef {
    Name(String),
    Id(u32),
}

impl PoolRef {
    /// The label used in metrics and logs.
    pub fn label(&self) -> String {
        match self {
            Self::Name(n) => n.clone(),
            Self::Id(id) => id.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub org: OrgUrl,
    pub pool: PoolRef,
    pub target: i64,
    pub activation: i64,
    pub filter: Filter,
    /// The registration to keep in the pool; `None` with `placeholder: "false"` or `parent`
    /// (the parent is the user's own registration).
    pub placeholder: Option<PlaceholderSpec>,
    /// Idle agents to keep ready, added to the value.
    pub standby: Option<Standby>,
    /// `parallelismAware` (default true): queued jobs past the organisation's free parallel
    /// jobs are not counted.
    pub parallelism_aware: bool,
    /// `parallelismHeadroom` (default 0): how many of the jobs next in line for a parallel job
    /// still count, so that their agents are up when a slot frees.
    pub parallelism_headroom: u64,
}

impl Trigger {
    /// KEDA's metric name for this trigger (KEDA adds its own `sN-` prefix).
    pub fn metric_name(&self) -> String {
        let pool: String = self
            .pool
            .label()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        format!("ado-pool-{pool}")
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidMetadata {
        key,
        reason: reason.into(),
    }
}

fn non_empty<'a>(meta: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    meta.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn boolean(meta: &HashMap<String, String>, key: &'static str, default: bool) -> Result<bool> {
    match non_empty(meta, key) {
        None => Ok(default),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(invalid(key, format!("{v:?} is not true or false"))),
    }
}

fn integer(
    meta: &HashMap<String, String>,
    key: &'static str,
    default: i64,
    min: i64,
) -> Result<i64> {
    match non_empty(meta, key) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= min => Ok(n),
            Ok(n) => Err(invalid(key, format!("{n} must be at least {min}"))),
            Err(_) => Err(invalid(key, format!("{v:?} is not a whole number"))),
        },
    }
}

static IGNORED_KEYS_LOGGED: Once = Once::new();

/// Bounds on the metadata strings that reach Azure DevOps: in a request (`poolName`,
/// `parent`) or in a registration the scaler writes (the placeholder's name, version and
/// capabilities, which come from `agentNamePrefix`, `agentVersion`, `capabilities` and
/// `demands`). Generous for real pools and agents, small enough that a trigger cannot make
/// the scaler's identity write pages of text into a pool.
pub mod limits {
    /// `poolName` and `parent` (an agent's name).
    pub const NAME: usize = 256;
    /// `agentNamePrefix`: the placeholder is named `{prefix}placeholder`.
    pub const AGENT_NAME_PREFIX: usize = 64;
    /// `agentVersion`, e.g. `4.261.0`.
    pub const AGENT_VERSION: usize = 64;
    /// Entries of `capabilities`, and of `demands`.
    pub const CAPABILITIES: usize = 100;
    /// A capability's (or a demand's) name.
    pub const CAPABILITY_NAME: usize = 128;
    /// A capability's value (or the value a demand compares with).
    pub const CAPABILITY_VALUE: usize = 1024;
    /// `parallelismHeadroom`: agents started ahead of their parallel job.
    pub const PARALLELISM_HEADROOM: i64 = 100;
}

/// Characters no metadata string that reaches ADO may hold: control characters (which
/// would end up in registrations and logs) and the invisible ones that make a name look
/// like another (zero-width, bidirectional overrides, byte-order mark).
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Refuses `value` (what `key` says about `what`) when it holds a hidden character or is
/// longer than `max` characters. The error shows the start of it, escaped.
fn bounded(key: &'static str, what: &str, value: &str, max: usize) -> Result<()> {
    if let Some(c) = value.chars().find(|&c| is_hidden(c)) {
        return Err(invalid(
            key,
            format!(
                "{what} {value:?} holds the control or invisible character {:?}; remove it",
                c
            ),
        ));
    }
    let length = value.chars().count();
    if length > max {
        let start: String = value.chars().take(32).collect();
        return Err(invalid(
            key,
            format!(
                "{what} \"{}…\" is {length} characters long; at most {max}",
                start.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Refuses a list of more than `max` entries.
fn at_most(key: &'static str, count: usize, max: usize) -> Result<()> {
    if count > max {
        return Err(invalid(key, format!("{count} entries; at most {max}")));
    }
    Ok(())
}

/// A non-empty metadata string within [`bounded`]'s rules.
fn bounded_text<'a>(
    meta: &'a HashMap<String, String>,
    key: &'static str,
    max: usize,
) -> Result<Option<&'a str>> {
    let value = non_empty(meta, key);
    if let Some(v) = value {
        bounded(key, "value", v, max)?;
    }
    Ok(value)
}

/// Parses and validates one trigger's metadata, one key group at a time, in this order (the
/// first bad key is the one reported). Unknown keys (KEDA adds `scalerAddress`) are ignored.
pub fn parse(meta: &HashMap<String, String>, allowlist: &OrgAllowlist) -> Result<Trigger> {
    refuse_pat(meta)?;
    let org = organisation(meta, allowlist)?;
    let pool = pool(meta)?;
    let target = integer(meta, "targetPipelinesQueueLength", 1, 1)?;
    let activation = integer(meta, "activationTargetPipelinesQueueLength", 0, 0)?;
    let Demands {
        rule,
        parent,
        demands,
    } = demands(meta)?;
    let teardown_window = teardown_window(meta)?;
    let agent_version = agent_version(meta)?;
    let capabilities = capabilities(meta)?;
    let agent_name_prefix =
        bounded_text(meta, "agentNamePrefix", limits::AGENT_NAME_PREFIX)?.map(str::to_owned);
    let placeholder = match (boolean(meta, "placeholder", true)?, &parent) {
        (true, None) => Some(placeholder(
            capabilities.as_ref(),
            &demands,
            agent_name_prefix.as_deref(),
            &agent_version,
        )),
        _ => None,
    };
    let standby = non_empty(meta, "standby")
        .map(Standby::parse)
        .transpose()
        .map_err(|e| invalid("standby", e))?;
    note_ignored_keys(meta);

    let parallelism_aware = boolean(meta, "parallelismAware", true)?;
    let parallelism_headroom = integer(meta, "parallelismHeadroom", 0, 0)?;
    if parallelism_headroom > limits::PARALLELISM_HEADROOM {
        return Err(invalid(
            "parallelismHeadroom",
            format!(
                "{parallelism_headroom}: at most {}",
                limits::PARALLELISM_HEADROOM
            ),
        ));
    }
    Ok(Trigger {
        org,
        pool,
        target,
        activation,
        placeholder,
        standby,
        parallelism_aware,
        parallelism_headroom: parallelism_headroom as u64,
        filter: Filter {
            capabilities: capabilities.map(|caps| caps.as_counted(&agent_version)),
            demands,
            rule,
            case_insensitive: boolean(meta, "caseInsensitiveDemandsProcessing", false)?,
            parent,
            scale_on_in_flight: boolean(meta, "scaleOnInFlight", true)?,
            agent_name_prefix,
            teardown_window,
        },
    })
}

/// KEDA's `personalAccessToken(FromEnv)`: refused, never used.
fn refuse_pat(meta: &HashMap<String, String>) -> Result<()> {
    for key in ["personalAccessToken", "personalAccessTokenFromEnv"] {
        if meta.contains_key(key) {
            return Err(invalid(
                key,
                "not accepted: ado-scaler authenticates with its own workload identity; remove the PAT from the trigger",
            ));
        }
    }
    Ok(())
}

/// `organizationURL` (or `organizationURLFromEnv`, which KEDA resolves): a URL the scaler's
/// token may go to.
fn organisation(meta: &HashMap<String, String>, allowlist: &OrgAllowlist) -> Result<OrgUrl> {
    let (key, raw) = match non_empty(meta, "organizationURL") {
        Some(v) => ("organizationURL", v),
        None => match non_empty(meta, "organizationURLFromEnv") {
            Some(v) => ("organizationURLFromEnv", v),
            None => {
                return Err(invalid(
                    "organizationURL",
                    "missing (set organizationURL or organizationURLFromEnv)",
                ));
            }
        },
    };
    let org = OrgUrl::parse(raw).map_err(|e| match e {
        // Plain http to a remote host is a place the token must not go, like any host
        // outside --allowed-orgs.
        OrgUrlError::NotHttps(_) => Error::OrgNotAllowed {
            org: raw.trim().to_owned(),
        },
        e => invalid(key, e.to_string()),
    })?;
    if !allowlist.allows(&org) {
        return Err(Error::OrgNotAllowed {
            org: org.to_string(),
        });
    }
    Ok(org)
}

/// `poolName`, else `poolID`.
fn pool(meta: &HashMap<String, String>) -> Result<PoolRef> {
    let name = bounded_text(meta, "poolName", limits::NAME)?;
    match (name, non_empty(meta, "poolID")) {
        (Some(name), _) => Ok(PoolRef::Name(name.to_owned())),
        (None, Some(id)) => id
            .parse::<u32>()
            .map(PoolRef::Id)
            .map_err(|_| invalid("poolID", format!("{id:?} is not a pool id"))),
        (None, None) => Err(invalid("poolName", "missing (set poolName or poolID)")),
    }
}

/// What a trigger says about job demands, as KEDA's scaler reads them.
struct Demands {
    rule: DemandRule,
    parent: Option<String>,
    /// Empty with `parent`: the parent registration's capabilities decide.
    demands: Vec<crate::count::Demand>,
}

/// `requireAllDemands`, `requireAllDemandsAndIgnoreOthers`, `parent` and `demands`.
fn demands(meta: &HashMap<String, String>) -> Result<Demands> {
    let require_all = boolean(meta, "requireAllDemands", false)?;
    let require_all_ignore_others = boolean(meta, "requireAllDemandsAndIgnoreOthers", false)?;
    let rule = match (require_all, require_all_ignore_others) {
        (_, true) => DemandRule::TriggerSubsetOfJob,
        (true, false) => DemandRule::Equal,
        (false, false) => DemandRule::JobSubsetOfTrigger,
    };
    let parent = bounded_text(meta, "parent", limits::NAME)?.map(str::to_owned);
    let demands = match (&parent, meta.get("demands")) {
        (None, Some(list)) => bounded_demands(list)?,
        _ => Vec::new(),
    };
    Ok(Demands {
        rule,
        parent,
        demands,
    })
}

/// `demands`: each becomes a capability of the placeholder, so each is bounded as one.
fn bounded_demands(list: &str) -> Result<Vec<crate::count::Demand>> {
    // Checked once parsed: whitespace (a YAML block's newlines too) only separates words.
    let demands = parse_demands(list.split(','));
    at_most("demands", demands.len(), limits::CAPABILITIES)?;
    for demand in &demands {
        let (name, value) = demand.as_capability();
        bounded("demands", "name", name, limits::CAPABILITY_NAME)?;
        bounded("demands", "value", value, limits::CAPABILITY_VALUE)?;
    }
    Ok(demands)
}

/// `teardownWindow`: 10 s unless set, at most [`MAX_TEARDOWN_WINDOW`].
fn teardown_window(meta: &HashMap<String, String>) -> Result<Duration> {
    let Some(v) = non_empty(meta, "teardownWindow") else {
        return Ok(Duration::from_secs(10));
    };
    let d = humantime::parse_duration(v)
        .map_err(|e| invalid("teardownWindow", format!("{v:?}: {e}")))?;
    if d > MAX_TEARDOWN_WINDOW {
        return Err(invalid(
            "teardownWindow",
            format!("{v:?} is longer than {MAX_TEARDOWN_WINDOW:?}"),
        ));
    }
    Ok(d)
}

/// `agentVersion`: the version the agents (and the placeholder) report.
fn agent_version(meta: &HashMap<String, String>) -> Result<String> {
    match bounded_text(meta, "agentVersion", limits::AGENT_VERSION)? {
        None => Ok(DEFAULT_AGENT_VERSION.to_owned()),
        Some(v) if crate::count::demand::is_version(v) => Ok(v.to_owned()),
        Some(v) => Err(invalid(
            "agentVersion",
            format!("{v:?} is not a version like 4.261.0"),
        )),
    }
}

/// `capabilities`: what the agents offer; excludes `demands` and `parent`.
fn capabilities(meta: &HashMap<String, String>) -> Result<Option<Capabilities>> {
    let Some(list) = non_empty(meta, "capabilities") else {
        return Ok(None);
    };
    for other in ["demands", "parent"] {
        if non_empty(meta, other).is_some() {
            return Err(invalid(
                "capabilities",
                format!(
                    "cannot be combined with `{other}`: `capabilities` says what the agents offer and every job demand is checked against it; remove `{other}`"
                ),
            ));
        }
    }
    let capabilities = Capabilities::parse(list).map_err(|e| invalid("capabilities", e))?;
    at_most(
        "capabilities",
        capabilities.iter().count(),
        limits::CAPABILITIES,
    )?;
    for (name, value) in capabilities.iter() {
        bounded("capabilities", "name", name, limits::CAPABILITY_NAME)?;
        bounded("capabilities", "value", value, limits::CAPABILITY_VALUE)?;
    }
    Ok(Some(capabilities))
}

/// The registration kept in the pool: it offers the trigger's `capabilities`, else whatever
/// the counted jobs may demand, so that ADO queues them.
fn placeholder(
    capabilities: Option<&Capabilities>,
    demands: &[crate::count::Demand],
    agent_name_prefix: Option<&str>,
    agent_version: &str,
) -> PlaceholderSpec {
    let offered: Capabilities = match capabilities {
        Some(caps) => caps.clone(),
        None => demands.iter().map(|d| d.as_capability()).collect(),
    };
    PlaceholderSpec::new(agent_name_prefix, agent_version, offered)
}

/// KEDA's `jobsToFetch` and `fetchUnfinishedJobsOnly`: accepted, and ignored.
fn has_ignored_keys(meta: &HashMap<String, String>) -> bool {
    meta.contains_key("jobsToFetch") || meta.contains_key("fetchUnfinishedJobsOnly")
}

/// Says once per process that [`has_ignored_keys`]' keys are ignored.
fn note_ignored_keys(meta: &HashMap<String, String>) {
    if has_ignored_keys(meta) {
        IGNORED_KEYS_LOGGED.call_once(|| {
            tracing::info!("trigger keys jobsToFetch and fetchUnfinishedJobsOnly are ignored: ado-scaler always reads every unfinished request");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            ("organizationURL", "https://dev.azure.com/contoso"),
            ("poolName", "linux"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            if v.is_empty() {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.to_string());
            }
        }
        m
    }

    fn err_key(pairs: &[(&str, &str)]) -> (&'static str, String) {
        match parse(&meta(pairs), &OrgAllowlist::default_cloud()) {
            Err(Error::InvalidMetadata { key, reason }) => (key, reason),
            other => panic!("{pairs:?}: expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn the_teardown_window_may_be_exactly_the_longest() {
        let window = |v| {
            parse(
                &meta(&[("teardownWindow", v)]),
                &OrgAllowlist::default_cloud(),
            )
            .map(|t| t.filter.teardown_window)
        };
        assert_eq!(window("10m").unwrap(), MAX_TEARDOWN_WINDOW);
        assert!(window("601s").is_err());
        assert_eq!(window("").unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn keda_fetch_keys_are_ignored_either_one() {
        assert!(!has_ignored_keys(&meta(&[])));
        assert!(has_ignored_keys(&meta(&[("jobsToFetch", "250")])));
        assert!(has_ignored_keys(&meta(&[(
            "fetchUnfinishedJobsOnly",
            "true"
        )])));
        // Accepted: they change nothing.
        let with = parse(
            &meta(&[("jobsToFetch", "250"), ("fetchUnfinishedJobsOnly", "true")]),
            &OrgAllowlist::default_cloud(),
        )
        .unwrap();
        let without = parse(&meta(&[]), &OrgAllowlist::default_cloud()).unwrap();
        assert_eq!(with, without);
    }

    #[test]
    fn defaults() {
        let t = parse(
            &meta(&[("scalerAddress", "x:9090")]),
            &OrgAllowlist::default_cloud(),
        )
        .unwrap();
        assert_eq!(t.pool, PoolRef::Name("linux".into()));
        assert_eq!((t.target, t.activation), (1, 0));
        assert_eq!(t.filter, Filter::default());
        assert_eq!(t.metric_name(), "ado-pool-linux");
        assert_eq!((t.parallelism_aware, t.parallelism_headroom), (true, 0));
    }

    #[test]
    fn parallelism_keys() {
        let parsed = |pairs: &[(&str, &str)]| {
            let t = parse(&meta(pairs), &OrgAllowlist::default_cloud()).unwrap();
            (t.parallelism_aware, t.parallelism_headroom)
        };
        assert_eq!(parsed(&[("parallelismAware", "false")]), (false, 0));
        assert_eq!(parsed(&[("parallelismHeadroom", "3")]), (true, 3));
        assert_eq!(parsed(&[("parallelismHeadroom", "100")]), (true, 100));
    }

    #[test]
    fn every_bad_key_is_named() {
        type Row = (
            &'static [(&'static str, &'static str)],
            &'static str,
            &'static str,
        );
        let table: &[Row] = &[
            (&[("organizationURL", "")], "organizationURL", "missing"),
            (
                &[("organizationURL", "not a url")],
                "organizationURL",
                "not a URL",
            ),
            (
                &[
                    ("organizationURL", ""),
                    ("organizationURLFromEnv", "ftp://x"),
                ],
                "organizationURLFromEnv",
                "https",
            ),
            (&[("poolName", "")], "poolName", "missing"),
            (&[("poolName", ""), ("poolID", "abc")], "poolID", "\"abc\""),
            (
                &[("targetPipelinesQueueLength", "0")],
                "targetPipelinesQueueLength",
                "at least 1",
            ),
            (
                &[("targetPipelinesQueueLength", "x")],
                "targetPipelinesQueueLength",
                "\"x\"",
            ),
            (
                &[("activationTargetPipelinesQueueLength", "-1")],
                "activationTargetPipelinesQueueLength",
                "at least 0",
            ),
            (
                &[("requireAllDemands", "yes")],
                "requireAllDemands",
                "\"yes\"",
            ),
            (
                &[("requireAllDemandsAndIgnoreOthers", "1")],
                "requireAllDemandsAndIgnoreOthers",
                "\"1\"",
            ),
            (
                &[("caseInsensitiveDemandsProcessing", "maybe")],
                "caseInsensitiveDemandsProcessing",
                "\"maybe\"",
            ),
            (&[("scaleOnInFlight", "on")], "scaleOnInFlight", "\"on\""),
            (&[("teardownWindow", "soon")], "teardownWindow", "\"soon\""),
            (&[("teardownWindow", "1h")], "teardownWindow", "longer"),
            (
                &[("personalAccessToken", "abc")],
                "personalAccessToken",
                "own workload identity",
            ),
            (
                &[("personalAccessTokenFromEnv", "abc")],
                "personalAccessTokenFromEnv",
                "own workload identity",
            ),
            (
                &[("capabilities", "docker"), ("demands", "maven")],
                "capabilities",
                "combined with `demands`",
            ),
            (
                &[("capabilities", "docker"), ("parent", "template")],
                "capabilities",
                "combined with `parent`",
            ),
            (
                &[("capabilities", "docker,=x")],
                "capabilities",
                "no capability name",
            ),
            (&[("placeholder", "yes")], "placeholder", "\"yes\""),
            (&[("parallelismAware", "no")], "parallelismAware", "\"no\""),
            (
                &[("parallelismHeadroom", "-1")],
                "parallelismHeadroom",
                "at least 0",
            ),
            (
                &[("parallelismHeadroom", "101")],
                "parallelismHeadroom",
                "at most 100",
            ),
            (&[("agentVersion", "latest")], "agentVersion", "\"latest\""),
            (
                &[(
                    "standby",
                    "Mon-Fri 07:00-19:00 Europe/Berlin=2; Sat 9-12 UTC=1",
                )],
                "standby",
                "\"Sat 9-12 UTC=1\": \"9\" is not a time",
            ),
        ];
        for (pairs, key, fragment) in table {
            let (k, reason) = err_key(pairs);
            assert_eq!(k, *key, "{pairs:?}");
            assert!(reason.contains(fragment), "{pairs:?}: {reason}");
            let status = tonic::Status::from(Error::InvalidMetadata {
                key: k,
                reason: reason.clone(),
            });
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(key));
        }
        // A PAT value is never echoed.
        let (_, reason) = err_key(&[("personalAccessToken", "sekrit")]);
        assert!(!reason.contains("sekrit"));
    }

    #[test]
    fn parses_every_option() {
        let t = parse(
            &meta(&[
                ("poolName", ""),
                ("poolID", "42"),
                ("organizationURL", "https://Contoso.visualstudio.com/"),
                ("targetPipelinesQueueLength", "2"),
                ("activationTargetPipelinesQueueLength", "3"),
                ("demands", " maven , java -equals 17,,"),
                ("requireAllDemands", "TRUE"),
                ("caseInsensitiveDemandsProcessing", "True"),
                ("scaleOnInFlight", "false"),
                ("agentNamePrefix", "agents-"),
                ("teardownWindow", "3s"),
                ("jobsToFetch", "300"),
            ]),
            &OrgAllowlist::default_cloud(),
        )
        .unwrap();
        assert_eq!(t.org.to_string(), "https://contoso.visualstudio.com");
        assert_eq!(t.pool, PoolRef::Id(42));
        assert_eq!((t.target, t.activation), (2, 3));
        assert_eq!(
            t.filter
                .demands
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["maven", "java -equals 17"]
        );
        assert_eq!(t.filter.rule, DemandRule::Equal);
        assert!(t.filter.case_insensitive && !t.filter.scale_on_in_flight);
        assert_eq!(t.filter.agent_name_prefix.as_deref(), Some("agents-"));
        assert_eq!(t.filter.teardown_window, Duration::from_secs(3));

        let t = parse(
            &meta(&[
                ("requireAllDemandsAndIgnoreOthers", "true"),
                ("teardownWindow", "0s"),
            ]),
            &OrgAllowlist::default_cloud(),
        )
        .unwrap();
        assert_eq!(t.filter.rule, DemandRule::TriggerSubsetOfJob);
        assert!(t.filter.teardown_window.is_zero());
        let t = parse(
            &meta(&[("parent", "template"), ("demands", "maven")]),
            &OrgAllowlist::default_cloud(),
        )
        .unwrap();
        assert_eq!(t.filter.parent.as_deref(), Some("template"));
        assert!(t.filter.demands.is_empty(), "parent ignores demands");
        let t = parse(
            &meta(&[
                ("organizationURL", ""),
                ("organizationURLFromEnv", "https://dev.azure.com/x"),
            ]),
            &OrgAllowlist::default_cloud(),
        )
        .unwrap();
        assert_eq!(t.org.to_string(), "https://dev.azure.com/x");
    }

    #[test]
    fn capabilities_placeholders_and_standby() {
        let cloud = OrgAllowlist::default_cloud();
        // Defaults: a placeholder named from the prefix, offering what `demands` lists.
        let t = parse(
            &meta(&[
                ("demands", "maven,java -equals 17"),
                ("agentNamePrefix", "a-"),
            ]),
            &cloud,
        )
        .unwrap();
        let p = t.placeholder.unwrap();
        assert_eq!(p.name, "a-placeholder");
        assert_eq!(p.agent_version, DEFAULT_AGENT_VERSION);
        assert_eq!(p.capabilities.to_string(), "java=17,maven");
        assert!(t.filter.capabilities.is_none() && t.standby.is_none());

        let t = parse(
            &meta(&[
                ("capabilities", "Agent.OS=Linux,java=/usr/lib/jvm/17,docker"),
                ("agentVersion", "4.270.1"),
                ("standby", " 2 "),
            ]),
            &cloud,
        )
        .unwrap();
        let p = t.placeholder.unwrap();
        assert!(p.name.starts_with("ado-scaler-placeholder-"));
        assert_eq!(p.agent_version, "4.270.1");
        assert_eq!(
            p.capabilities.to_string(),
            "Agent.OS=Linux,docker,java=/usr/lib/jvm/17"
        );
        let counted = t.filter.capabilities.unwrap();
        assert_eq!(counted.get("agent.version"), Some("4.270.1"));
        assert_eq!(counted.get("Agent.OS"), Some("Linux"));
        assert_eq!(counted.get("docker"), Some(""));
        assert_eq!(t.standby, Some(Standby::Always(2)));

        // The user's capabilities win over the system ones we assume.
        let t = parse(&meta(&[("capabilities", "agent.os=Darwin")]), &cloud).unwrap();
        assert_eq!(
            t.filter.capabilities.unwrap().get("Agent.OS"),
            Some("Darwin")
        );

        for off in [
            &[("placeholder", "FALSE")][..],
            &[("parent", "template")][..],
        ] {
            assert!(
                parse(&meta(off), &cloud).unwrap().placeholder.is_none(),
                "{off:?}"
            );
        }
    }

    #[test]
    fn strings_that_reach_ado_are_bounded_at_exactly_their_limits() {
        let cloud = OrgAllowlist::default_cloud();
        let x = |n: usize| "x".repeat(n);
        let caps = |n: usize| {
            (0..n)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        // At the limit: taken.
        for pairs in [
            vec![("poolName", x(limits::NAME))],
            vec![("parent", x(limits::NAME))],
            vec![("agentNamePrefix", x(limits::AGENT_NAME_PREFIX))],
            vec![(
                "agentVersion",
                format!("4.261.0-{}", x(limits::AGENT_VERSION - 8)),
            )],
            vec![("capabilities", caps(limits::CAPABILITIES))],
            vec![("demands", caps(limits::CAPABILITIES))],
            vec![(
                "capabilities",
                format!(
                    "{}={}",
                    x(limits::CAPABILITY_NAME),
                    x(limits::CAPABILITY_VALUE)
                ),
            )],
            vec![(
                "demands",
                format!(
                    "{} -equals {}",
                    x(limits::CAPABILITY_NAME),
                    x(limits::CAPABILITY_VALUE)
                ),
            )],
        ] {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert!(parse(&meta(&pairs), &cloud).is_ok(), "{:?}", pairs[0].0);
        }
        // One past it: refused, naming the key and the limit.
        type Row = (&'static str, String, String);
        let rows: Vec<Row> = vec![
            (
                "poolName",
                x(limits::NAME + 1),
                format!("at most {}", limits::NAME),
            ),
            (
                "parent",
                x(limits::NAME + 1),
                format!("at most {}", limits::NAME),
            ),
            (
                "agentNamePrefix",
                x(limits::AGENT_NAME_PREFIX + 1),
                format!("at most {}", limits::AGENT_NAME_PREFIX),
            ),
            (
                "agentVersion",
                format!("4.261.0-{}", x(limits::AGENT_VERSION - 7)),
                format!("at most {}", limits::AGENT_VERSION),
            ),
            (
                "capabilities",
                caps(limits::CAPABILITIES + 1),
                format!(
                    "{} entries; at most {}",
                    limits::CAPABILITIES + 1,
                    limits::CAPABILITIES
                ),
            ),
            (
                "demands",
                caps(limits::CAPABILITIES + 1),
                format!(
                    "{} entries; at most {}",
                    limits::CAPABILITIES + 1,
                    limits::CAPABILITIES
                ),
            ),
            (
                "capabilities",
                x(limits::CAPABILITY_NAME + 1),
                "name \"xxxx".to_owned(),
            ),
            (
                "capabilities",
                format!("a={}", x(limits::CAPABILITY_VALUE + 1)),
                "value \"xxxx".to_owned(),
            ),
            (
                "demands",
                x(limits::CAPABILITY_NAME + 1),
                format!("at most {}", limits::CAPABILITY_NAME),
            ),
            (
                "demands",
                format!("a -equals {}", x(limits::CAPABILITY_VALUE + 1)),
                format!("at most {}", limits::CAPABILITY_VALUE),
            ),
        ];
        for (key, value, fragment) in rows {
            let (k, reason) = err_key(&[(key, &value)]);
            assert_eq!(k, key, "{key}: {reason}");
            assert!(reason.contains(&fragment), "{key}: {reason}");
            // Over-long values are shown by their start only.
            assert!(reason.len() < 120, "{key}: {reason}");
        }
    }

    #[test]
    fn control_and_invisible_characters_are_refused() {
        let hidden = [
            '\u{0}', '\u{7}', '\u{1f}', '\u{7f}', '\u{9f}', '\u{200b}', '\u{200f}', '\u{202a}',
            '\u{202e}', '\u{2060}', '\u{2064}', '\u{2066}', '\u{2069}', '\u{feff}', '\n', '\t',
        ];
        for c in hidden {
            assert!(is_hidden(c), "{c:?}");
            for key in [
                "poolName",
                "parent",
                "agentNamePrefix",
                "capabilities",
                "demands",
            ] {
                if c.is_whitespace() && matches!(key, "capabilities" | "demands") {
                    // Lists are split into words first: there it separates, as a space.
                    continue;
                }
                let value = format!("a{c}b");
                let (k, reason) = err_key(&[(key, &value)]);
                assert_eq!(k, key, "{c:?}");
                assert!(
                    reason.contains("control or invisible character"),
                    "{reason}"
                );
                assert!(
                    !reason.contains(c),
                    "the character is shown escaped: {reason}"
                );
            }
        }
        let (k, reason) = err_key(&[("agentVersion", "4.261.0-b\u{7}x")]);
        assert_eq!(k, "agentVersion");
        assert!(reason.contains("'\\u{7}'"), "{reason}");
        // Neighbours of the refused ranges, and ordinary non-ASCII text, are fine.
        for c in [
            ' ', '~', '\u{a0}', '\u{200a}', '\u{2010}', '\u{2029}', '\u{202f}', '\u{2065}',
            '\u{206a}', 'é', '中',
        ] {
            assert!(!is_hidden(c), "{c:?}");
        }
        let t = parse(
            &meta(&[
                ("capabilities", "team=Équipe-中"),
                ("agentNamePrefix", "é-"),
            ]),
            &OrgAllowlist::default_cloud(),
        )
        .unwrap();
        assert_eq!(t.placeholder.unwrap().name, "é-placeholder");
        // A YAML block's newlines separate demands as spaces do; nothing of them is kept.
        let t = parse(
            &meta(&[("demands", "maven,\njava\t-equals\n17\n")]),
            &OrgAllowlist::default_cloud(),
        )
        .unwrap();
        assert_eq!(
            t.placeholder.unwrap().capabilities.to_string(),
            "java=17,maven"
        );
    }

    #[test]
    fn organisation_must_be_allowed() {
        let cloud = OrgAllowlist::default_cloud();
        for org in [
            "https://evil.example/contoso",
            "http://dev.azure.com/contoso",
            "http://127.0.0.1:9/o",
        ] {
            let err = parse(&meta(&[("organizationURL", org)]), &cloud).unwrap_err();
            assert!(matches!(err, Error::OrgNotAllowed { .. }), "{org}: {err:?}");
            assert_eq!(
                tonic::Status::from(err).code(),
                tonic::Code::PermissionDenied
            );
        }
        let local = OrgAllowlist::parse(&["http://127.0.0.1:9/o"]).unwrap();
        assert!(
            parse(
                &meta(&[("organizationURL", "http://127.0.0.1:9/o")]),
                &local
            )
            .is_ok()
        );
    }
}
