//! The fault matrix: each failure of ADO or Entra the simulators can switch on, with what KEDA
//! gets, what is counted, and the recovery once the fault clears.

mod common;

use std::time::Duration;

use ado_scaler::{
    poller::PollerSettings,
    sim::ado::{Endpoint, Fault},
};
use common::{Harness, eventually};
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
