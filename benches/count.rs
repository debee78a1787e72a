//! Cost of answering one KEDA call from a shared snapshot: parse a poll once, then count
//! it for every trigger. Run: `cargo bench --bench count`.

use std::{hint::black_box, time::Duration};

use ado_scaler::{
    ado::models::{JobRequest, List},
    count::{DemandRule, Filter, parse_demands},
    poller::Snapshot,
};
use time::OffsetDateTime;
use tokio::time::Instant;

fn requests(n: usize) -> Vec<JobRequest> {
    let value: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let mut job = serde_json::json!({
                "requestId": i,
                "queueTime": "2026-11-26T05:00:00Z",
                "demands": [format!("team-{}", i % 10), "maven", "Agent.Version -gtVersion 3.248.0"],
                "matchesAllAgentsInPool": false,
                "matchedAgents": [{"id": 1, "name": "template"}],
                "poolId": 10, "planType": "Build", "planId": "p", "jobId": "j",
                "definition": {"id": 1, "name": "ci"}, "owner": {"id": 1, "name": "run"}
            });
            if i % 3 == 0 {
                job["assignTime"] = "2026-11-26T05:00:05Z".into();
                job["reservedAgent"] = serde_json::json!({"id": i, "name": format!("team-{}-agent-{i}", i % 10)});
            }
            job
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "count": n, "value": value })).unwrap();
    serde_json::from_slice::<List<JobRequest>>(&body)
        .unwrap()
        .value
}

fn time<F: FnMut()>(label: &str, iterations: u32, mut f: F) {
    f();
    let started = std::time::Instant::now();
    for _ in 0..iterations {
        f();
    }
    let per = started.elapsed() / iterations;
    println!("{label:<55} {:>10.1} µs", per.as_secs_f64() * 1e6);
}

fn main() {
    let filters: Vec<Filter> = (0..10)
        .map(|t| Filter {
            demands: parse_demands([format!("team-{t}").as_str(), "maven"]),
            rule: DemandRule::JobSubsetOfTrigger,
            agent_name_prefix: Some(format!("team-{t}-")),
            teardown_window: Duration::from_secs(10),
            ..Filter::default()
        })
        .collect();
    for n in [200, 2000] {
        let reqs = requests(n);
        let body = serde_json::to_vec(&List {
            count: reqs.len(),
            value: reqs.clone(),
        })
        .unwrap();
        time(
            &format!("decode {n} job requests ({} KiB JSON)", body.len() / 1024),
            50,
            || {
                black_box(serde_json::from_slice::<List<JobRequest>>(&body).unwrap());
            },
        );
        let now = Instant::now();
        let previous = Snapshot::next(None, &reqs, now, OffsetDateTime::now_utc());
        time(
            &format!("build snapshot of {n} (departures vs previous)"),
            50,
            || {
                black_box(Snapshot::next(
                    Some(&previous),
                    &reqs[n / 10..],
                    now,
                    OffsetDateTime::now_utc(),
                ));
            },
        );
        let snapshot = Snapshot::next(
            Some(&previous),
            &reqs[n / 10..],
            now,
            OffsetDateTime::now_utc(),
        );
        time(&format!("count one trigger over {n} jobs"), 1000, || {
            black_box(filters[3].count(&snapshot.jobs, &snapshot.departed, now));
        });
        time(&format!("count 10 triggers over {n} jobs"), 200, || {
            for f in &filters {
                black_box(f.count(&snapshot.jobs, &snapshot.departed, now));
            }
        });
    }
}
