//! Parallel-job awareness against the simulated organisation, whose queue runs no more private
//! jobs at once than its parallel jobs: queued jobs past the free ones are not counted, two
//! pools share the organisation's slots in queue order, a slot that frees lets the next job
//! count within one interval, and usage that cannot be read caps nothing.

use std::time::Duration;

use ado_scaler::{parallelism::ParallelismSettings, poller::PollerSettings};
use ado_sim::{Endpoint, Fault};

use crate::common::{Harness, TEMPLATE, capabilities, eventually};

/// The usage read interval in these tests; pools are polled every 100 ms.
const INTERVAL: Duration = Duration::from_millis(300);

async fn start(enabled: bool) -> Harness {
    Harness::start_tuned(
        PollerSettings {
            interval: Duration::from_millis(100),
            max_staleness: Duration::from_secs(5),
            ..PollerSettings::default()
        },
        |_, settings| {
            settings.parallelism = ParallelismSettings {
                enabled,
                interval: INTERVAL,
                ..ParallelismSettings::default()
            };
        },
    )
    .await
}

/// `n` queued `maven` jobs in `pool`, oldest first.
fn queue(h: &Harness, pool: u32, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| h.sim.ado.enqueue(pool, &["maven"]))
        .collect()
}

/// The value of a `demands: maven` trigger on `pool_name` once it equals `expected`, or the
/// last value seen after 5 s.
async fn settles(h: &Harness, name: &str, extra: &[(&str, &str)], expected: i64) -> i64 {
    let r = h.scaled_job(name, &[&[("demands", "maven")], extra].concat());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let value = h.metric(&r).await.unwrap();
        if value == expected || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric_line(h: &Harness, prefix: &str) -> Option<String> {
    let (_, text) = h.http_get("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_beyond_the_parallel_jobs_are_not_counted() {
    let h = start(true).await;
    h.sim.ado.set_parallel_jobs(Some(2));
    let jobs = queue(&h, h.pool_id, 5);
    // One of them runs: one parallel job is left for the four queued.
    assert_eq!(
        h.sim
            .ado
            .assign_next(h.pool_id, "agent-1", &capabilities(&["maven"])),
        Some(jobs[0])
    );
    // Counted: the running job (scaleOnInFlight) and the oldest queued one.
    assert_eq!(settles(&h, "capped", &[], 2).await, 2);
    // With headroom for one: the next in line counts too.
    assert_eq!(
        settles(&h, "ahead", &[("parallelismHeadroom", "1")], 3).await,
        3
    );
    // Opted out: every queued job, as KEDA's scaler counts them.
    let uncapped = [("parallelismAware", "false")];
    assert_eq!(settles(&h, "uncapped", &uncapped, 5).await, 5);
    // A public project's job takes no private parallel job: it counts beyond the cap.
    h.sim.ado.make_public(jobs[4]);
    assert_eq!(settles(&h, "capped", &[], 3).await, 3);

    let org = &h.sim.org_url;
    for (line, value) in [
        (
            format!("ado_scaler_parallel_jobs{{org=\"{org}\",kind=\"total\"}} "),
            "2",
        ),
        (
            format!("ado_scaler_parallel_jobs{{org=\"{org}\",kind=\"running\"}} "),
            "1",
        ),
        (
            format!("ado_scaler_parallel_jobs{{org=\"{org}\",kind=\"free\"}} "),
            "1",
        ),
        (
            format!("ado_scaler_jobs_waiting_for_parallelism{{org=\"{org}\",pool=\"linux\"}} "),
            "2",
        ),
        (
            format!("ado_scaler_parallelism_cap_applied{{org=\"{org}\"}} "),
            "1",
        ),
    ] {
        let found = metric_line(&h, &line).await;
        assert_eq!(
            found.as_deref().and_then(|l| l.strip_prefix(line.as_str())),
            Some(value),
            "{line}"
        );
    }
    // The simulated queue agrees: a second agent gets the one free slot's job, a third none.
    let caps = capabilities(&["maven"]);
    assert_eq!(
        h.sim.ado.assign_next(h.pool_id, "agent-2", &caps),
        Some(jobs[1])
    );
    assert_eq!(
        h.sim.ado.assign_next(h.pool_id, "agent-3", &caps),
        Some(jobs[4])
    );
    assert_eq!(h.sim.ado.assign_next(h.pool_id, "agent-4", &caps), None);
    assert!(h.sim.ado.waits_for_parallelism(h.pool_id, "agent-4", &caps));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_share_the_organisations_slots_in_queue_order() {
    let h = start(true).await;
    let windows = h.sim.ado.add_pool("windows");
    h.sim
        .ado
        .register_offline_agent(windows, TEMPLATE, &capabilities(&["maven"]));
    h.sim.ado.set_parallel_jobs(Some(3));
    // Queue order: windows, linux, windows, linux, linux.
    let w1 = h.sim.ado.enqueue(windows, &["maven"]);
    let l1 = h.sim.ado.enqueue(h.pool_id, &["maven"]);
    let w2 = h.sim.ado.enqueue(windows, &["maven"]);
    let _l2 = h.sim.ado.enqueue(h.pool_id, &["maven"]);
    let _l3 = h.sim.ado.enqueue(h.pool_id, &["maven"]);
    let on_windows = |name: &str| {
        let mut r = h.scaled_job(name, &[("demands", "maven")]);
        r.scaler_metadata
            .insert("poolName".into(), "windows".into());
        r
    };
    // Both pools watched: the three oldest (w1, l1, w2) take the three slots.
    let windows_value = || async { h.metric(&on_windows("win")).await.unwrap() };
    assert_eq!(windows_value().await, 2);
    assert_eq!(settles(&h, "lin", &[], 1).await, 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            windows_value().await == 2
        })
        .await
    );
    // The windows jobs run; the linux jobs queued after them wait for nothing any more.
    let caps = capabilities(&["maven"]);
    for (agent, job) in [("w-a", w1), ("w-b", w2)] {
        assert_eq!(h.sim.ado.assign_next(windows, agent, &caps), Some(job));
    }
    h.sim.ado.finish(w1, "succeeded");
    h.sim.ado.finish(w2, "succeeded");
    assert_eq!(
        settles(&h, "lin", &[], 3).await,
        3,
        "l1 {l1} and both others"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_freeing_lets_the_next_job_count_within_one_interval() {
    let h = start(true).await;
    h.sim.ado.set_parallel_jobs(Some(1));
    let jobs = queue(&h, h.pool_id, 3);
    let caps = capabilities(&["maven"]);
    assert_eq!(
        h.sim.ado.assign_next(h.pool_id, "agent-1", &caps),
        Some(jobs[0])
    );
    // The running job alone: both queued jobs wait.
    assert_eq!(
        settles(&h, "one-slot", &[("scaleOnInFlight", "false")], 0).await,
        0
    );
    h.sim.ado.finish(jobs[0], "succeeded");
    let freed = tokio::time::Instant::now();
    assert_eq!(
        settles(&h, "one-slot", &[("scaleOnInFlight", "false")], 1).await,
        1
    );
    let took = freed.elapsed();
    // Seen at the pool's next poll (100 ms) at the latest by the next usage read.
    assert!(took <= INTERVAL + Duration::from_millis(500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_that_cannot_be_read_caps_nothing() {
    let h = start(true).await;
    h.sim.ado.set_parallel_jobs(Some(1));
    h.sim
        .ado
        .add_fault(Fault::status(Endpoint::ResourceUsage, 403));
    queue(&h, h.pool_id, 4);
    assert_eq!(settles(&h, "forbidden", &[], 4).await, 4);
    let org = &h.sim.org_url;
    let applied = format!("ado_scaler_parallelism_cap_applied{{org=\"{org}\"}} ");
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric_line(&h, &applied).await.as_deref() == Some(&format!("{applied}0"))
        })
        .await
    );
    let forbidden =
        format!("ado_scaler_parallelism_reads_total{{org=\"{org}\",result=\"forbidden\"}} ");
    assert!(metric_line(&h, &forbidden).await.is_some());
    // Failing reads are logged once, not at every read.
    tokio::time::sleep(INTERVAL * 3).await;
    let logs = h.logs();
    // (The capture holds each line twice: as text and as JSON.)
    let warned = logs
        .lines()
        .filter(|l| !l.starts_with('{'))
        .filter(|l| {
            l.contains("cannot read the organisation's parallel jobs") && l.contains(org.as_str())
        })
        .count();
    assert_eq!(warned, 1, "{logs}");

    // Readable again: capped from the next read on.
    h.sim.ado.clear_faults();
    assert_eq!(settles(&h, "forbidden", &[], 1).await, 1);

    // An answer of a shape the scaler does not know caps nothing either.
    h.sim
        .ado
        .answer_resource_usage_with(Some(serde_json::json!({"count": 1, "value": []})));
    assert_eq!(settles(&h, "forbidden", &[], 4).await, 4);
    let decode = format!("ado_scaler_parallelism_reads_total{{org=\"{org}\",result=\"decode\"}} ");
    assert!(metric_line(&h, &decode).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_read_per_organisation_per_interval_whatever_asks() {
    let h = start(true).await;
    let windows = h.sim.ado.add_pool("windows");
    h.sim
        .ado
        .register_offline_agent(windows, TEMPLATE, &capabilities(&["maven"]));
    queue(&h, h.pool_id, 2);
    let started = tokio::time::Instant::now();
    let mut refs = Vec::new();
    for i in 0..4 {
        refs.push(h.scaled_job(&format!("lin-{i}"), &[("demands", "maven")]));
        let mut r = h.scaled_job(&format!("win-{i}"), &[("demands", "maven")]);
        r.scaler_metadata
            .insert("poolName".into(), "windows".into());
        refs.push(r);
    }
    while started.elapsed() < INTERVAL * 5 {
        for r in &refs {
            h.metric(r).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reads = h.sim.ado.requests(Endpoint::ResourceUsage);
    let intervals = (started.elapsed().as_secs_f64() / INTERVAL.as_secs_f64()).ceil() as u64;
    assert!(
        (1..=intervals + 1).contains(&reads),
        "{reads} reads in {intervals} intervals for 8 triggers on 2 pools"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_reads_nothing_and_counts_every_queued_job() {
    let h = start(false).await;
    h.sim.ado.set_parallel_jobs(Some(1));
    queue(&h, h.pool_id, 3);
    assert_eq!(settles(&h, "off", &[], 3).await, 3);
    tokio::time::sleep(INTERVAL * 2).await;
    assert_eq!(h.sim.ado.requests(Endpoint::ResourceUsage), 0);
}

/// The simulated endpoint is as strict as ADO about its preview version, and answers in the
/// shape of azure-devops-node-api's `ResourceUsage`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_endpoint_is_a_preview_resource_of_nodes_shape() {
    let h = start(true).await;
    h.sim.ado.set_parallel_jobs(Some(3));
    let jobs = queue(&h, h.pool_id, 2);
    h.sim
        .ado
        .assign_next(h.pool_id, "agent-1", &capabilities(&["maven"]));
    // The scaler has an Entra token once it answered.
    settles(&h, "any", &[], 2).await;
    let token = h.sim.issued_tokens().pop().expect("a token was issued");
    let http = h.sim.http_client().unwrap();
    let get = |version: &'static str| {
        let url = format!(
            "{}/_apis/distributedtask/resourceusage?parallelismTag=Private&poolIsHosted=false&includeRunningRequests=true&api-version={version}",
            h.sim.org_url
        );
        let request = http.get(url).bearer_auth(&token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = get("7.1").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["typeKey"], "VssInvalidPreviewVersionException");
    let (status, body) = get(ado_scaler::ado::RESOURCE_USAGE_API_VERSION).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resourceLimit"]["totalCount"], 3);
    assert_eq!(body["resourceLimit"]["parallelismTag"], "Private");
    assert_eq!(body["resourceLimit"]["isHosted"], false);
    assert_eq!(body["usedCount"], 1);
    assert_eq!(body["runningRequests"][0]["requestId"], jobs[0]);
    assert_eq!(
        body["runningRequests"][0]["data"]["ParallelismTag"],
        "Private"
    );
}
