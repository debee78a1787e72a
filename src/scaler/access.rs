//! Who may make the scaler act: `--allowed-namespaces` (whose ScaledJobs it serves) and
//! `--allowed-pools` (which pools of an allowed organisation it polls and keeps placeholders
//! in). `--allowed-orgs` ([`super::allowlist`]) says where its token may go at all.
//!
//! KEDA calls the scaler for every ScaledJob whose trigger names its address, in any
//! namespace, and fills `ScaledObjectRef.namespace` from the ScaledJob's own namespace
//! (kedacore/keda `pkg/scaling/scalers_builder.go`, `pkg/scalers/external_scaler.go`). These
//! lists are checked before anything else, so a refused trigger costs no ADO request.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
    sync::Mutex,
};

use super::{
    allowlist::OrgAllowlist,
    metadata::{self, PoolRef, Trigger},
};
use crate::{ado::OrgUrl, error::Error};

/// Everything that decides whether a ScaledJob's trigger may make the scaler act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub orgs: OrgAllowlist,
    pub namespaces: NamespaceAllowlist,
    pub pools: PoolAllowlist,
}

impl Access {
    /// Every namespace and every pool of these organisations.
    pub fn within(orgs: OrgAllowlist) -> Self {
        Self {
            orgs,
            namespaces: NamespaceAllowlist::default(),
            pools: PoolAllowlist::default(),
        }
    }

    /// The trigger of a ScaledJob in `namespace`, if the scaler may act for it: the
    /// namespace first (a refused one learns nothing about its metadata), then the metadata
    /// (organisation and bounds), then the pool. Nothing here asks ADO.
    pub fn admit(&self, namespace: &str, meta: &HashMap<String, String>) -> Result<Trigger, Error> {
        self.namespaces.check(namespace)?;
        let trigger = metadata::parse(meta, &self.orgs)?;
        self.pools.check(&trigger.org, &trigger.pool)?;
        Ok(trigger)
    }

    /// Says at start what is left open.
    pub fn warn_if_open(&self) {
        if self.namespaces.is_open() {
            tracing::warn!(
                "--allowed-namespaces is empty: a ScaledJob in any namespace can make the scaler poll pools and register placeholders; list the agents' namespaces"
            );
        }
        if self.pools.is_open() {
            tracing::warn!(
                "--allowed-pools is empty: a trigger may name any pool of an allowed organisation; list the pools (ORG_URL=pool1,pool2)"
            );
        }
    }
}

/// `--allowed-namespaces`: the namespaces whose ScaledJobs the scaler serves; empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceAllowlist {
    names: BTreeSet<String>,
}

impl NamespaceAllowlist {
    /// A comma list of namespace names (each a DNS-1123 label, as Kubernetes requires).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut names = BTreeSet::new();
        for name in items
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
        {
            if !is_dns_label(name) {
                return Err(format!(
                    "--allowed-namespaces: {name:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
                ));
            }
            names.insert(name.to_owned());
        }
        Ok(Self { names })
    }

    /// No list: every namespace may use the scaler (logged as a warning at start).
    pub fn is_open(&self) -> bool {
        self.names.is_empty()
    }

    /// Refuses a ScaledJob in a namespace not listed.
    pub fn check(&self, namespace: &str) -> Result<(), Error> {
        if self.is_open() || self.names.contains(namespace) {
            Ok(())
        } else {
            Err(Error::NamespaceNotAllowed {
                namespace: namespace.to_owned(),
            })
        }
    }
}

impl fmt::Display for NamespaceAllowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_open() {
            return f.write_str("every namespace");
        }
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// A Kubernetes namespace name: a DNS-1123 label.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The pools of one organisation a trigger may name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pools {
    /// `*`: every pool the identity can see there.
    Every,
    /// Names, compared exactly (whether ADO's `poolName` filter ignores case is not
    /// documented: an exact match allows no pool the list does not spell), and `#ID`s, which
    /// only a `poolID` trigger can match (an id is never looked up to a name: that would be
    /// an ADO request for a trigger not yet allowed).
    Listed {
        names: BTreeSet<String>,
        ids: BTreeSet<u32>,
    },
}

/// `--allowed-pools`: `ORG_URL=pool1,pool2;ORG_URL2=*`; empty: every pool of every allowed
/// organisation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolAllowlist {
    orgs: Vec<(OrgUrl, Pools)>,
}

impl PoolAllowlist {
    /// One item per organisation; each organisation must pass `orgs` (`--allowed-orgs`).
    pub fn parse<S: AsRef<str>>(items: &[S], orgs: &OrgAllowlist) -> Result<Self, String> {
        let mut list = Self::default();
        for item in items
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
        {
            let (org, pools) = item.split_once('=').ok_or_else(|| {
                format!("--allowed-pools: {item:?} is not ORG_URL=POOL[,POOL…] or ORG_URL=*")
            })?;
            let org = OrgUrl::parse(org).map_err(|e| format!("--allowed-pools: {e}"))?;
            if !orgs.allows(&org) {
                return Err(format!(
                    "--allowed-pools: organisation {org} is not in --allowed-orgs"
                ));
            }
            if list.pools_of(&org).is_some() {
                return Err(format!("--allowed-pools: {org} is listed twice"));
            }
            list.orgs.push((org, parse_pools(pools)?));
        }
        Ok(list)
    }

    /// No list: every pool of an allowed organisation (logged as a warning at start).
    pub fn is_open(&self) -> bool {
        self.orgs.is_empty()
    }

    fn pools_of(&self, org: &OrgUrl) -> Option<&Pools> {
        let org = org.to_string();
        self.orgs
            .iter()
            .find(|(listed, _)| listed.to_string().eq_ignore_ascii_case(&org))
            .map(|(_, pools)| pools)
    }

    /// Refuses a trigger for a pool not listed under its organisation.
    pub fn check(&self, org: &OrgUrl, pool: &PoolRef) -> Result<(), Error> {
        if self.is_open() {
            return Ok(());
        }
        let allowed = match (self.pools_of(org), pool) {
            (None, _) => false,
            (Some(Pools::Every), _) => true,
            (Some(Pools::Listed { names, .. }), PoolRef::Name(name)) => names.contains(name),
            (Some(Pools::Listed { ids, .. }), PoolRef::Id(id)) => ids.contains(id),
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::PoolNotAllowed {
                org: org.to_string(),
                pool: match pool {
                    PoolRef::Name(name) => name.clone(),
                    PoolRef::Id(id) => format!("#{id}"),
                },
            })
        }
    }
}

/// `pool1,pool2,#42` or `*`.
fn parse_pools(raw: &str) -> Result<Pools, String> {
    let items: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    match items.as_slice() {
        [] => Err(format!(
            "--allowed-pools: {raw:?} names no pool (list pools, or * for all of them)"
        )),
        ["*"] => Ok(Pools::Every),
        _ if items.contains(&"*") => Err(format!(
            "--allowed-pools: {raw:?} mixes * with pool names; use one or the other"
        )),
        _ => {
            let (mut names, mut ids) = (BTreeSet::new(), BTreeSet::new());
            for item in items {
                match item.strip_prefix('#') {
                    Some(id) => {
                        ids.insert(id.parse::<u32>().map_err(|_| {
                            format!("--allowed-pools: {item:?} is not a pool id such as #42")
                        })?);
                    }
                    None => {
                        names.insert(item.to_owned());
                    }
                }
            }
            Ok(Pools::Listed { names, ids })
        }
    }
}

impl fmt::Display for PoolAllowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_open() {
            return f.write_str("every pool of an allowed organisation");
        }
        let orgs: Vec<String> = self
            .orgs
            .iter()
            .map(|(org, pools)| match pools {
                Pools::Every => format!("{org}=*"),
                Pools::Listed { names, ids } => {
                    let listed: Vec<String> = names
                        .iter()
                        .cloned()
                        .chain(ids.iter().map(|id| format!("#{id}")))
                        .collect();
                    format!("{org}={}", listed.join(","))
                }
            })
            .collect();
        f.write_str(&orgs.join(";"))
    }
}

/// How many distinct (ScaledJob, reason) pairs are remembered as logged; past it the memory
/// starts over, so a refusal may be logged again rather than memory growing.
const MAX_REMEMBERED_REFUSALS: usize = 1024;

/// Says each refusal once per ScaledJob and reason: KEDA asks again every polling interval,
/// and a refused trigger stays refused until someone changes it or the settings.
#[derive(Debug, Default)]
pub struct RefusalLog {
    logged: Mutex<HashSet<(String, &'static str)>>,
}

impl RefusalLog {
    /// `true` the first time `scaled_job` is refused for `reason`.
    pub fn first(&self, scaled_job: &str, reason: &'static str) -> bool {
        let mut logged = self.logged.lock().expect("refusal log poisoned");
        if logged.len() >= MAX_REMEMBERED_REFUSALS {
            logged.clear();
        }
        logged.insert((scaled_job.to_owned(), reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(raw: &str) -> OrgUrl {
        OrgUrl::parse(raw).unwrap()
    }

    fn name(n: &str) -> PoolRef {
        PoolRef::Name(n.to_owned())
    }

    #[test]
    fn namespaces_listed_are_the_only_ones_served() {
        let open = NamespaceAllowlist::parse::<&str>(&[]).unwrap();
        assert!(open.is_open());
        assert!(open.check("anything").is_ok());
        assert_eq!(open.to_string(), "every namespace");

        let list = NamespaceAllowlist::parse(&[" ado-agents", "ci ", ""]).unwrap();
        assert!(!list.is_open());
        assert!(list.check("ado-agents").is_ok());
        assert!(list.check("ci").is_ok());
        match list.check("team-b") {
            Err(Error::NamespaceNotAllowed { namespace }) => assert_eq!(namespace, "team-b"),
            other => panic!("{other:?}"),
        }
        // Names are exact: Kubernetes namespaces are lower-case.
        assert!(list.check("ADO-agents").is_err());
        assert!(list.check("ado-agents2").is_err());
        assert_eq!(list.to_string(), "ado-agents,ci");
    }

    #[test]
    fn a_namespace_must_be_a_dns_label() {
        for bad in ["Agents", "a b", "-a", "a-", "a.b", &"a".repeat(64)] {
            let err = NamespaceAllowlist::parse(&[bad]).unwrap_err();
            assert!(err.contains("--allowed-namespaces"), "{bad}: {err}");
        }
        assert!(NamespaceAllowlist::parse(&["a", "0-9", &"a".repeat(63)]).is_ok());
    }

    #[test]
    fn pools_are_allowed_per_organisation() {
        let orgs = OrgAllowlist::default_cloud();
        let list = PoolAllowlist::parse(
            &[
                "https://dev.azure.com/contoso=linux, Windows,#42",
                "https://dev.azure.com/fabrikam/=*",
            ],
            &orgs,
        )
        .unwrap();
        let contoso = org("https://dev.azure.com/contoso");
        assert!(list.check(&contoso, &name("linux")).is_ok());
        // Names are exact: the list allows only what it spells.
        assert!(list.check(&contoso, &name("LINUX")).is_err());
        assert!(list.check(&contoso, &name("Windows")).is_ok());
        assert!(list.check(&contoso, &name("windows")).is_err());
        assert!(list.check(&contoso, &PoolRef::Id(42)).is_ok());
        // The organisation's path too.
        assert!(
            list.check(&org("https://dev.azure.com/Contoso"), &name("linux"))
                .is_ok()
        );
        match list.check(&contoso, &name("gpu")) {
            Err(Error::PoolNotAllowed { org, pool }) => {
                assert_eq!(
                    (org.as_str(), pool.as_str()),
                    ("https://dev.azure.com/contoso", "gpu")
                )
            }
            other => panic!("{other:?}"),
        }
        match list.check(&contoso, &PoolRef::Id(7)) {
            Err(Error::PoolNotAllowed { pool, .. }) => assert_eq!(pool, "#7"),
            other => panic!("{other:?}"),
        }
        // A name that is a number is a name, not an id.
        assert!(list.check(&contoso, &name("42")).is_err());
        let fabrikam = org("https://dev.azure.com/fabrikam");
        assert!(list.check(&fabrikam, &name("anything")).is_ok());
        assert!(list.check(&fabrikam, &PoolRef::Id(1)).is_ok());
        // An organisation not listed has no pool.
        assert!(
            list.check(&org("https://dev.azure.com/other"), &name("linux"))
                .is_err()
        );
        assert_eq!(
            list.to_string(),
            "https://dev.azure.com/contoso=Windows,linux,#42;https://dev.azure.com/fabrikam=*"
        );

        let open = PoolAllowlist::parse::<&str>(&[" "], &orgs).unwrap();
        assert!(open.is_open());
        assert!(open.check(&contoso, &name("gpu")).is_ok());
        assert_eq!(open.to_string(), "every pool of an allowed organisation");
    }

    #[test]
    fn bad_pool_lists_name_the_flag_and_the_item() {
        let orgs = OrgAllowlist::default_cloud();
        for (bad, fragment) in [
            (vec!["https://dev.azure.com/contoso"], "is not ORG_URL=POOL"),
            (vec!["not a url=linux"], "not a URL"),
            (
                vec!["https://evil.example/x=linux"],
                "not in --allowed-orgs",
            ),
            (vec!["https://dev.azure.com/contoso= , "], "names no pool"),
            (vec!["https://dev.azure.com/contoso=linux,*"], "mixes *"),
            (
                vec!["https://dev.azure.com/contoso=#x"],
                "\"#x\" is not a pool id",
            ),
            (
                vec![
                    "https://dev.azure.com/contoso=a",
                    "https://dev.azure.com/contoso/=b",
                ],
                "listed twice",
            ),
        ] {
            let err = PoolAllowlist::parse(&bad, &orgs).unwrap_err();
            assert!(err.starts_with("--allowed-pools"), "{bad:?}: {err}");
            assert!(err.contains(fragment), "{bad:?}: {err}");
        }
    }

    /// What `warn_if_open` logs for `access`.
    fn start_warnings(access: &Access) -> String {
        let buffer = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || access.warn_if_open());
        String::from_utf8(buffer.lock().unwrap().clone()).unwrap()
    }

    struct Writer(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn what_is_left_open_is_said_at_start() {
        let orgs = OrgAllowlist::default_cloud();
        let open = start_warnings(&Access::within(orgs.clone()));
        assert!(open.contains("WARN"), "{open}");
        assert!(open.contains("--allowed-namespaces is empty"), "{open}");
        assert!(open.contains("--allowed-pools is empty"), "{open}");
        let closed = Access {
            namespaces: NamespaceAllowlist::parse(&["ado-agents"]).unwrap(),
            pools: PoolAllowlist::parse(&["https://dev.azure.com/contoso=linux"], &orgs).unwrap(),
            orgs,
        };
        assert_eq!(start_warnings(&closed), "");
    }

    #[test]
    fn each_refusal_is_logged_once_per_scaled_job_and_reason() {
        let log = RefusalLog::default();
        assert!(log.first("a/job", "namespace_not_allowed"));
        assert!(!log.first("a/job", "namespace_not_allowed"));
        assert!(log.first("a/job", "pool_not_allowed"));
        assert!(log.first("b/job", "namespace_not_allowed"));
        // Bounded: past the bound it starts over.
        for i in 0..MAX_REMEMBERED_REFUSALS {
            log.first(&format!("n/{i}"), "too_many_pools");
        }
        assert!(log.logged.lock().unwrap().len() <= MAX_REMEMBERED_REFUSALS);
        assert!(log.first("a/job", "namespace_not_allowed"));
    }
}
