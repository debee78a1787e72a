//! Bad input, generated: trigger metadata maps, job-request bodies (mutations of realistic
//! ones), demand strings and standby schedules. Nothing panics, errors name the field, and a
//! count never exceeds the unfinished requests it was counted from.
//!
//! 110 000 cases in all by default (40 000 metadata maps, 20 000 bodies, 20 000 demands,
//! 30 000 schedules); `ADO_SCALER_PROPTEST_CASES=1000000 cargo test --release
//! --test properties` runs each property that many times (README: "Tests").

use std::collections::HashMap;

use ado_scaler::{
    ado::{
        models::{JobRequest, List},
        stream::decode_chunked,
    },
    count::{Capabilities, Demand, Filter, Requirement},
    error::Error,
    poller::{Answer, Snapshot},
    scaler::{
        allowlist::OrgAllowlist,
        metadata::{self, limits},
    },
    standby::Standby,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// The keys the metadata parser reads: an error may name only these.
const KEYS: &[&str] = &[
    "organizationURL",
    "organizationURLFromEnv",
    "personalAccessToken",
    "personalAccessTokenFromEnv",
    "poolName",
    "poolID",
    "targetPipelinesQueueLength",
    "activationTargetPipelinesQueueLength",
    "demands",
    "requireAllDemands",
    "requireAllDemandsAndIgnoreOthers",
    "caseInsensitiveDemandsProcessing",
    "parent",
    "capabilities",
    "scaleOnInFlight",
    "agentNamePrefix",
    "teardownWindow",
    "placeholder",
    "agentVersion",
    "standby",
    "jobsToFetch",
    "fetchUnfinishedJobsOnly",
];

fn cases(default: u32) -> Config {
    let cases = std::env::var("ADO_SCALER_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings as users and attackers write them: typical values, unicode, control characters,
/// and now and then a huge one.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        11 => short_text(),
        1 => huge_text(),
    ]
}

fn huge_text() -> impl Strategy<Value = String> {
    (
        0usize..200_000,
        prop::sample::select(vec!["x", "é", "-", " ", "\u{0}"]),
    )
        .prop_map(|(n, unit)| unit.repeat(n))
}

/// As [`text`], without the huge ones.
fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "", "0", "1", "-1", "5", "99999999999999999999", "true", "false", "TRUE", "yes",
            "10s", "1h", "-3s", "linux", "https://dev.azure.com/contoso",
            "https://evil.example.com/x", "http://127.0.0.1:1/o", "docker", "java -equals 17",
            "Agent.Version -gtVersion 2.163.1", "a=b,c=d", "=", ",,", "Mon-Fri 07:00-19:00 Europe/Berlin=2",
            "Sat 00:00-24:00 UTC=1; Sun 10:00-11:00 UTC=3", "ado-agent-", "placeholder",
        ]).prop_map(str::to_owned),
        3 => ".{0,40}",
        2 => "[\\p{L}\\p{N}\\p{P}\\p{Z}\\p{C}]{0,60}",
    ]
}

fn metadata_map() -> impl Strategy<Value = HashMap<String, String>> {
    let key = prop_oneof![
        4 => prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
        1 => ".{0,20}",
    ];
    prop::collection::hash_map(key, text(), 0..12).prop_map(|mut map| {
        // Most maps name an allowed organisation and a pool, so the parser gets past them.
        map.entry("organizationURL".into())
            .or_insert_with(|| "https://dev.azure.com/contoso".into());
        map.entry("poolName".into())
            .or_insert_with(|| "linux".into());
        map
    })
}

proptest! {
    #![proptest_config(cases(40_000))]

    #[test]
    fn trigger_metadata_is_parsed_or_refused_naming_a_field(meta in metadata_map()) {
        let allowlist = OrgAllowlist::parse(&["https://dev.azure.com/*"]).unwrap();
        match metadata::parse(&meta, &allowlist) {
            Ok(trigger) => {
                prop_assert!(trigger.target >= 1);
                // Nothing unbounded or hidden reaches a registration.
                if let Some(spec) = &trigger.placeholder {
                    let clean = |s: &str, max: usize| {
                        !s.chars().any(metadata::is_hidden) && s.chars().count() <= max
                    };
                    prop_assert!(clean(&spec.name, limits::AGENT_NAME_PREFIX + 32), "{:?}", spec.name);
                    prop_assert!(clean(&spec.agent_version, limits::AGENT_VERSION), "{:?}", spec.agent_version);
                    prop_assert!(spec.capabilities.iter().count() <= limits::CAPABILITIES);
                    for (name, value) in spec.capabilities.iter() {
                        prop_assert!(clean(name, limits::CAPABILITY_NAME), "{name:?}");
                        prop_assert!(clean(value, limits::CAPABILITY_VALUE), "{value:?}");
                    }
                }
                if let Some(standby) = &trigger.standby {
                    let _ = standby.at(jiff::Timestamp::now());
                }
            }
            Err(Error::InvalidMetadata { key, reason }) => {
                prop_assert!(KEYS.contains(&key), "error names {key:?}, not a field");
                prop_assert!(!reason.is_empty());
                prop_assert!(reason.len() < 1000 || meta.values().any(|v| v.len() > 400),
                    "a long reason without a long input: {reason}");
            }
            Err(Error::OrgNotAllowed { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
        }
    }
}

/// A realistic answer: queued, running and finished requests with demands and matched agents.
fn realistic_requests() -> impl Strategy<Value = Vec<serde_json::Value>> {
    let request = (
        1u64..1_000_000,
        0u8..4,
        prop::collection::vec(short_text(), 0..4),
        prop::collection::vec("[a-z]{1,8}-[0-9]{1,3}", 0..5),
    )
        .prop_map(|(id, state, demands, agents)| {
            let mut r = serde_json::json!({
                "requestId": id,
                "queueTime": "2026-11-26T10:00:00.1234567Z",
                "demands": demands,
                "matchedAgents": agents.iter().enumerate().map(|(i, name)| serde_json::json!({
                    "id": i, "name": name, "version": "4.261.0", "status": "online", "enabled": true,
                })).collect::<Vec<_>>(),
                "poolId": 10,
                "planType": "Build",
                "definition": { "id": 3, "name": "ci" },
                "data": { "ParallelismTag": "Private" },
            });
            if state >= 1 {
                r["assignTime"] = "2026-11-26T10:00:05Z".into();
                r["reservedAgent"] = serde_json::json!({"id": 7, "name": "ado-agent-x", "status": "online"});
            }
            if state >= 2 {
                r["receiveTime"] = "2026-11-26T10:00:06Z".into();
            }
            if state == 3 {
                r["finishTime"] = "2026-11-26T10:01:00Z".into();
                r["result"] = "succeeded".into();
            }
            r
        });
    prop::collection::vec(request, 0..20)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, String),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), 1usize..50).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "null",
                "-1",
                "1e400",
                "\"\"",
                "[]",
                "{}",
                "\"\\ud800\"",
                "18446744073709551616",
                ",",
                "\"requestId\":",
                "true",
                "\"2026-13-45T99:99:99Z\"",
            ])
        )
            .prop_map(|(at, s)| Mutation::Insert(at, s.to_owned())),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(body: &mut Vec<u8>, mutation: &Mutation) {
    if body.is_empty() {
        return;
    }
    match mutation {
        Mutation::Flip(at, b) => {
            let at = at % body.len();
            body[at] = *b;
        }
        Mutation::Delete(at, n) => {
            let at = at % body.len();
            let end = (at + n).min(body.len());
            body.drain(at..end);
        }
        Mutation::Insert(at, s) => {
            let at = at % (body.len() + 1);
            body.splice(at..at, s.bytes());
        }
        Mutation::Truncate(at) => body.truncate(at % body.len()),
    }
}

fn trigger_filters() -> &'static [Filter] {
    static FILTERS: std::sync::OnceLock<Vec<Filter>> = std::sync::OnceLock::new();
    FILTERS.get_or_init(parse_filters)
}

fn parse_filters() -> Vec<Filter> {
    let allowlist = OrgAllowlist::parse(&["https://dev.azure.com/*"]).unwrap();
    let parse = |extra: &[(&str, &str)]| {
        let mut meta: HashMap<String, String> = [
            ("organizationURL", "https://dev.azure.com/contoso"),
            ("poolName", "linux"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        meta.shrink_to_fit();
        metadata::parse(&meta, &allowlist).unwrap().filter
    };
    vec![
        parse(&[]),
        parse(&[("demands", "docker"), ("requireAllDemands", "true")]),
        parse(&[("capabilities", "docker,java=17")]),
        parse(&[("parent", "ado-agent-x")]),
        parse(&[("agentNamePrefix", "ado-agent-"), ("teardownWindow", "0s")]),
        parse(&[("scaleOnInFlight", "false")]),
    ]
}

proptest! {
    #![proptest_config(cases(20_000))]

    #[test]
    fn job_request_bodies_decode_or_fail_and_counts_stay_within_the_unfinished(
        requests in realistic_requests(),
        mutations in prop::collection::vec(mutation(), 0..4),
        chunk in 1usize..2048,
    ) {
        let mut body = serde_json::to_vec(&serde_json::json!({
            "count": requests.len(),
            "value": requests,
        })).unwrap();
        for m in &mutations {
            apply(&mut body, m);
        }
        // The incremental decoder, fed as the network would, against serde_json's typed
        // whole-body decode: never stricter, and the same requests when both accept.
        let mut answer = Answer::default();
        let streamed = decode_chunked(&body, chunk, &mut answer);
        let whole: Result<List<JobRequest>, _> = serde_json::from_slice(&body);
        if let Ok(list) = &whole {
            prop_assert_eq!(streamed.as_ref().ok(), Some(&list.value.len()), "{:?}", streamed);
            let unfinished: Vec<u64> = list
                .value
                .iter()
                .filter(|r| r.result.is_none() && r.finish_time.is_none())
                .map(|r| r.request_id)
                .collect();
            let decoded: Vec<u64> = answer.jobs.iter().map(|j| j.request_id).collect();
            prop_assert_eq!(decoded, unfinished);
        }
        // Chunking never changes the outcome.
        let mut at_once = Answer::default();
        prop_assert_eq!(decode_chunked(&body, body.len(), &mut at_once), streamed.clone());
        prop_assert_eq!(&at_once.jobs, &answer.jobs);
        if streamed.is_err() {
            return Ok(());
        }
        let unfinished = answer.jobs.len() as u64;
        let now = tokio::time::Instant::now();
        let snapshot = Snapshot::next(None, answer, now, time::OffsetDateTime::now_utc());
        prop_assert!(snapshot.jobs.len() as u64 <= unfinished);
        for filter in trigger_filters() {
            let counted = filter.count(&snapshot.jobs, &snapshot.departed, now);
            prop_assert!(counted.total() <= unfinished, "{counted:?} of {unfinished}");
        }
    }

    #[test]
    fn demand_strings_parse_without_panicking(
        raw in prop_oneof![30 => short_text(), 1 => huge_text()],
        caps in short_text(),
    ) {
        let requirement = Requirement::parse(&raw);
        prop_assert_eq!(requirement.as_str(), raw.as_str());
        let _ = Demand::parse(&raw);
        if let Ok(capabilities) = Capabilities::parse(&caps) {
            let _ = requirement.satisfied_by(&capabilities);
        }
    }

}

proptest! {
    #![proptest_config(cases(30_000))]

    #[test]
    fn standby_schedules_parse_or_name_the_part(raw in prop_oneof![
        3 => (
            prop::sample::select(vec!["Mon", "Mon-Fri", "Sat-Sun", "Fri-Mon", "Xyz", "mon-sun", ""]),
            prop::sample::select(vec!["07:00-19:00", "00:00-24:00", "19:00-07:00", "25:00-26:00", "7-19", "07:00"]),
            prop::sample::select(vec!["Europe/Berlin", "UTC", "America/New_York", "Mars/Olympus", ""]),
            prop::sample::select(vec!["=2", "=0", "=-1", "=99999999999", "", "=x"]),
        ).prop_map(|(d, t, z, n)| format!("{d} {t} {z}{n}")),
        1 => text(),
    ]) {
        match Standby::parse(&raw) {
            Ok(standby) => {
                let _ = standby.at(jiff::Timestamp::now());
                let _ = standby.at(jiff::Timestamp::MIN);
                let _ = standby.at(jiff::Timestamp::MAX);
            }
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }
}
