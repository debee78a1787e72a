//! Who may make the scaler act: a ScaledJob in another namespace, a pool outside
//! `--allowed-pools`, the pool past `--max-pools`, metadata that would write control
//! characters or pages of text into a registration. Each is refused with its own message,
//! before any ADO request (the simulated organisation's request log shows none), and nothing
//! is registered; the allowed triggers beside them keep working.

use std::time::Duration;

use ado_scaler::{
    poller::{DEFAULT_MAX_POOLS, PollerSettings},
    scaler::{
        access::{Access, NamespaceAllowlist, PoolAllowlist},
        proto::{GetMetricsRequest, ScaledObjectRef},
    },
};
use tonic::Code;

use crate::common::{Harness, POOL, TEMPLATE, capabilities, eventually};

fn settings() -> PollerSettings {
    PollerSettings {
        interval: Duration::from_millis(300),
        max_staleness: Duration::from_secs(6),
        ..Default::default()
    }
}

/// The harness's scaler serving only namespace `agents` and `{org}={pools}`.
async fn restricted(pools: &str) -> Harness {
    let pools = pools.to_owned();
    Harness::start_tuned(settings(), move |sim, s| {
        s.access = Access {
            namespaces: NamespaceAllowlist::parse(&["agents"]).unwrap(),
            pools: PoolAllowlist::parse(&[format!("{}={pools}", sim.org_url)], &sim.allowlist())
                .unwrap(),
            orgs: sim.allowlist(),
        };
    })
    .await
}

/// Every method KEDA calls, with the status each answered.
async fn every_call(h: &Harness, r: &ScaledObjectRef) -> Vec<tonic::Status> {
    let mut client = h.client.clone();
    let mut refusals = vec![h.metric(r).await.unwrap_err()];
    refusals.push(client.is_active(r.clone()).await.unwrap_err());
    refusals.push(client.get_metric_spec(r.clone()).await.unwrap_err());
    refusals.push(client.stream_is_active(r.clone()).await.unwrap_err());
    refusals.push(client.stream_metric_spec(r.clone()).await.unwrap_err());
    refusals
}

/// The value of one sample of the scaler's metrics, 0 when absent.
async fn sample(h: &Harness, line_start: &str) -> f64 {
    let (_, text) = h.http_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How often the log says that this ScaledJob was refused.
fn refusals_logged(h: &Harness, name: &str) -> usize {
    h.logs()
        .lines()
        // Text lines only: the capture holds each event as text and as JSON.
        .filter(|l| !l.starts_with('{'))
        .filter(|l| l.contains("refused a ScaledJob's trigger") && l.contains(name))
        .count()
}

#[tokio::test]
async fn a_scaledjob_in_another_namespace_is_refused_before_any_ado_request() {
    let h = restricted(POOL).await;
    h.sim.ado.enqueue(h.pool_id, &[]);
    let mut other = h.scaled_job("ns-intruder", &[]);
    other.namespace = "team-b".into();

    for status in every_call(&h, &other).await {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("\"team-b\""), "{status:?}");
        assert!(
            status.message().contains("--allowed-namespaces"),
            "{status:?}"
        );
    }
    assert_eq!(h.sim.ado.request_log(), Vec::<String>::new());
    assert_eq!(
        sample(
            &h,
            "ado_scaler_denied_total{reason=\"namespace_not_allowed\"}"
        )
        .await,
        5.0
    );
    // KEDA asks again every polling interval: the log says it once.
    assert_eq!(refusals_logged(&h, "team-b"), 1, "{}", h.logs());

    // The agents' namespace is served as before.
    let allowed = h.scaled_job("ns-allowed", &[]);
    assert_eq!(h.metric(&allowed).await.unwrap(), 1);
    assert!(
        h.sim
            .ado
            .request_log()
            .iter()
            .any(|l| l.contains("/jobrequests"))
    );
}

#[tokio::test]
async fn a_pool_outside_the_list_is_neither_polled_nor_given_a_placeholder() {
    let h = restricted(POOL).await;
    let gpu = h.sim.ado.add_pool("gpu");
    h.sim.ado.enqueue(gpu, &[]);
    let by_name = h.scaled_job("pool-by-name", &[("poolName", "gpu")]);
    let by_id = h.scaled_job(
        "pool-by-id",
        &[("poolName", ""), ("poolID", &gpu.to_string())],
    );

    for status in every_call(&h, &by_name).await {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status
                .message()
                .contains(&format!("agent pool gpu of {}", h.sim.org_url)),
            "{status:?}"
        );
        assert!(status.message().contains("--allowed-pools"), "{status:?}");
    }
    let status = h.metric(&by_id).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains(&format!("agent pool #{gpu}")),
        "{status:?}"
    );

    // The allowed pool works, and gets its placeholder.
    let allowed = h.scaled_job("pool-allowed", &[]);
    assert_eq!(h.metric(&allowed).await.unwrap(), 0);
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.sim.ado.agents(h.pool_id).len() == 2
        })
        .await,
        "the allowed pool's placeholder was not registered"
    );
    // Give a wrongly started keeper of the refused pool time to act, then look.
    crate::common::polled(&h.sim, 3).await;
    assert!(h.sim.ado.agents(gpu).is_empty(), "registered in gpu");
    let log = h.sim.ado.request_log();
    assert!(
        !log.iter()
            .any(|l| l.contains("poolName=gpu") || l.contains(&format!("/pools/{gpu}/"))),
        "the refused pool was asked about: {log:#?}"
    );
    assert_eq!(
        sample(&h, "ado_scaler_denied_total{reason=\"pool_not_allowed\"}").await,
        6.0
    );
    assert_eq!(refusals_logged(&h, "pool-by-name"), 1, "{}", h.logs());
}

#[tokio::test]
async fn the_pool_past_max_pools_is_refused_and_the_watched_ones_keep_working() {
    let h = Harness::start_with(PollerSettings {
        interval: Duration::from_secs(2),
        max_staleness: Duration::from_secs(40),
        ..Default::default()
    })
    .await;
    let pools: Vec<String> = (0..=DEFAULT_MAX_POOLS).map(|i| format!("p{i}")).collect();
    for name in &pools {
        let id = h.sim.ado.add_pool(name);
        // A registration keeps the job queued (ADO fails it at once in a pool without one).
        h.sim
            .ado
            .register_offline_agent(id, TEMPLATE, &capabilities(&[]));
        h.sim.ado.enqueue(id, &[]);
    }
    let trigger = |pool: &str| {
        h.scaled_job(
            &format!("sj-{pool}"),
            &[("poolName", pool), ("placeholder", "false")],
        )
    };
    // A name that is no pool takes no place for good.
    let missing = h.metric(&trigger("no-such-pool")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    for name in &pools[..DEFAULT_MAX_POOLS] {
        assert_eq!(h.metric(&trigger(name)).await.unwrap(), 1, "{name}");
    }
    assert_eq!(
        sample(&h, "ado_scaler_watched_pools ").await,
        DEFAULT_MAX_POOLS as f64
    );
    assert_eq!(
        sample(&h, "ado_scaler_max_pools ").await,
        DEFAULT_MAX_POOLS as f64
    );

    let last = &pools[DEFAULT_MAX_POOLS];
    let refused = h.metric(&trigger(last)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-pools")
            && refused.message().contains(&DEFAULT_MAX_POOLS.to_string()),
        "{refused:?}"
    );
    let mut client = h.client.clone();
    let streamed = client.stream_is_active(trigger(last)).await.unwrap_err();
    assert_eq!(streamed.code(), Code::ResourceExhausted);
    let log = h.sim.ado.request_log();
    assert!(
        !log.iter().any(|l| l.contains(&format!("poolName={last}"))),
        "the 51st pool was looked up: {log:#?}"
    );
    // The pools already watched keep their values.
    assert_eq!(h.metric(&trigger(&pools[0])).await.unwrap(), 1);
    assert_eq!(
        sample(&h, "ado_scaler_denied_total{reason=\"too_many_pools\"}").await,
        2.0
    );
    assert_eq!(
        sample(&h, "ado_scaler_watched_pools ").await,
        DEFAULT_MAX_POOLS as f64
    );
}

#[tokio::test]
async fn metadata_that_would_reach_a_registration_is_bounded() {
    let h = restricted(POOL).await;
    let long = "x".repeat(1025);
    let many: String = (0..101)
        .map(|i| format!("cap{i}"))
        .collect::<Vec<_>>()
        .join(",");
    // (the key named, the metadata, a fragment of the message)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "capabilities",
            &[("capabilities", "docker,ja\u{7}va=17")],
            "control or invisible character '\\u{7}'",
        ),
        (
            "capabilities",
            &[("capabilities", &format!("java={long}"))],
            "1025 characters long; at most 1024",
        ),
        (
            "capabilities",
            &[("capabilities", &many)],
            "101 entries; at most 100",
        ),
        (
            "agentNamePrefix",
            &[("agentNamePrefix", "a\u{7}b")],
            "control or invisible",
        ),
        (
            "agentNamePrefix",
            &[("agentNamePrefix", "agent\u{202E}gnp.exe")],
            "control or invisible character '\\u{202e}'",
        ),
        (
            "agentVersion",
            &[("agentVersion", "4.261.0-b\u{7}x")],
            "control or invisible",
        ),
        (
            "demands",
            &[("demands", &format!("maven,{long}"))],
            "at most 128",
        ),
        (
            "poolName",
            &[("poolName", "lin\u{0}ux")],
            "control or invisible",
        ),
    ];
    for (key, extra, fragment) in cases {
        let r = h.scaled_job("bounded", extra);
        let status = h.metric(&r).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key}: {status:?}");
        assert!(
            status.message().contains(&format!("`{key}`")),
            "{key}: {status:?}"
        );
        assert!(status.message().contains(fragment), "{key}: {status:?}");
        // The message shows the start of an over-long value, never all of it.
        assert!(status.message().len() < 400, "{key}: {status:?}");
    }
    assert_eq!(h.sim.ado.request_log(), Vec::<String>::new());
    // Only the template the harness registered.
    assert_eq!(h.sim.ado.agents(h.pool_id).len(), 1);

    // Within the bounds, the same keys are taken.
    let fine = h.scaled_job(
        "bounded-fine",
        &[
            ("capabilities", &format!("java={}", "x".repeat(1024))),
            ("agentNamePrefix", "agents-"),
            ("agentVersion", "4.261.0-beta"),
        ],
    );
    assert_eq!(h.metric(&fine).await.unwrap(), 0);
}

#[tokio::test]
async fn get_metrics_without_a_reference_is_invalid_not_a_refusal() {
    let h = restricted(POOL).await;
    let mut client = h.client.clone();
    let status = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: None,
            metric_name: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("scaledObjectRef"));
    for reason in ado_scaler::Error::REFUSAL_REASONS {
        let series = format!("ado_scaler_denied_total{{reason=\"{reason}\"}} ");
        let (_, text) = h.http_get("/metrics").await;
        assert!(text.contains(&format!("{series}0")), "{series}: {text}");
    }
}
