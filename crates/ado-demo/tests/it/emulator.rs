//! The KEDA ScaledJob emulator over scripted runs: the counting rules hold up against KEDA's
//! `default` strategy, agents that take time to start, and agents that take time to leave.

use std::time::Duration;

use ado_demo::{Arrivals, DemoConfig, DemoReport, Registration, simulate};

const POD_START: Duration = Duration::from_millis(600);
const TEARDOWN: Duration = Duration::from_millis(500);
const KEDA_POLL: Duration = Duration::from_millis(200);
const SCALER_POLL: Duration = Duration::from_millis(200);

/// 16 jobs, one every 250 ms: new jobs keep arriving while earlier agents tear down.
fn scripted(teardown_window: Duration, scaled_jobs: usize) -> DemoConfig {
    let script = (0..16)
        .map(|i| (Duration::from_millis(250 * i as u64), i % scaled_jobs))
        .collect();
    DemoConfig {
        duration: Duration::from_secs(4),
        arrivals: Arrivals::Script(script),
        scaled_jobs,
        teardown_window,
        keda_polling: KEDA_POLL,
        scaler_poll: SCALER_POLL,
        pod_start: POD_START,
        job_run: (Duration::from_millis(300), Duration::from_millis(800)),
        teardown: TEARDOWN,
        max_replicas: 50,
        idle_timeout: Duration::ZERO,
        cancel_share: 0.0,
        cancel_after: Duration::ZERO,
        drain_limit: Duration::from_secs(20),
        seed: 7,
        live_table: false,
        orphan_share: 0.0,
        ..DemoConfig::default()
    }
}

fn show(label: &str, r: &DemoReport) {
    println!(
        "{label}: jobs {}/{} agents {} idle {} wait median {:?} max {:?} jobrequests {} tokens {}",
        r.jobs_completed,
        r.jobs_queued,
        r.agents_started,
        r.agents_idle_at_end,
        r.median_wait,
        r.max_wait,
        r.job_request_polls,
        r.token_requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_teardown_window_every_agent_runs_exactly_one_job() {
    let report = simulate(scripted(Duration::ZERO, 1)).await.unwrap();
    show("window 0", &report);
    assert_eq!(report.jobs_completed, 16, "every job ran");
    assert_eq!(
        report.agents_started, report.jobs_completed,
        "no agent started for nothing"
    );
    assert_eq!(report.agents_idle_at_end, 0);
    assert_eq!(report.token_requests, 1);
    // Just in time: the registrar registered every agent, which asked Entra for nothing, and
    // deleted every registration once its agent container ended.
    assert_eq!(report.registration, Registration::JustInTime);
    assert_eq!(report.agents_registered, 16);
    assert_eq!(report.agent_token_requests, 0);
    assert_eq!((report.agents_killed, report.stale_removed), (0, 0));
    assert_eq!(report.registrations, report.placeholders);
}

/// Agents killed without deregistering: just in time the registrar deletes their
/// registrations once their pods are gone; self-registering, the collector does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agents_leave_nothing_behind() {
    for registration in [Registration::JustInTime, Registration::SelfRegistration] {
        let report = simulate(DemoConfig {
            chaos_share: 0.5,
            registration,
            ..scripted(Duration::ZERO, 2)
        })
        .await
        .unwrap();
        show(&format!("chaos, {registration:?}"), &report);
        println!("{report}");
        assert!(report.agents_killed >= 4, "{report:?}");
        assert!(report.jobs_lost >= 1, "{report:?}");
        // Every killed agent's registration was deleted, and only those.
        assert_eq!(report.stale_removed, report.agents_killed, "{report:?}");
        assert_eq!(report.stale_left, 0);
        assert_eq!(report.placeholders, 2);
        assert_eq!(
            report.registrations,
            report.placeholders + report.agents_alive,
            "{report:?}"
        );
        assert_eq!(
            report.jobs_completed + report.jobs_lost,
            report.jobs_queued,
            "every job ran or died with its agent"
        );
        assert_eq!(report.agents_registered, report.agents_started);
        // Self-registering agents share one token in the demo; just in time they need none.
        let agent_tokens = u64::from(registration == Registration::SelfRegistration);
        assert_eq!(report.agent_token_requests, agent_tokens, "{report:?}");
        assert_eq!(report.token_requests, 1, "the scaler's own");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_window_bounds_the_wait_with_few_extra_agents() {
    let report = simulate(scripted(TEARDOWN, 1)).await.unwrap();
    show("window = teardown", &report);
    assert_eq!(report.jobs_completed, 16, "every job ran");
    let extra = report.agents_started - report.jobs_completed;
    assert!(extra <= 3, "at most a few extra agents, got {extra}");
    // Pod start plus at most one KEDA cycle and one scaler poll of detection, with slack for
    // a loaded CI machine; without the window a job can also wait for a teardown.
    let bound = POD_START + 2 * KEDA_POLL + 2 * SCALER_POLL + Duration::from_millis(400);
    assert!(
        report.max_wait <= bound,
        "longest wait {:?} > {bound:?}",
        report.max_wait
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_scaled_jobs_on_one_pool_share_one_poll() {
    let report = simulate(scripted(TEARDOWN, 8)).await.unwrap();
    show("8 ScaledJobs", &report);
    assert_eq!(
        report.jobs_completed, 16,
        "every job ran on an agent with its demand"
    );
    let intervals = (report.elapsed.as_secs_f64() / SCALER_POLL.as_secs_f64()).ceil() as u64;
    assert!(
        report.job_request_polls <= intervals + 2,
        "{} jobrequests calls for {intervals} poll intervals and 8 ScaledJobs",
        report.job_request_polls
    );
    assert_eq!(report.token_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_whose_jobs_were_cancelled_leave_at_the_idle_timeout() {
    // Every job is cancelled 500 ms after it is queued, once KEDA has started an agent for it
    // (200 ms polls) and before that agent can take it (600 ms to start). Jobs come 2.5 s apart,
    // so an idle agent is gone before the next one.
    let mut config = scripted(Duration::ZERO, 1);
    config.arrivals = Arrivals::Script(
        (0..4)
            .map(|i| (Duration::from_millis(2500 * i), 0))
            .collect(),
    );
    config.duration = Duration::from_secs(8);
    config.cancel_share = 1.0;
    config.cancel_after = Duration::from_millis(500);
    config.idle_timeout = Duration::from_millis(800);
    let report = simulate(config).await.unwrap();
    show("all cancelled", &report);
    assert_eq!(report.jobs_cancelled, 4, "{report:?}");
    assert_eq!(report.jobs_completed, 0);
    assert!(
        report.agents_started >= 1,
        "KEDA saw queued jobs: {report:?}"
    );
    assert_eq!(report.agents_ran_a_job, 0);
    assert_eq!(
        report.agents_left_idle, report.agents_started,
        "every agent left by itself: {report:?}"
    );
    assert_eq!(report.agents_idle_at_end, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_ends_one_way_or_the_other() {
    let mut config = scripted(TEARDOWN, 1);
    config.cancel_share = 0.3;
    config.cancel_after = Duration::from_millis(100);
    config.idle_timeout = Duration::from_secs(1);
    let report = simulate(config).await.unwrap();
    show("some cancelled", &report);
    assert!(report.jobs_cancelled > 0, "{report:?}");
    assert_eq!(
        report.jobs_completed + report.jobs_cancelled,
        report.jobs_queued
    );
    assert_eq!(report.agents_ran_a_job, report.jobs_completed);
    assert_eq!(
        report.agents_ran_a_job + report.agents_left_idle,
        report.agents_started,
        "{report:?}"
    );
    assert_eq!(report.agents_idle_at_end, 0);
}

/// The demo from an empty pool: with placeholders every job that a ScaledJob offers runs and
/// the orphans (demanding `GPU` where the migrated trigger says `gpu`) are reported unclaimed;
/// without them ADO fails every job at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_empty_pool_placeholders_decide_whether_jobs_fail() {
    let mut config = scripted(Duration::ZERO, 2);
    // Every fourth job demands GPU: index `scaled_jobs` is the orphan.
    config.arrivals = Arrivals::Script(
        (0..12)
            .map(|i| {
                (
                    Duration::from_millis(250 * i as u64),
                    if i % 4 == 3 { 2 } else { i % 2 },
                )
            })
            .collect(),
    );
    config.orphan_share = 0.25;
    let with = simulate(config.clone()).await.unwrap();
    println!("with placeholders:\n{with}");
    assert_eq!(with.jobs_failed_no_agent, 0, "{with:?}");
    assert_eq!(with.jobs_completed, 9);
    assert_eq!(with.jobs_unclaimed_abandoned, 3, "{with:?}");
    assert!(with.jobs_unclaimed_max >= 1, "{with:?}");
    assert_eq!(with.placeholders, 3, "two ScaledJobs and the migrated one");
    assert!(
        with.to_string()
            .contains("jobs failed (no agent in pool)  0")
    );

    config.placeholders = false;
    let without = simulate(config).await.unwrap();
    println!("without placeholders:\n{without}");
    assert_eq!(without.jobs_failed_no_agent, 12, "{without:?}");
    assert_eq!(without.jobs_completed, 0);
    assert_eq!(without.agents_started, 0);
    assert_eq!(without.placeholders, 0);
    assert!(
        without
            .to_string()
            .contains("jobs failed (no agent in pool)  12")
    );
}

/// One parallel job for eight jobs queued at once: with the cap, no agent starts for a job
/// that cannot run yet; without it (KEDA's way), agents start for all and idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cap_no_agent_waits_for_a_parallel_job() {
    let mut config = scripted(Duration::ZERO, 1);
    config.arrivals = Arrivals::Script((0..8).map(|_| (Duration::ZERO, 0)).collect());
    config.duration = Duration::from_millis(500);
    config.parallel_jobs = Some(1);
    config.job_run = (Duration::from_millis(300), Duration::from_millis(300));
    config.idle_timeout = Duration::from_secs(2);
    config.drain_limit = Duration::from_secs(40);

    let capped = simulate(config.clone()).await.unwrap();
    show("capped", &capped);
    assert_eq!(capped.jobs_completed, 8, "{capped:?}");
    assert_eq!(capped.agents_without_parallel_job, 0, "{capped:?}");
    assert_eq!(capped.agents_started, 8, "one agent a job: {capped:?}");

    config.parallelism_cap = false;
    let uncapped = simulate(config).await.unwrap();
    show("uncapped", &uncapped);
    assert_eq!(uncapped.jobs_completed, 8, "{uncapped:?}");
    assert!(uncapped.agents_without_parallel_job >= 6, "{uncapped:?}");
    assert!(
        uncapped.idle_agent_seconds > capped.idle_agent_seconds + 2.0,
        "{uncapped:?}"
    );
}
