//! The fault matrix: each failure of ADO or Entra the simulators can switch on, with what KEDA
//! gets, what is counted, and the recovery once the fault clears.

use std::time::Duration;

use crate::common::{Harness, eventually};
use ado_scaler::poller::PollerSettings;
use ado_sim::ado::{BodyFault, Endpoint, Fault};
use tonic::Code;

/// Poll 1 s, `--max-staleness 5s`: three 503s in a row, then ADO recovers. The retries stay
/// within a quarter of the staleness bound, so the recovery is seen before the last good
/// snapshot expires and KEDA never gets UNAVAILABLE.
#[tokio::test]
async fn three_failures_then_recovery_never_reach_keda() {
    let h = Harness::start_with(PollerSettings {
        interval: Duration::from_secs(1),
        max_staleness: Duration::from_secs(5),
        ..PollerSettings::default()
    })
    .await;
    let sj = h.scaled_job("agents", &[]);
    h.sim.ado.enqueue(h.pool_id, &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 1);
    let before = h.sim.ado.requests(Endpoint::JobRequests);
    h.sim
        .ado
        .add_fault(Fault::status(Endpoint::JobRequests, 503).times(3));
    // Until the three failures are spent and two good polls follow, KEDA keeps its value.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while h.sim.ado.requests(Endpoint::JobRequests) < before + 5 {
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        match h.metric(&sj).await {
            Ok(value) => assert_eq!(value, 1),
            Err(status) => panic!("KEDA got {:?}: {}", status.code(), status.message()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(
        metrics.contains("endpoint=\"jobrequests\",code=\"503\"} 3"),
        "{metrics}"
    );
}

/// Retry-After still wins over the staleness bound: a 429 asking for 3 s is honoured even
/// with `--max-staleness 2s`: the value goes stale (UNAVAILABLE) rather than ADO being polled early.
#[tokio::test]
async fn retry_after_wins_over_the_staleness_bound() {
    let h = Harness::start_with(PollerSettings {
        interval: Duration::from_millis(200),
        max_staleness: Duration::from_secs(2),
        ..PollerSettings::default()
    })
    .await;
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 0);
    h.sim.ado.add_fault(
        Fault::status(Endpoint::JobRequests, 429)
            .retry_after(3)
            .times(1),
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            h.sim.ado.requests(Endpoint::JobRequests) > 0
                && h.http_get("/metrics").await.1.contains("code=\"429\"")
        })
        .await
    );
    let limited_at = tokio::time::Instant::now();
    let after_429 = h.sim.ado.requests(Endpoint::JobRequests);
    assert!(
        eventually(Duration::from_secs(3), || async {
            matches!(h.metric(&sj).await, Err(e) if e.code() == Code::Unavailable)
        })
        .await,
        "the value goes stale while the scaler waits out Retry-After"
    );
    assert_eq!(
        h.sim.ado.requests(Endpoint::JobRequests),
        after_429,
        "no poll before Retry-After"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&sj).await.is_ok()
        })
        .await
    );
    assert!(limited_at.elapsed() >= Duration::from_millis(2500));
}

fn metric_line<'a>(metrics: &'a str, prefix: &str) -> Vec<&'a str> {
    metrics.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// An answer split into pages by `x-ms-continuationtoken` is followed to the end: 400 jobs in
/// pages of 150 are all counted, in one poll of three requests.
#[tokio::test]
async fn paged_answers_are_followed_to_the_last_page() {
    let h = Harness::start(Duration::from_millis(300)).await;
    h.sim.ado.page_job_requests(Some(150));
    for _ in 0..400 {
        h.sim.ado.enqueue(h.pool_id, &[]);
    }
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 400);
    let polls_before = h.sim.ado.requests(Endpoint::JobRequests);
    assert_eq!(polls_before % 3, 0, "three pages a poll: {polls_before}");
    let (_, metrics) = h.http_get("/metrics").await;
    assert_eq!(
        metric_line(&metrics, "ado_scaler_poll_possibly_truncated{"),
        [format!(
            "ado_scaler_poll_possibly_truncated{{org=\"{}\",pool=\"linux\"}} 0",
            h.sim.org_url
        )]
    );
}

/// An answer of exactly 200 rows and no continuation token may have been capped by ADO: the
/// gauge says so while it lasts, and the count is what ADO gave (nothing is invented).
#[tokio::test]
async fn a_silently_capped_answer_is_flagged_while_it_lasts() {
    let h = Harness::start(Duration::from_millis(200)).await;
    h.sim.ado.cap_job_requests(Some(200));
    let ids: Vec<u64> = (0..250)
        .map(|_| h.sim.ado.enqueue(h.pool_id, &[]))
        .collect();
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 200);
    let flag = |value: u8| {
        format!(
            "ado_scaler_poll_possibly_truncated{{org=\"{}\",pool=\"linux\"}} {value}",
            h.sim.org_url
        )
    };
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(metrics.contains(&flag(1)), "{metrics}");
    for id in &ids[..60] {
        assert!(h.sim.ado.cancel_if_queued(*id));
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric(&sj).await.unwrap() == 190
        })
        .await
    );
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(metrics.contains(&flag(0)), "{metrics}");
}

// ---- The fault matrix ----------------------------------------------------------------------
//
// Each case: one queued job and a good first poll, then the fault. KEDA keeps the last good
// value (never another one) until `--max-staleness`, then gets UNAVAILABLE naming the failure;
// `ado_scaler_poll_failures_total{reason}` counts it; once the fault clears, the value comes
// back by itself.

/// Poll 200 ms, stale after 1 s, `--max-body 256KiB`, and an HTTP client that gives up soon
/// (connect 300 ms, 600 ms in all) so that timeouts fit in a test and end before the value goes
/// stale; tokens live `token_lifetime`.
async fn matrix_harness(token_lifetime: Duration) -> Harness {
    let h = Harness::start_tuned(
        PollerSettings {
            interval: Duration::from_millis(200),
            max_staleness: Duration::from_secs(1),
            ..PollerSettings::default()
        },
        |sim, settings| {
            sim.entra.set_token_lifetime(token_lifetime);
            settings.max_body = 256 * 1024;
            settings.http = reqwest::Client::builder()
                .tls_certs_merge(
                    reqwest::Certificate::from_pem_bundle(sim.ca_pem.as_bytes()).unwrap(),
                )
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_millis(600))
                .build()
                .unwrap();
        },
    )
    .await;
    h.sim.ado.enqueue(h.pool_id, &[]);
    h
}

/// What KEDA saw from the fault's start: how long the last good value lasted, and the error.
struct Outcome {
    held: Duration,
    error: tonic::Status,
}

/// Switches the fault on with `on`, checks what KEDA gets and what is counted, switches it off
/// with `off` and waits for the value to come back.
async fn fault_case(
    h: &Harness,
    on: impl FnOnce(),
    off: impl FnOnce(),
    reason: &str,
    says: &str,
) -> Outcome {
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 1);
    on();
    let started = tokio::time::Instant::now();
    let error = loop {
        match h.metric(&sj).await {
            Ok(value) => assert_eq!(value, 1, "{reason}: only the last good value, nothing else"),
            Err(status) => break status,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{reason}: never went stale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let held = started.elapsed();
    assert_eq!(error.code(), Code::Unavailable, "{reason}: {error:?}");
    assert!(
        error.message().contains(says),
        "{reason}: {:?} does not say {says:?}",
        error.message()
    );
    let counted = format!(
        "ado_scaler_poll_failures_total{{org=\"{}\",pool=\"linux\",reason=\"{reason}\"}}",
        h.sim.org_url
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            h.http_get("/metrics").await.1.contains(&counted)
        })
        .await,
        "{counted} never counted"
    );
    off();
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.metric(&sj).await.is_ok_and(|v| v == 1)
        })
        .await,
        "{reason}: no recovery"
    );
    Outcome { held, error }
}

fn ado_fault(h: &Harness, fault: Fault) -> (impl FnOnce() + '_, impl FnOnce() + '_) {
    (
        move || h.sim.ado.add_fault(fault),
        || h.sim.ado.clear_faults(),
    )
}

#[tokio::test]
async fn matrix_ado_server_errors() {
    let h = matrix_harness(Duration::from_secs(3599)).await;
    for status in [500, 502, 503] {
        let (on, off) = ado_fault(&h, Fault::status(Endpoint::JobRequests, status));
        fault_case(&h, on, off, "upstream_status", &format!("HTTP {status}")).await;
    }
}

#[tokio::test]
async fn matrix_ado_rate_limited() {
    let h = matrix_harness(Duration::from_secs(3599)).await;
    let (on, off) = ado_fault(&h, Fault::status(Endpoint::JobRequests, 429).retry_after(1));
    fault_case(&h, on, off, "rate_limited", "HTTP 429").await;
}

#[tokio::test]
async fn matrix_ado_unreachable_connect_timeout() {
    let h = matrix_harness(Duration::from_secs(3599)).await;
    let network = &h.sim.ado_network;
    let outcome = fault_case(
        &h,
        || network.set_unreachable(true),
        || network.set_unreachable(false),
        "transport",
        "timed out",
    )
    .await;
    assert!(
        outcome.error.message().contains("request to"),
        "{:?}",
        outcome.error
    );
}

#[tokio::test]
async fn matrix_ado_body_faults() {
    let h = matrix_harness(Duration::from_secs(3599)).await;
    let cases = [
        (BodyFault::StallMidBody, "transport", "timed out"),
        (BodyFault::ResetMidBody, "transport", "request to"),
        (BodyFault::Truncated, "decode", "unexpected response"),
        (
            BodyFault::Oversized {
                size: 1 << 20,
                chunked: false,
            },
            "too_large",
            "larger than --max-body (262144 bytes; it declared",
        ),
        (
            BodyFault::Oversized {
                size: 1 << 20,
                chunked: true,
            },
            "too_large",
            "larger than --max-body (262144 bytes)",
        ),
    ];
    for (body, reason, says) in cases {
        let (on, off) = ado_fault(&h, Fault::body(Endpoint::JobRequests, body));
        fault_case(&h, on, off, reason, says).await;
    }
}

#[tokio::test]
async fn matrix_ado_refuses_the_identity() {
    let h = matrix_harness(Duration::from_secs(3599)).await;
    let ado = &h.sim.ado;
    fault_case(
        &h,
        || ado.accept_tokens(false),
        || ado.accept_tokens(true),
        "not_accepted",
        "HTTP 203, a sign-in page",
    )
    .await;
    let (on, off) = ado_fault(&h, Fault::status(Endpoint::JobRequests, 401));
    fault_case(&h, on, off, "not_accepted", "HTTP 401").await;
    let (on, off) = ado_fault(&h, Fault::status(Endpoint::JobRequests, 403));
    fault_case(&h, on, off, "forbidden", "HTTP 403").await;
}

/// Tokens live 14 s here, so azure_identity wants a new one at every poll (it renews five
/// minutes before expiry) and the cached one is usable for 4 s more (10 s margin).
const SHORT_TOKEN: Duration = Duration::from_secs(14);

/// An Entra fault: the current token carries the polls until it expires (without it the value
/// would be stale in about a second), then KEDA is told what `says`.
async fn entra_fault(on: impl FnOnce(&Harness), off: impl FnOnce(&Harness), says: &str) {
    let h = matrix_harness(SHORT_TOKEN).await;
    let outcome = fault_case(&h, || on(&h), || off(&h), "token", says).await;
    assert!(
        outcome.held > Duration::from_millis(2500),
        "{:?}",
        outcome.held
    );
}

/// Entra down: after the token expires azure_core retries the exchange with backoff, and
/// KEDA is told the poll is waiting.
#[tokio::test]
async fn matrix_entra_down_uses_the_token_until_it_expires() {
    entra_fault(
        |h| h.sim.entra_network.set_unreachable(true),
        |h| h.sim.entra_network.set_unreachable(false),
        "the current poll has been waiting",
    )
    .await;
}

#[tokio::test]
async fn matrix_entra_aadsts_error() {
    entra_fault(
        |h| h.sim.entra.refuse_assertions(true),
        |h| h.sim.entra.refuse_assertions(false),
        "AADSTS700213",
    )
    .await;
}

/// The federated token file is read at every exchange: a rotated file's new content is what
/// Entra gets (the simulated Entra accepts only the file's current content), and a missing
/// file is named.
#[tokio::test]
async fn matrix_federated_token_file_rotated_or_missing() {
    let h = matrix_harness(SHORT_TOKEN).await;
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 1);
    let issued = h.sim.entra.issued();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = ado_sim::entra::service_account_token(ado_sim::SIM_ISSUER, ado_sim::SIM_SUBJECT);
    let previous = std::fs::read_to_string(&h.sim.token_file).unwrap();
    assert_ne!(rotated, previous, "a new token (new iat)");
    std::fs::write(&h.sim.token_file, &rotated).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(h.metric(&sj).await.unwrap(), 1, "the rotated token is used");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.sim.entra.issued() > issued + 3, "tokens keep coming");

    let file = h.sim.token_file.clone();
    fault_case(
        &h,
        || std::fs::remove_file(&file).unwrap(),
        || std::fs::write(&file, &rotated).unwrap(),
        "token",
        "failed to read federated token from file",
    )
    .await;
}

/// A low budget in `X-RateLimit-Remaining`: the pool is polled at half the rate while it
/// lasts, the interval gauge says so, and values keep coming.
#[tokio::test]
async fn matrix_low_rate_budget_slows_polls() {
    let h = matrix_harness(Duration::from_secs(3599)).await;
    let sj = h.scaled_job("agents", &[]);
    assert_eq!(h.metric(&sj).await.unwrap(), 1);
    let gauge = |seconds: &str| {
        format!(
            "ado_scaler_poll_interval_seconds{{org=\"{}\",pool=\"linux\"}} {seconds}",
            h.sim.org_url
        )
    };
    h.sim.ado.set_rate_limit_remaining(Some(10));
    assert!(
        eventually(Duration::from_secs(3), || async {
            h.http_get("/metrics").await.1.contains(&gauge("0.4"))
        })
        .await
    );
    // Gaps between polls: never shorter than the slowed interval (a loaded machine only
    // makes them longer); the polls keep coming.
    let times = crate::common::poll_times(&h.sim, 4, Duration::from_secs(5)).await;
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(350)),
        "polls at 0.4 s, gaps {gaps:?}"
    );
    assert_eq!(h.metric(&sj).await.unwrap(), 1);
    h.sim.ado.set_rate_limit_remaining(None);
    assert!(
        eventually(Duration::from_secs(3), || async {
            h.http_get("/metrics").await.1.contains(&gauge("0.2"))
        })
        .await
    );
}
