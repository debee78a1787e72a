//! Scaling from zero in a real organisation: placeholder registrations, capability-based
//! counting, standby agents, and queued jobs no trigger (or several) counts.

use std::time::Duration;

use crate::common::{Harness, TEMPLATE, capabilities, eventually};
use ado_scaler::{placeholder::PlaceholderSettings, poller::PollerSettings};
use tonic::Code;

const FAST: Duration = Duration::from_millis(200);
const CHECK_EVERY: Duration = Duration::from_millis(300);

async fn harness() -> Harness {
    Harness::start_full(
        PollerSettings {
            interval: FAST,
            max_staleness: FAST * 20,
            ..Default::default()
        },
        PlaceholderSettings {
            interval: CHECK_EVERY,
            ..Default::default()
        },
    )
    .await
}

/// A metric's value for the pool, from `/metrics`.
async fn gauge(h: &Harness, name: &str) -> Option<i64> {
    let (_, text) = h.http_get("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("pool=\"linux\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn placeholder(h: &Harness, name: &str) -> Option<ado_scaler::ado::models::Agent> {
    h.sim
        .ado
        .agents(h.pool_id)
        .into_iter()
        .find(|a| a.name == name)
}

#[tokio::test]
async fn a_placeholder_is_kept_registered_with_the_trigger_capabilities() {
    let h = harness().await;
    h.sim.ado.remove_agent(h.pool_id, TEMPLATE);
    let caps = [
        ("agentNamePrefix", "team-a-"),
        ("capabilities", "docker,java=17"),
        ("agentVersion", "4.270.0"),
    ];
    let sj = h.scaled_job("team-a", &caps);
    // Before the trigger is seen, a job on the empty pool fails at once, as in ADO.
    let early = h.sim.ado.enqueue(h.pool_id, &["docker"]);
    assert_eq!(
        h.sim.ado.job(early).unwrap().result.as_deref(),
        Some("failed")
    );
    assert_eq!(h.metric(&sj).await.unwrap(), 0);

    assert!(
        eventually(Duration::from_secs(10), || async {
            placeholder(&h, "team-a-placeholder").is_some()
        })
        .await
    );
    let p = placeholder(&h, "team-a-placeholder").unwrap();
    assert_eq!(
        p.status.as_deref(),
        Some("offline"),
        "never opens a session"
    );
    assert_eq!(p.enabled, Some(true));
    assert_eq!(p.version.as_deref(), Some("4.270.0"));
    assert_eq!(
        p.user_capabilities,
        [("docker", ""), ("java", "17")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    );
    assert_eq!(
        p.system_capabilities
            .get("Agent.Version")
            .map(String::as_str),
        Some("4.270.0")
    );
    assert_eq!(
        p.system_capabilities.get("Agent.OS").map(String::as_str),
        Some("Linux")
    );
    let key = p
        .authorization
        .as_ref()
        .expect("registered with a public key")
        .public_key
        .clone();
    assert_eq!(key.exponent, "AQAB");
    assert!(key.modulus.len() >= 340, "an RSA-2048 modulus, base64");

    // Jobs now queue; the trigger counts the ones its agents can run.
    let id = h.sim.ado.enqueue(h.pool_id, &["docker", "java -equals 17"]);
    assert_eq!(h.sim.ado.job(id).unwrap().result, None);
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&sj).await.unwrap() == 1
        })
        .await
    );

    // Checked every interval, but registered once.
    tokio::time::sleep(CHECK_EVERY * 4).await;
    let same = h
        .sim
        .ado
        .agents(h.pool_id)
        .into_iter()
        .filter(|a| a.name == "team-a-placeholder")
        .collect::<Vec<_>>();
    assert_eq!(same.len(), 1);
    assert_eq!(same[0].id, p.id, "not re-registered while present");
    assert_eq!(gauge(&h, "ado_scaler_placeholders").await, Some(1));

    // Someone deletes it: re-created at the next check.
    h.sim.ado.remove_agent(h.pool_id, "team-a-placeholder");
    assert!(
        eventually(Duration::from_secs(10), || async {
            placeholder(&h, "team-a-placeholder").is_some_and(|a| a.id != p.id)
        })
        .await
    );

    // The ScaledJob's capabilities change: the registration is replaced in place.
    let recreated = placeholder(&h, "team-a-placeholder").unwrap();
    let changed = h.scaled_job(
        "team-a",
        &[
            ("agentNamePrefix", "team-a-"),
            ("capabilities", "docker,java=21"),
            ("agentVersion", "4.270.0"),
        ],
    );
    h.metric(&changed).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            placeholder(&h, "team-a-placeholder")
                .is_some_and(|a| a.user_capabilities.get("java").map(String::as_str) == Some("21"))
        })
        .await
    );
    assert_eq!(
        placeholder(&h, "team-a-placeholder").unwrap().id,
        recreated.id,
        "replaced, not re-added"
    );
}

#[tokio::test]
async fn no_placeholder_when_the_trigger_says_false_or_has_a_parent() {
    let h = harness().await;
    let off = h.scaled_job("off", &[("placeholder", "false"), ("demands", "maven")]);
    let parent = h.scaled_job("parent", &[("parent", TEMPLATE)]);
    let on = h.scaled_job("on", &[("demands", "gpu")]);
    for sj in [&off, &parent, &on] {
        h.metric(sj).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.sim.ado.agents(h.pool_id).len() == 2
        })
        .await
    );
    tokio::time::sleep(CHECK_EVERY * 3).await;
    let names: Vec<String> = h
        .sim
        .ado
        .agents(h.pool_id)
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&TEMPLATE.to_owned()));
    let other = names.iter().find(|n| *n != TEMPLATE).unwrap();
    assert!(other.starts_with("ado-scaler-placeholder-"), "{other}");
    assert_eq!(
        placeholder(&h, other).unwrap().user_capabilities,
        capabilities(&["gpu"])
    );
}

#[tokio::test]
async fn without_the_administrator_role_values_are_still_served() {
    let h = harness().await;
    h.sim.ado.reader_only(true);
    h.sim.ado.enqueue(h.pool_id, &["maven"]);
    let sj = h.scaled_job("maven", &[("demands", "maven")]);
    assert_eq!(h.metric(&sj).await.unwrap(), 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (_, text) = h.http_get("/metrics").await;
            text.lines().any(|l| {
                l.starts_with("ado_scaler_placeholder_errors_total{")
                    && l.contains("reason=\"forbidden\"")
                    && !l.ends_with(" 0")
            })
        })
        .await
    );
    assert_eq!(gauge(&h, "ado_scaler_placeholders").await, Some(0));
    assert_eq!(h.metric(&sj).await.unwrap(), 1, "still serving");
    assert_eq!(h.sim.ado.agents(h.pool_id).len(), 1, "only the template");

    // Granted the role: the next check registers it.
    h.sim.ado.reader_only(false);
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.sim.ado.agents(h.pool_id).len() == 2
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            gauge(&h, "ado_scaler_placeholders").await == Some(1)
        })
        .await
    );
}

#[tokio::test]
async fn capabilities_count_what_ado_would_give_these_agents() {
    let h = harness().await;
    h.sim.ado.register_offline_agent(
        h.pool_id,
        "java-template",
        &[("docker", ""), ("java", "21")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    h.sim.ado.enqueue(h.pool_id, &["maven"]);
    h.sim
        .ado
        .enqueue(h.pool_id, &["MAVEN", "Agent.OS -equals linux"]);
    h.sim.ado.enqueue(h.pool_id, &["docker", "java -equals 21"]);
    h.sim.ado.enqueue(h.pool_id, &["gpu"]);
    let maven = h.scaled_job("maven", &[("capabilities", "maven")]);
    let java = h.scaled_job("java", &[("capabilities", "Docker,JAVA=21")]);
    let old = h.scaled_job(
        "old",
        &[
            ("capabilities", "docker,java=21"),
            ("agentVersion", "2.0.0"),
        ],
    );
    assert_eq!(h.metric(&maven).await.unwrap(), 2);
    assert_eq!(h.metric(&java).await.unwrap(), 1);
    assert_eq!(
        h.metric(&old).await.unwrap(),
        0,
        "every job demands Agent.Version -gtVersion 2.163.1"
    );

    let both = h.scaled_job("both", &[("capabilities", "maven"), ("demands", "maven")]);
    let err = h.metric(&both).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("capabilities") && err.message().contains("demands"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn standby_adds_idle_agents_while_a_window_is_open() {
    let h = harness().await;
    h.sim.ado.enqueue(h.pool_id, &["maven"]);
    let always = h.scaled_job("always", &[("demands", "maven"), ("standby", "2")]);
    let open = h.scaled_job(
        "open",
        &[
            ("demands", "maven"),
            ("standby", "Mon-Sun 00:00-24:00 UTC=3"),
        ],
    );
    assert_eq!(h.metric(&always).await.unwrap(), 3);
    assert_eq!(h.metric(&open).await.unwrap(), 4);
    let mut client = h.client.clone();
    let idle = h.scaled_job("idle", &[("demands", "nothing"), ("standby", "1")]);
    assert!(
        client.is_active(idle).await.unwrap().into_inner().result,
        "standby agents keep it active"
    );
    let bad = h.scaled_job("bad", &[("standby", "Mon-Fri 07:00-19:00 Europe/Berlln=2")]);
    let err = h.metric(&bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("`standby`") && err.message().contains("Europe/Berlln"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn unclaimed_and_multiclaimed_jobs_are_counted() {
    let h = harness().await;
    h.sim.ado.register_offline_agent(
        h.pool_id,
        "java-template",
        &[("docker", ""), ("java", "17")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let docker = h.scaled_job(
        "docker",
        &[("capabilities", "docker"), ("agentNamePrefix", "d-")],
    );
    let java = h.scaled_job(
        "java",
        &[
            ("capabilities", "docker,java=17"),
            ("agentNamePrefix", "j-"),
        ],
    );
    h.metric(&docker).await.unwrap();
    h.metric(&java).await.unwrap();
    h.sim.ado.enqueue(h.pool_id, &["docker"]); // both count it
    h.sim.ado.enqueue(h.pool_id, &["java -equals 17"]); // java only
    h.sim.ado.enqueue(h.pool_id, &["gpu"]); // queued (the template offers gpu), nobody counts it
    h.sim.ado.enqueue(h.pool_id, &["maven"]); // likewise
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&docker).await.unwrap();
            h.metric(&java).await.unwrap();
            gauge(&h, "ado_scaler_jobs_unclaimed").await == Some(2)
                && gauge(&h, "ado_scaler_jobs_multiclaimed").await == Some(1)
        })
        .await
    );
    // A third trigger that counts the gpu job leaves one unclaimed.
    let gpu = h.scaled_job("gpu", &[("demands", "gpu")]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&gpu).await.unwrap();
            gauge(&h, "ado_scaler_jobs_unclaimed").await == Some(1)
        })
        .await
    );
}
