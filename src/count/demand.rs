//! Demands two ways. [`Demand`]: KEDA's `demands` metadata, compared with the job's demand
//! strings (normalised, so spacing and operator case do not decide). [`Requirement`]: a job
//! demand evaluated against [`Capabilities`] exactly as ADO's `Demand.TryParse` and
//! `IsSatisfied` do (GitHub.DistributedTask.WebApi `Demand`, `DemandEquals`,
//! `DemandMinimumVersion`), for triggers that declare what their agents provide.

use std::{cmp::Ordering, collections::BTreeMap};

/// A demand such as `maven`, `java -equals 17` or `Agent.OS -equals Linux`,
/// parsed so that spacing and operator case do not decide whether two demands
/// are the same (KEDA compares the raw strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    name: String,
    /// `(operator, value)`; `None` for a bare capability name or `-exists`.
    condition: Option<(String, String)>,
}

impl Demand {
    /// Parses one demand; `None` for an empty string.
    pub fn parse(raw: &str) -> Option<Self> {
        let mut words = raw.split_whitespace();
        let name = words.next()?.to_owned();
        let condition = match words.next() {
            None => None,
            Some(op) => {
                let op = op.trim_start_matches('-').to_ascii_lowercase();
                let value = words.collect::<Vec<_>>().join(" ");
                (op != "exists").then_some((op, value))
            }
        };
        Some(Self { name, condition })
    }

    /// ADO adds `Agent.Version -gtVersion x` to every job; an ephemeral agent
    /// from our image always satisfies it, so it must not decide a match.
    pub(crate) fn is_agent_version(&self) -> bool {
        is_agent_version(&self.name)
    }

    /// The capability an agent needs to meet this demand: the value of `-equals`
    /// (or of any other operator), empty for a bare name.
    pub fn as_capability(&self) -> (&str, &str) {
        (
            &self.name,
            self.condition.as_ref().map_or("", |(_, v)| v.as_str()),
        )
    }

    pub(crate) fn same(&self, other: &Self, case_insensitive: bool) -> bool {
        let eq = |a: &str, b: &str| {
            if case_insensitive {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        eq(&self.name, &other.name)
            && match (&self.condition, &other.condition) {
                (None, None) => true,
                (Some((op_a, va)), Some((op_b, vb))) => op_a == op_b && eq(va, vb),
                _ => false,
            }
    }
}

impl std::fmt::Display for Demand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.condition {
            None => f.write_str(&self.name),
            Some((op, value)) => write!(f, "{} -{op} {value}", self.name),
        }
    }
}

fn is_agent_version(name: &str) -> bool {
    name.eq_ignore_ascii_case("agent.version")
}

/// Parses a comma list of demands, trimming items and dropping empty ones and `Agent.Version`.
pub fn parse_demands<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<Demand> {
    items
        .into_iter()
        .filter_map(Demand::parse)
        .filter(|d| !d.is_agent_version())
        .collect()
}

/// `OrdinalIgnoreCase`, as .NET compares capability values (char-wise upper-casing, no allocation).
fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// The lookup key of a capability name: ADO's capability names are case-insensitive.
fn fold(name: &str) -> String {
    name.chars().flat_map(char::to_uppercase).collect()
}

/// What an agent offers: capability names (case-insensitive, spelling kept) and values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    by_key: BTreeMap<String, (String, String)>,
}

impl Capabilities {
    /// Parses `Agent.OS=Linux,java=/usr/lib/jvm/17,docker` (a bare name is present with an
    /// empty value). The error names the item at fault.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut caps = Self::default();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item.split_once('=').unwrap_or((item, ""));
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("{item:?} has no capability name"));
            }
            if name.contains(char::is_whitespace) {
                return Err(format!("{name:?}: capability names cannot contain spaces"));
            }
            if caps.get(name).is_some() {
                return Err(format!("{name:?} is listed twice"));
            }
            caps.insert(name, value.trim());
        }
        Ok(caps)
    }

    /// Sets a capability, replacing one of the same name in any case.
    pub fn insert(&mut self, name: &str, value: &str) {
        self.by_key
            .insert(fold(name), (name.to_owned(), value.to_owned()));
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.by_key.get(&fold(name)).map(|(_, v)| v.as_str())
    }

    fn get_folded(&self, key: &str) -> Option<&str> {
        self.by_key.get(key).map(|(_, v)| v.as_str())
    }

    /// `(name, value)` pairs, ordered by name regardless of case.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_key.values().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// `base` overlaid with `self`: a capability here wins over one of the same name there.
    pub fn over(&self, base: &Capabilities) -> Capabilities {
        let mut merged = base.clone();
        merged.by_key.extend(self.by_key.clone());
        merged
    }

    /// Equal names (ignoring case) with equal values.
    pub fn same_as(&self, other: &Self) -> bool {
        self.by_key.len() == other.by_key.len()
            && self
                .by_key
                .iter()
                .zip(&other.by_key)
                .all(|((ka, (_, va)), (kb, (_, vb)))| ka == kb && va == vb)
    }

    /// `NAME=value` pairs with names folded to one case: the same for the same capabilities
    /// however their names are spelt.
    pub fn canonical(&self) -> String {
        self.by_key
            .iter()
            .map(|(k, (_, v))| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What every agent of ours reports whatever the trigger says (`AgentCapabilitiesProvider`):
    /// the image is Linux, and its agent version is the trigger's `agentVersion`.
    pub fn reported_by_our_agents(agent_version: &str) -> Self {
        [("Agent.OS", "Linux"), ("Agent.Version", agent_version)]
            .into_iter()
            .collect()
    }

    /// A trigger's capabilities as counting sees them: over those every agent reports.
    pub fn as_counted(&self, agent_version: &str) -> Self {
        self.over(&Self::reported_by_our_agents(agent_version))
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Capabilities {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut caps = Self::default();
        for (name, value) in pairs {
            caps.insert(name.as_ref(), value.as_ref());
        }
        caps
    }
}

impl std::fmt::Display for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, value)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if value.is_empty() {
                f.write_str(name)?;
            } else {
                write!(f, "{name}={value}")?;
            }
        }
        Ok(())
    }
}

/// The test of a [`Requirement`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Exists,
    Equals(String),
    MinimumVersion(String),
    /// A string ADO's parser would refuse: an unknown operator, or no value after one.
    Unknown,
}

/// A job demand as ADO parses it: `^(?<name>\S+)(\s+-(?<opcode>\S+)\s+(?<value>.*))?$`,
/// with opcodes `equals` and `gtVersion` (case-sensitive); anything else does not parse,
/// and a demand that does not parse is never satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    raw: String,
    key: String,
    test: Test,
}

impl Requirement {
    pub fn parse(raw: &str) -> Self {
        let (name, test) = parse_expression(raw).unwrap_or(("", Test::Unknown));
        Self {
            raw: raw.to_owned(),
            key: fold(name),
            test,
        }
    }

    /// `false` for a demand ADO could not have parsed (logged once by the poller).
    pub fn is_known(&self) -> bool {
        self.test != Test::Unknown
    }

    /// ADO's `IsSatisfied`: the capability exists; its value equals (ignoring case); or its
    /// version is at least the demanded one.
    pub fn satisfied_by(&self, caps: &Capabilities) -> bool {
        let have = caps.get_folded(&self.key);
        match (&self.test, have) {
            (Test::Unknown, _) | (_, None) => false,
            (Test::Exists, Some(_)) => true,
            (Test::Equals(wanted), Some(have)) => eq_ignore_case(wanted, have),
            (Test::MinimumVersion(wanted), Some(have)) => {
                compare_versions(wanted, have) != Ordering::Greater
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The name and test of an expression, or `None` when ADO's regex does not match.
fn parse_expression(raw: &str) -> Option<(&str, Test)> {
    // `.` does not match a line break and `$` matches only at the end (or before a final one).
    let raw = raw.strip_suffix('\n').unwrap_or(raw);
    if raw.contains('\n') {
        return None;
    }
    let name_end = raw.find(char::is_whitespace).unwrap_or(raw.len());
    let (name, rest) = raw.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    if rest.is_empty() {
        return Some((name, Test::Exists));
    }
    let rest = rest.trim_start().strip_prefix('-')?;
    let opcode_end = rest.find(char::is_whitespace)?;
    let (opcode, value) = rest.split_at(opcode_end);
    let value = value.trim_start();
    if value.is_empty() {
        // The demand constructors refuse an empty value (an empty opcode is unknown below).
        return None;
    }
    let test = match opcode {
        "equals" => Test::Equals(value.to_owned()),
        "gtVersion" => Test::MinimumVersion(value.to_owned()),
        _ => return None,
    };
    Some((name, test))
}

/// A version as .NET's `Version.TryParse` reads it: two to four non-negative components;
/// a missing build or revision is -1, so `2.0` sorts before `2.0.0`.
type Version = [i64; 4];

/// `DemandMinimumVersion.ParseVersion`: everything from the first `-` is dropped (.NET keeps
/// a leading one, which then fails to parse: no version either way); anything unparsable is
/// no version.
fn parse_version(text: &str) -> Option<Version> {
    let text = text.split('-').next().unwrap_or_default();
    let parts: Vec<&str> = text.split('.').collect();
    if !(2..=4).contains(&parts.len()) {
        return None;
    }
    let mut version = [-1; 4];
    for (slot, part) in version.iter_mut().zip(&parts) {
        let digits = part.trim();
        let digits = digits.strip_prefix('+').unwrap_or(digits);
        // Digits only: `i32::from_str` would also take a second sign. Empty fails to parse.
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = digits.parse::<i32>().ok()?.into();
    }
    Some(version)
}

/// Whether ADO would read `text` as a version (for `agentVersion`).
pub fn is_version(text: &str) -> bool {
    parse_version(text).is_some()
}

/// `DemandMinimumVersion.CompareVersion`: no version sorts below any version.
fn compare_versions(a: &str, b: &str) -> Ordering {
    parse_version(a).cmp(&parse_version(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &str) -> Capabilities {
        Capabilities::parse(list).unwrap()
    }

    #[test]
    fn requirements_are_evaluated_as_ado_does() {
        let agent = caps(
            "Agent.OS=Linux,Agent.Version=4.261.0,java=/usr/lib/jvm/17,docker,node.js=20.11.1-beta,Ünïcode=ÄÖ",
        );
        // (job demand as ADO lists it, satisfied)
        let table = [
            ("docker", true),
            ("DOCKER", true),
            ("maven", false),
            ("Agent.OS -equals Linux", true),
            ("agent.os -equals LINUX", true),
            ("Agent.OS -equals Windows_NT", false),
            ("java -equals /usr/lib/jvm/17", true),
            ("java -equals /usr/lib/jvm/21", false),
            ("ünïcode -equals äö", true),
            // -gtVersion means "at least".
            ("Agent.Version -gtVersion 2.163.1", true),
            ("Agent.Version -gtVersion 4.261.0", true),
            ("Agent.Version -gtVersion 4.261.1", false),
            ("Agent.Version -gtVersion 4.262", false),
            ("Agent.Version -gtVersion 5.0", false),
            // A pre-release suffix is cut off before comparing.
            ("node.js -gtVersion 20.11", true),
            ("node.js -gtVersion 20.11.1", true),
            ("node.js -gtVersion 20.11.2", false),
            // A demanded version that does not parse is below every version...
            ("Agent.Version -gtVersion latest", true),
            // ...and a capability that is no version is below every demanded version.
            ("java -gtVersion 17.0", false),
            // A missing capability fails every test.
            ("maven -gtVersion 1.0", false),
            ("maven -equals 3", false),
            // Shapes and operators ADO would not parse are never satisfied.
            ("docker -exists", false),
            ("Agent.OS -Equals Linux", false),
            ("Agent.OS -notequals Windows_NT", false),
            ("Agent.OS equals Linux", false),
            ("Agent.OS -equals ", false),
            ("docker -equals  ", false),
            ("Agent.OS -equals", false),
            (" docker", false),
            ("", false),
            ("docker\nmaven", false),
        ];
        for (raw, want) in table {
            assert_eq!(
                Requirement::parse(raw).satisfied_by(&agent),
                want,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn only_refused_shapes_are_unknown() {
        for raw in ["docker", "docker\n", "java -equals 17", "a -gtVersion 1.0"] {
            assert!(Requirement::parse(raw).is_known(), "{raw:?}");
        }
        for raw in [
            "docker -exists",
            "a -Equals b",
            "a -equals",
            "a -equals  ",
            "a - b",
            "",
            "a -x y",
            "a b",
        ] {
            assert!(!Requirement::parse(raw).is_known(), "{raw:?}");
        }
        assert_eq!(
            Requirement::parse("java -equals  17 ").as_str(),
            "java -equals  17 "
        );
    }

    #[test]
    fn equals_keeps_inner_and_trailing_spaces_of_the_value() {
        let agent = caps("dir=C:/Program Files");
        assert!(Requirement::parse("dir -equals   C:/Program Files").satisfied_by(&agent));
        assert!(!Requirement::parse("dir -equals C:/Program Files ").satisfied_by(&agent));
    }

    #[test]
    fn versions_compare_like_dotnet() {
        use Ordering::*;
        let table = [
            ("1.0", "1.0", Equal),
            ("2.0", "2.0.0", Less),
            ("2.0.0", "2.0.0.0", Less),
            ("2.10", "2.9", Greater),
            ("3.1", "3.1-rc1", Equal),
            ("+3.1", "3.1", Equal),
            ("1", "1.0", Less),
            ("1.2.3.4.5", "0.1", Less),
            ("-1.0", "0.1", Less),
            ("1.x", "0.1", Less),
            ("1.", "0.1", Less),
            ("99999999999.0", "0.1", Less),
            ("junk", "nonsense", Equal),
            ("++5.0", "junk", Equal),
            ("-1.5", "junk", Equal),
            ("1. 2", "1.2", Equal),
        ];
        for (a, b, want) in table {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn capabilities_parse_and_name_the_bad_item() {
        let c = caps(" Agent.OS=Linux , java=/usr/lib/jvm/17,docker,,url=a=b ");
        assert_eq!(c.get("agent.os"), Some("Linux"));
        assert_eq!(c.get("DOCKER"), Some(""));
        assert_eq!(c.get("url"), Some("a=b"));
        assert_eq!(c.get("maven"), None);
        assert_eq!(
            c.to_string(),
            "Agent.OS=Linux,docker,java=/usr/lib/jvm/17,url=a=b"
        );
        assert!(!c.is_empty());
        assert!(caps("").is_empty());
        for (bad, names) in [
            ("=Linux", "=Linux"),
            ("java home=/x", "java home"),
            ("docker,Docker=1", "Docker"),
        ] {
            let err = Capabilities::parse(bad).unwrap_err();
            assert!(err.contains(names), "{bad}: {err}");
        }
    }

    #[test]
    fn overlay_prefers_the_top_layer_whatever_the_case() {
        let base = caps("Agent.OS=Linux,Agent.Version=4.0");
        let top = caps("agent.os=Darwin,java");
        let merged = top.over(&base);
        assert_eq!(merged.get("Agent.OS"), Some("Darwin"));
        assert_eq!(merged.get("agent.version"), Some("4.0"));
        assert_eq!(merged.get("java"), Some(""));
        assert_eq!(merged.to_map().len(), 3);
        let counted = caps("java,Agent.OS=Darwin").as_counted("4.1.0");
        assert_eq!(counted.get("agent.os"), Some("Darwin"));
        assert_eq!(counted.get("Agent.Version"), Some("4.1.0"));
        assert_eq!(counted.to_map().len(), 3);
    }

    #[test]
    fn sameness_ignores_name_case_but_not_values() {
        let a = caps("docker,java=17");
        let b: Capabilities = [("JAVA", "17"), ("Docker", "")].into_iter().collect();
        assert!(a.same_as(&b));
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(a.canonical(), "DOCKER=,JAVA=17");
        assert!(!a.same_as(&caps("docker,java=17.0")));
        assert!(!a.same_as(&caps("docker")));
        assert!(!a.same_as(&caps("docker,java=17,gpu")));
        assert!(!caps("docker").same_as(&caps("podman")));
    }

    #[test]
    fn keda_demands_become_placeholder_capabilities() {
        let table = [
            ("maven", ("maven", "")),
            ("java -equals 17", ("java", "17")),
            ("node -gtVersion 20.0", ("node", "20.0")),
            ("docker -exists", ("docker", "")),
        ];
        for (raw, want) in table {
            assert_eq!(Demand::parse(raw).unwrap().as_capability(), want, "{raw}");
        }
    }
}
