//! The scaler end to end: simulated Entra + ADO over TLS, the real server, a tonic client.

use std::time::Duration;

use crate::common::{Harness, eventually};
use ado_scaler::scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use ado_sim::{Endpoint, Fault};
use tokio_stream::StreamExt;
use tonic::Code;

const FAST: Duration = Duration::from_millis(200);

#[tokio::test]
async fn value_follows_the_queue() {
    let h = Harness::start(FAST).await;
    let sj = h.scaled_job(
        "agents",
        &[("agentNamePrefix", "agents-"), ("teardownWindow", "0s")],
    );
    assert_eq!(h.metric(&sj).await.unwrap(), 0);

    let a = h.sim.ado.enqueue(h.pool_id, &[]);
    let _b = h.sim.ado.enqueue(h.pool_id, &[]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&sj).await.unwrap() == 2
        })
        .await
    );

    // Assigned to one of our agents: still counted (the Kubernetes Job still runs).
    h.sim
        .ado
        .assign_next(h.pool_id, "agents-x1", &Default::default())
        .unwrap();
    assert_eq!(h.sim.ado.queue_counts(h.pool_id), (1, 1));
    crate::common::polled(&h.sim, 2).await;
    assert_eq!(h.metric(&sj).await.unwrap(), 2);

    // Assigned to an agent outside our prefix: not ours, so not counted.
    h.sim
        .ado
        .assign_next(h.pool_id, "someone-else", &Default::default())
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&sj).await.unwrap() == 1
        })
        .await
    );

    h.sim.ado.finish(a, "succeeded");
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&sj).await.unwrap() == 0
        })
        .await
    );
}

#[tokio::test]
async fn demands_select_jobs() {
    let h = Harness::start(FAST).await;
    h.sim.ado.enqueue(h.pool_id, &["maven"]);
    h.sim.ado.enqueue(h.pool_id, &["gpu"]);
    h.sim.ado.enqueue(h.pool_id, &[]);
    let maven = h.scaled_job("maven", &[("demands", "maven")]);
    let gpu = h.scaled_job(
        "gpu",
        &[
            ("demands", "GPU"),
            ("caseInsensitiveDemandsProcessing", "true"),
        ],
    );
    let all = h.scaled_job("all", &[]);
    assert_eq!(
        h.metric(&maven).await.unwrap(),
        2,
        "maven job + job without demands"
    );
    assert_eq!(h.metric(&gpu).await.unwrap(), 2);
    assert_eq!(h.metric(&all).await.unwrap(), 3);
}

#[tokio::test]
async fn ten_triggers_share_one_poll_and_one_token() {
    let interval = Duration::from_millis(300);
    let h = Harness::start(interval).await;
    h.sim.ado.enqueue(h.pool_id, &["d3"]);
    let triggers: Vec<ScaledObjectRef> = (0..10)
        .map(|i| h.scaled_job(&format!("sj-{i}"), &[("demands", &format!("d{i}"))]))
        .collect();

    // A cold start: ten concurrent callers share the first fetch.
    let first = futures::future::join_all(triggers.iter().map(|t| h.metric(t))).await;
    assert_eq!(first.iter().map(|r| *r.as_ref().unwrap()).sum::<i64>(), 1);
    assert_eq!(
        h.sim.ado.requests(Endpoint::JobRequests),
        1,
        "one fetch for ten cold callers"
    );
    assert_eq!(
        h.sim.ado.requests(Endpoint::Pools),
        1,
        "poolName resolved once"
    );

    let started = tokio::time::Instant::now();
    let before = h.sim.ado.requests(Endpoint::JobRequests);
    while started.elapsed() < interval * 10 {
        for t in &triggers {
            h.metric(t).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let polls = h.sim.ado.requests(Endpoint::JobRequests) - before;
    let intervals = (started.elapsed().as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    assert!(
        polls <= intervals + 1,
        "{polls} polls in {intervals} intervals"
    );
    assert!(
        polls >= intervals.saturating_sub(2),
        "the watcher keeps polling: {polls} in {intervals}"
    );
    assert_eq!(
        h.sim.ado.requests(Endpoint::Pools),
        1,
        "poolName stays cached"
    );
    assert_eq!(h.sim.entra.requests(), 1, "one token for every poll");
}

/// Matched agent names are read only for `parent` triggers (a big pool's answer is mostly
/// `matchedAgents`). A parent trigger that arrives after the pool is polled must not get a
/// count from a snapshot read without its name: its first call polls at once.
#[tokio::test]
async fn a_new_parent_trigger_polls_at_once_and_counts_what_ado_matched_to_it() {
    // Only the immediate poll for a new parent can bring a second snapshot within the test.
    let h = Harness::start(Duration::from_secs(600)).await;
    let ado = &h.sim.ado;
    ado.register_offline_agent(
        h.pool_id,
        "maven-box",
        &crate::common::capabilities(&["maven"]),
    );
    ado.register_offline_agent(h.pool_id, "gpu-box", &crate::common::capabilities(&["gpu"]));
    ado.enqueue(h.pool_id, &["maven"]);
    ado.enqueue(h.pool_id, &["maven"]);
    ado.enqueue(h.pool_id, &["gpu"]);
    let all = h.scaled_job("all", &[("placeholder", "false")]);
    assert_eq!(h.metric(&all).await.unwrap(), 3);
    assert_eq!(ado.requests(Endpoint::JobRequests), 1);

    let maven = h.scaled_job("maven", &[("parent", "maven-box")]);
    assert_eq!(
        h.metric(&maven).await.unwrap(),
        2,
        "the gpu job is not matched to it"
    );
    assert_eq!(
        ado.requests(Endpoint::JobRequests),
        2,
        "one poll more, at once"
    );
    assert_eq!(h.metric(&maven).await.unwrap(), 2);
    assert_eq!(
        ado.requests(Endpoint::JobRequests),
        2,
        "a known parent waits for nothing"
    );

    let gpu = h.scaled_job("gpu", &[("parent", "gpu-box")]);
    let absent = h.scaled_job("absent", &[("parent", "no-such-agent")]);
    let (gpu, absent) = tokio::join!(h.metric(&gpu), h.metric(&absent));
    assert_eq!((gpu.unwrap(), absent.unwrap()), (1, 0));
    assert!(
        ado.requests(Endpoint::JobRequests) <= 4,
        "new parents asking together share polls"
    );
    // The earlier parent is still read for: its count stands.
    assert_eq!(h.metric(&maven).await.unwrap(), 2);
}

#[tokio::test]
async fn sign_in_page_is_a_clear_error() {
    let h = Harness::start(FAST).await;
    // The identity is not a member of the organisation: ADO answers 203 with an HTML sign-in page.
    h.sim.ado.accept_tokens(false);
    let err = h.metric(&h.scaled_job("x", &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("not added to the organisation"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("HTTP 203"), "{}", err.message());
    assert!(
        !err.message().contains("<html"),
        "no upstream body: {}",
        err.message()
    );
}

#[tokio::test]
async fn errors_map_to_grpc_codes() {
    let h = Harness::start(FAST).await;
    type Case = (&'static [(&'static str, &'static str)], Code, &'static str);
    let cases: &[Case] = &[
        (&[("poolName", "nope")], Code::NotFound, "agent pool `nope`"),
        (
            &[("organizationURL", "https://evil.example/contoso")],
            Code::PermissionDenied,
            "--allowed-orgs",
        ),
        (
            &[("targetPipelinesQueueLength", "zero")],
            Code::InvalidArgument,
            "targetPipelinesQueueLength",
        ),
        (
            &[("personalAccessToken", "abc123")],
            Code::InvalidArgument,
            "personalAccessToken",
        ),
    ];
    for (extra, code, fragment) in cases {
        let err = h.metric(&h.scaled_job("x", extra)).await.unwrap_err();
        assert_eq!(err.code(), *code, "{extra:?}: {err:?}");
        assert!(
            err.message().contains(fragment),
            "{extra:?}: {}",
            err.message()
        );
        assert!(!err.message().contains("abc123"));
    }
    let mut client = h.client.clone();
    let err = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: None,
            metric_name: "m".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn metric_spec_and_is_active() {
    let h = Harness::start(FAST).await;
    let sj = h.scaled_job(
        "agents",
        &[
            ("targetPipelinesQueueLength", "2"),
            ("activationTargetPipelinesQueueLength", "1"),
        ],
    );
    let mut client = h.client.clone();
    let spec = client
        .get_metric_spec(sj.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].metric_name, "ado-pool-linux");
    assert_eq!(
        (
            spec.metric_specs[0].target_size,
            spec.metric_specs[0].target_size_float
        ),
        (2, 2.0)
    );

    assert!(
        !client
            .is_active(sj.clone())
            .await
            .unwrap()
            .into_inner()
            .result
    );
    h.sim.ado.enqueue(h.pool_id, &[]);
    crate::common::polled(&h.sim, 2).await;
    assert_eq!(h.metric(&sj).await.unwrap(), 1, "the new job is seen");
    assert!(
        !client
            .is_active(sj.clone())
            .await
            .unwrap()
            .into_inner()
            .result,
        "1 is not above activation 1"
    );
    h.sim.ado.enqueue(h.pool_id, &[]);
    assert!(
        eventually(Duration::from_secs(5), || {
            let (mut c, sj) = (client.clone(), sj.clone());
            async move { c.is_active(sj).await.unwrap().into_inner().result }
        })
        .await
    );

    let mut specs = client.stream_metric_spec(sj).await.unwrap().into_inner();
    let first = specs.next().await.unwrap().unwrap();
    assert_eq!(first.metric_specs[0].target_size, 2);
    // The stream stays open after the spec.
    assert!(tokio::time::timeout(FAST, specs.next()).await.is_err());
}

#[tokio::test]
async fn stream_is_active_pushes_changes_within_an_interval() {
    let interval = Duration::from_millis(300);
    let h = Harness::start(interval).await;
    let sj = h.scaled_job("agents", &[("teardownWindow", "0s")]);
    let mut client = h.client.clone();
    let mut stream = client.stream_is_active(sj).await.unwrap().into_inner();
    assert!(
        !stream.next().await.unwrap().unwrap().result,
        "current value at once"
    );

    let id = h.sim.ado.enqueue(h.pool_id, &[]);
    let changed =
        tokio::time::timeout(interval * 2 + Duration::from_millis(200), stream.next()).await;
    assert!(
        changed
            .expect("pushed within one interval")
            .unwrap()
            .unwrap()
            .result
    );

    h.sim.ado.finish(id, "succeeded");
    let changed =
        tokio::time::timeout(interval * 2 + Duration::from_millis(200), stream.next()).await;
    assert!(
        !changed
            .expect("pushed within one interval")
            .unwrap()
            .unwrap()
            .result
    );
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(metrics.contains("ado_scaler_active_streams 1"), "{metrics}");
}

#[tokio::test]
async fn rate_limit_waits_for_retry_after_and_is_recorded() {
    let interval = Duration::from_millis(100);
    let h = Harness::start(interval).await;
    let sj = h.scaled_job("agents", &[]);
    h.sim.ado.set_rate_limit_remaining(Some(17));
    assert_eq!(h.metric(&sj).await.unwrap(), 0);
    let before = h.sim.ado.requests(Endpoint::JobRequests);
    h.sim.ado.add_fault(
        Fault::status(Endpoint::JobRequests, 429)
            .retry_after(1)
            .times(1),
    );
    // The watcher's next poll gets the 429 ...
    assert!(
        eventually(Duration::from_secs(3), || async {
            h.sim.ado.requests(Endpoint::JobRequests) > before
        })
        .await
    );
    let at_429 = h.sim.ado.requests(Endpoint::JobRequests);
    let limited_at = tokio::time::Instant::now();
    // ... and then waits Retry-After (1 s) instead of the 100 ms interval.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        h.sim.ado.requests(Endpoint::JobRequests),
        at_429,
        "no poll during Retry-After"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            h.sim.ado.requests(Endpoint::JobRequests) > at_429
        })
        .await
    );
    assert!(
        limited_at.elapsed() >= Duration::from_millis(850),
        "resumed after Retry-After"
    );
    // The cached snapshot keeps answering meanwhile.
    assert_eq!(h.metric(&sj).await.unwrap(), 0);
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(
        metrics.contains("ado_scaler_rate_limit_remaining{org="),
        "{metrics}"
    );
    assert!(metrics.contains("code=\"429\""), "{metrics}");
}

#[tokio::test]
async fn stale_data_becomes_unavailable() {
    let interval = Duration::from_millis(100);
    let h = Harness::start_with(ado_scaler::poller::PollerSettings {
        interval,
        max_staleness: Duration::from_millis(500),
        max_backoff: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 0);
    h.sim
        .ado
        .add_fault(Fault::status(Endpoint::JobRequests, 503));
    let unavailable = eventually(Duration::from_secs(5), || async {
        matches!(h.metric(&sj).await, Err(e) if e.code() == Code::Unavailable && e.message().contains("HTTP 503"))
    })
    .await;
    assert!(
        unavailable,
        "stale data must fail with UNAVAILABLE naming the last error"
    );
    h.sim.ado.clear_faults();
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&sj).await.is_ok()
        })
        .await
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_calls() {
    let mut h = Harness::start(FAST).await;
    let sj = h.scaled_job("agents", &[]);
    // KEDA keeps streams open; shutdown must end them rather than wait for them.
    let mut spec_stream = h
        .client
        .clone()
        .stream_metric_spec(sj.clone())
        .await
        .unwrap()
        .into_inner();
    spec_stream.next().await.unwrap().unwrap();
    // A slow first poll keeps the call in flight while shutdown begins.
    h.sim
        .ado
        .add_fault(Fault::delay(Endpoint::JobRequests, Duration::from_millis(600)).times(1));
    let in_flight = {
        let mut client = h.client.clone();
        let sj = sj.clone();
        tokio::spawn(async move { client.is_active(sj).await })
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.sim.ado.requests(Endpoint::JobRequests) == 1
        })
        .await
    );
    let (code, _) = h.http_get("/readyz").await;
    assert_eq!(code, 200);
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "externalscaler.ExternalScaler".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let result = tokio::time::timeout(Duration::from_secs(10), h.shutdown())
        .await
        .expect("drains in time");
    result.unwrap();
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call finished");
    assert!(!answer.into_inner().result);
    assert!(
        tokio::net::TcpStream::connect(h.grpc_addr).await.is_err(),
        "listener closed"
    );
}

/// A stream that never ends by itself (a health Watch, as a mesh or a monitor opens) does
/// not hold the process: it sees NOT_SERVING, and the drain ends at its deadline.
#[tokio::test]
async fn an_endless_stream_does_not_hold_shutdown_past_the_drain_deadline() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let mut h = Harness::start(FAST).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "externalscaler.ExternalScaler".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), h.shutdown())
        .await
        .expect("the drain deadline ends the wait");
    result.unwrap();
    let took = started.elapsed();
    assert!(
        took >= ado_scaler::serve::DRAIN_DEADLINE && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32,
        "the watcher was told first"
    );
}

#[tokio::test]
async fn metrics_and_health_endpoints() {
    let h = Harness::start(FAST).await;
    h.sim.ado.enqueue(h.pool_id, &[]);
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 1);
    assert_eq!(h.http_get("/healthz").await.0, 200);
    assert_eq!(h.http_get("/readyz").await.0, 200);
    let (code, text) = h.http_get("/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        "ado_scaler_queue_jobs{org=",
        "state=\"queued\"} 1",
        "ado_scaler_trigger_value{namespace=\"agents\",name=\"agents\",pool=\"linux\"} 1",
        "ado_scaler_ado_requests_total{",
        "endpoint=\"jobrequests\",code=\"200\"}",
        "ado_scaler_ado_request_duration_seconds_count{endpoint=\"jobrequests\"}",
        "ado_scaler_poll_age_seconds{",
        "ado_scaler_token_requests_total{result=\"success\"} 1",
        "ado_scaler_grpc_requests_total{method=\"GetMetrics\",code=\"OK\"}",
        "ado_scaler_grpc_request_duration_seconds_count{method=\"GetMetrics\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Transitions between polls: started (with its queue wait), then finished.
    let id = h
        .sim
        .ado
        .assign_next(h.pool_id, "agent-1", &Default::default())
        .unwrap();
    let started = eventually(Duration::from_secs(5), || async {
        let text = h.http_get("/metrics").await.1;
        text.contains("ado_scaler_jobs_started_total{org=")
            && text.contains("pool=\"linux\"} 1\n")
            && text.contains("ado_scaler_job_queue_wait_seconds_count{")
    })
    .await;
    assert!(started, "{}", h.http_get("/metrics").await.1);
    h.sim.ado.finish(id, "succeeded");
    let finished = eventually(Duration::from_secs(5), || async {
        h.http_get("/metrics")
            .await
            .1
            .lines()
            .any(|l| l.starts_with("ado_scaler_jobs_finished_total{") && l.ends_with(" 1"))
    })
    .await;
    assert!(finished, "{}", h.http_get("/metrics").await.1);
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    let overall = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        overall.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_recreated_pool_is_found_again() {
    let h = Harness::start(FAST).await;
    h.sim.ado.enqueue(h.pool_id, &[]);
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 1);
    h.sim.ado.delete_pool(h.pool_id);
    let new_id = h.sim.ado.add_pool(crate::common::POOL);
    assert_ne!(new_id, h.pool_id);
    // A new pool has no registration: without one ADO would fail the jobs at once.
    h.sim
        .ado
        .register_offline_agent(new_id, crate::common::TEMPLATE, &Default::default());
    h.sim.ado.enqueue(new_id, &[]);
    h.sim.ado.enqueue(new_id, &[]);
    // The old id answers 404 once the watcher polls it; the name is then looked up again.
    let recovered = eventually(Duration::from_secs(10), || async {
        h.metric(&sj).await.ok() == Some(2)
    })
    .await;
    assert!(recovered, "value from the recreated pool");
    assert_eq!(h.sim.ado.requests(Endpoint::Pools), 2);
}

#[tokio::test]
async fn an_unused_pool_stops_being_polled() {
    let h = Harness::start_with(ado_scaler::poller::PollerSettings {
        interval: Duration::from_millis(100),
        max_staleness: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let after_idle = h.sim.ado.requests(Endpoint::JobRequests);
    assert!(after_idle >= 3, "polled while in use: {after_idle}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.sim.ado.requests(Endpoint::JobRequests),
        after_idle,
        "no polls once idle"
    );
    // The next call starts it again.
    assert_eq!(h.metric(&sj).await.unwrap(), 0);
    assert_eq!(h.sim.ado.requests(Endpoint::JobRequests), after_idle + 1);
}
