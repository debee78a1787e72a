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
