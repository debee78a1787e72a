//! The stale-agent collector end to end: the real `serve` with `--gc`, the production ADO
//! client and `kube` client, against the simulated ADO and Kubernetes API over TLS.

use ado_sim::tools;

use std::{collections::BTreeSet, time::Duration};

use crate::common::{Harness, POOL, capabilities, eventually};
use ado_scaler::{
    ado::OrgUrl,
    gc::{GcSettings, LEASE_NAME, rules::Rules},
    k8s::lease::LeaseTiming,
};
use ado_sim::{
    Endpoint, Fault, KubeEndpoint, KubeFault, SIM_AGENT_NAMESPACE, SIM_SCALER_NAMESPACE, SimCloud,
    kube::Grant,
};

const HOUR: Duration = Duration::from_secs(3600);

fn fast_timing() -> LeaseTiming {
    LeaseTiming {
        duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(200),
        renew_deadline: Duration::from_secs(2),
    }
}

fn settings(sim: &SimCloud, identity: &str) -> GcSettings {
    GcSettings {
        pools: vec![(OrgUrl::parse(&sim.org_url).unwrap(), POOL.to_owned())],
        namespace: SIM_AGENT_NAMESPACE.into(),
        rules: Rules::new(
            vec!["ado-agent-".into(), "gpu-".into()],
            Duration::from_secs(600),
        )
        .unwrap(),
        interval: Duration::from_millis(300),
        lease_namespace: None,
        identity: identity.into(),
        timing: fast_timing(),
        kubeconfig: Some(sim.kubeconfig.clone()),
        delete_pace: Duration::from_millis(100),
    }
}

/// Registers `name` offline (as a killed agent is), `age` ago.
fn dead_agent(sim: &SimCloud, pool_id: u32, name: &str, age: Duration) -> u32 {
    let id = sim.ado.register_agent(pool_id, name, &capabilities(&[]));
    sim.ado.set_agent_online(pool_id, name, false);
    sim.ado.age_agent(pool_id, name, age);
    id
}

fn names_of(sim: &SimCloud, pool_id: u32) -> BTreeSet<String> {
    sim.ado
        .agents(pool_id)
        .into_iter()
        .map(|a| a.name)
        .collect()
}

fn deleted_ids(sim: &SimCloud) -> Vec<u32> {
    sim.ado.deletions().into_iter().map(|(id, _)| id).collect()
}

async fn errors(h: &Harness) -> f64 {
    metric_value(h, "ado_scaler_gc_runs_total{result=\"error\"}")
        .await
        .unwrap_or(0.0)
}

async fn metric_value(h: &Harness, series: &str) -> Option<f64> {
    let (_, text) = h.http_get("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_exactly_the_stale_registrations_each_once() {
    let mut h = Harness::start_gc(|sim| settings(sim, "scaler-0")).await;
    let (sim, pool) = (&h.sim, h.pool_id);
    let other_pool = sim.ado.add_pool("windows");

    let doomed = [
        dead_agent(sim, pool, "ado-agent-oom", HOUR),
        dead_agent(sim, pool, "gpu-evicted", HOUR),
        // Registered, never connected: only `createdOn` tells its age.
        sim.ado
            .register_offline_agent(pool, "ado-agent-never-ran", &capabilities(&[])),
    ];
    sim.ado.age_agent(pool, "ado-agent-never-ran", HOUR);
    let ten_minutes_and_a_bit = Duration::from_secs(615);
    let _ = dead_agent(
        sim,
        pool,
        "ado-agent-just-past-grace",
        ten_minutes_and_a_bit,
    );
    let doomed: BTreeSet<u32> = doomed
        .into_iter()
        .chain(
            sim.ado
                .agents(pool)
                .iter()
                .filter(|a| a.name == "ado-agent-just-past-grace")
                .map(|a| a.id),
        )
        .collect();

    // Each keeps its registration for one reason, or several.
    dead_agent(sim, pool, "ado-agent-placeholder", HOUR);
    dead_agent(sim, pool, "gpu-placeholder", HOUR);
    dead_agent(sim, pool, "ado-agent-recent", Duration::from_secs(300));
    dead_agent(sim, pool, "build-vm-01", HOUR);
    dead_agent(sim, pool, "ADO-AGENT-upper", HOUR);
    dead_agent(sim, other_pool, "ado-agent-other-pool", HOUR);
    sim.ado
        .register_agent(pool, "ado-agent-online", &capabilities(&[]));
    sim.ado.age_agent(pool, "ado-agent-online", HOUR);
    dead_agent(sim, pool, "ado-agent-with-pod", HOUR);
    sim.kube
        .create_pod(SIM_AGENT_NAMESPACE, "ado-agent-with-pod");
    // A pod of that name in another namespace protects nothing.
    sim.kube.create_pod(SIM_SCALER_NAMESPACE, "ado-agent-oom");
    for busy in ["ado-agent-busy", "ado-agent-busy-with-pod"] {
        sim.ado.register_agent(pool, busy, &capabilities(&[]));
        let job = sim.ado.enqueue(pool, &[]);
        assert_eq!(
            sim.ado.assign_next(pool, busy, &capabilities(&[])),
            Some(job)
        );
        sim.ado.set_agent_online(pool, busy, false);
        sim.ado.age_agent(pool, busy, HOUR);
    }
    sim.kube
        .create_pod(SIM_AGENT_NAMESPACE, "ado-agent-busy-with-pod");
    let kept_before: BTreeSet<String> = names_of(sim, pool)
        .into_iter()
        .filter(|n| {
            ![
                "ado-agent-oom",
                "gpu-evicted",
                "ado-agent-never-ran",
                "ado-agent-just-past-grace",
            ]
            .contains(&n.as_str())
        })
        .collect();

    assert!(
        eventually(Duration::from_secs(15), || async {
            deleted_ids(&h.sim).len() >= doomed.len()
        })
        .await,
        "deleted so far: {:?}",
        h.sim.ado.deletions()
    );
    // Two more runs: nothing else goes, nothing is deleted twice.
    let runs = metric_value(&h, "ado_scaler_gc_runs_total{result=\"success\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric_value(&h, "ado_scaler_gc_runs_total{result=\"success\"}")
                .await
                .is_some_and(|r| r >= runs + 2.0)
        })
        .await
    );
    let deleted = deleted_ids(&h.sim);
    assert_eq!(
        deleted.len(),
        doomed.len(),
        "each deleted once: {deleted:?}"
    );
    assert_eq!(deleted.into_iter().collect::<BTreeSet<_>>(), doomed);
    assert_eq!(names_of(&h.sim, h.pool_id), kept_before);
    assert_eq!(
        names_of(&h.sim, other_pool),
        BTreeSet::from(["ado-agent-other-pool".to_owned()])
    );

    // Paced: never two deletions closer than the pace.
    let times: Vec<_> = h.sim.ado.deletions().into_iter().map(|(_, t)| t).collect();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(90),
            "{:?}",
            pair[1] - pair[0]
        );
    }
    let org = h.sim.org_url.trim_end_matches('/').to_owned();
    assert_eq!(
        metric_value(
            &h,
            &format!("ado_scaler_gc_deleted_agents_total{{org=\"{org}\",pool=\"{POOL}\"}}")
        )
        .await,
        Some(doomed.len() as f64)
    );
    assert_eq!(metric_value(&h, "ado_scaler_gc_leader").await, Some(1.0));

    // On shutdown the leader hands the Lease back: no holder, so another takes it at once.
    h.shutdown().await.unwrap();
    let lease = h
        .sim
        .kube
        .lease(SIM_SCALER_NAMESPACE, LEASE_NAME)
        .expect("the lease exists");
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(""));
    assert_eq!(spec.lease_duration_seconds, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_deleted_while_the_pod_list_or_an_agent_list_fails() {
    let h = Harness::start_gc(|sim| {
        // Fail from the start, before the first run.
        sim.kube.add_fault(KubeFault {
            endpoint: KubeEndpoint::Pods,
            status: 500,
            times: None,
        });
        let mut s = settings(sim, "scaler-0");
        s.pools
            .push((OrgUrl::parse(&sim.org_url).unwrap(), "gone".into()));
        s
    })
    .await;
    let (sim, pool) = (&h.sim, h.pool_id);
    dead_agent(sim, pool, "ado-agent-oom", HOUR);
    let gone = sim.ado.add_pool("gone");
    dead_agent(sim, gone, "ado-agent-elsewhere", HOUR);

    assert!(
        eventually(Duration::from_secs(10), || async {
            errors(&h).await >= 2.0
        })
        .await
    );
    assert!(h.sim.ado.deletions().is_empty());
    assert!(h.sim.kube.requests(KubeEndpoint::Pods) >= 2);

    // Pods readable, but one pool's agents are not: still nothing, in any pool.
    h.sim.kube.clear_faults();
    h.sim
        .ado
        .add_fault(Fault::status(Endpoint::Agents, 500).times(2));
    let before = errors(&h).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            errors(&h).await >= before + 2.0
        })
        .await
    );
    assert!(h.sim.ado.deletions().is_empty());

    // A pool in --gc-pools that no longer exists: the run cannot read it, nothing goes.
    h.sim.ado.delete_pool(gone);
    let before = errors(&h).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            errors(&h).await >= before + 2.0
        })
        .await
    );
    assert!(h.sim.ado.deletions().is_empty());
    assert!(names_of(&h.sim, h.pool_id).contains("ado-agent-oom"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_yields_while_ado_throttles_the_identity() {
    let h = Harness::start_gc(|sim| {
        sim.ado.set_rate_limit_remaining(Some(10));
        settings(sim, "scaler-0")
    })
    .await;
    dead_agent(&h.sim, h.pool_id, "ado-agent-oom", HOUR);
    let limited = || async {
        metric_value(&h, "ado_scaler_gc_runs_total{result=\"rate_limited\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    };
    assert!(eventually(Duration::from_secs(10), limited).await);
    assert!(h.sim.ado.deletions().is_empty());
    h.sim.ado.set_rate_limit_remaining(None);
    // The old reading stands for ADO's window; a fresh one with budget clears it.
    h.sim.ado.set_rate_limit_remaining(Some(180));
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.sim.ado.deletions().len() == 1
        })
        .await
    );
}

mod election {
    use super::*;
    use ado_scaler::k8s::{
        self,
        lease::{Elector, LeaseSettings},
    };
    use tokio::{sync::watch, task::JoinHandle};
    use tokio_util::sync::CancellationToken;

    struct Candidate {
        leader: watch::Receiver<bool>,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    /// A candidate for the collector's Lease in the simulated cluster, with the test timing.
    async fn elector(sim: &SimCloud, identity: &str) -> Elector {
        let client = k8s::client(Some(&sim.kubeconfig)).await.unwrap();
        Elector::new(
            client,
            LeaseSettings {
                namespace: SIM_SCALER_NAMESPACE.into(),
                name: LEASE_NAME.into(),
                identity: identity.into(),
                timing: fast_timing(),
            },
        )
    }

    async fn candidate(sim: &SimCloud, identity: &str) -> Candidate {
        let elector = elector(sim, identity).await;
        let (tx, leader) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(elector.run(tx, stop.clone()));
        Candidate { leader, stop, task }
    }

    fn holder(sim: &SimCloud) -> Option<String> {
        sim.kube
            .lease(SIM_SCALER_NAMESPACE, LEASE_NAME)?
            .spec?
            .holder_identity
    }

    /// Samples both candidates every 5 ms for `span`: never two leaders; returns the share
    /// of samples each led.
    async fn sample(a: &Candidate, b: &Candidate, span: Duration) -> (f64, f64) {
        let (mut led_a, mut led_b, mut samples) = (0, 0, 0);
        let end = tokio::time::Instant::now() + span;
        while tokio::time::Instant::now() < end {
            let (la, lb) = (*a.leader.borrow(), *b.leader.borrow());
            assert!(!(la && lb), "two leaders at once");
            led_a += u32::from(la);
            led_b += u32::from(lb);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let samples = f64::from(samples.max(1));
        (f64::from(led_a) / samples, f64::from(led_b) / samples)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leader_and_a_crashed_leader_is_replaced_within_a_lease_duration() {
        let sim = SimCloud::start().await.unwrap();
        let a = candidate(&sim, "scaler-a").await;
        let mut a_leader = a.leader.clone();
        a_leader.wait_for(|l| *l).await.unwrap();
        let b = candidate(&sim, "scaler-b").await;
        let (led_a, led_b) = sample(&a, &b, Duration::from_secs(2)).await;
        assert!(led_a == 1.0 && led_b == 0.0, "{led_a} {led_b}");
        assert_eq!(holder(&sim).as_deref(), Some("scaler-a"));

        // A crashes (or is partitioned): no release, its renewals stop.
        a.task.abort();
        let crashed = tokio::time::Instant::now();
        let mut b_leader = b.leader.clone();
        tokio::time::timeout(Duration::from_secs(6), b_leader.wait_for(|l| *l))
            .await
            .expect("b takes over")
            .unwrap();
        let took = crashed.elapsed();
        // Not before the lease could have expired, and within about one lease duration.
        assert!(
            took >= Duration::from_millis(2800) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert_eq!(holder(&sim).as_deref(), Some("scaler-b"));
        let lease = sim.kube.lease(SIM_SCALER_NAMESPACE, LEASE_NAME).unwrap();
        assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
        b.stop.cancel();
        b.task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_shutting_down_hands_over_at_once() {
        let sim = SimCloud::start().await.unwrap();
        let a = candidate(&sim, "scaler-a").await;
        a.leader.clone().wait_for(|l| *l).await.unwrap();
        let b = candidate(&sim, "scaler-b").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!*b.leader.borrow());
        let stopping = tokio::time::Instant::now();
        a.stop.cancel();
        a.task.await.unwrap();
        assert!(!*a.leader.borrow());
        let mut b_leader = b.leader.clone();
        tokio::time::timeout(Duration::from_secs(2), b_leader.wait_for(|l| *l))
            .await
            .expect("b takes over well before the lease would expire")
            .unwrap();
        assert!(
            stopping.elapsed() < Duration::from_secs(1),
            "{:?}",
            stopping.elapsed()
        );
        assert_eq!(holder(&sim).as_deref(), Some("scaler-b"));
        b.stop.cancel();
        b.task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conflicts_on_renewal_never_make_two_leaders() {
        let sim = SimCloud::start().await.unwrap();
        let a = candidate(&sim, "scaler-a").await;
        a.leader.clone().wait_for(|l| *l).await.unwrap();
        let b = candidate(&sim, "scaler-b").await;
        // Another writer beats A's next renewal: A reads again, is still the holder, renews.
        sim.kube.beat_next_lease_updates(1);
        let (led_a, led_b) = sample(&a, &b, Duration::from_secs(1)).await;
        assert!(led_a == 1.0 && led_b == 0.0, "{led_a} {led_b}");
        // Every update of both loses for a while: A cannot renew and steps down at its
        // deadline, before B (which cannot write either) could take the lease; then B or A
        // wins, never both.
        sim.kube.beat_next_lease_updates(40);
        let (_, _) = sample(&a, &b, Duration::from_secs(6)).await;
        sim.kube.beat_next_lease_updates(0);
        let (led_a, led_b) = sample(&a, &b, Duration::from_secs(4)).await;
        assert!(led_a + led_b > 0.5, "someone leads again: {led_a} {led_b}");
        for c in [a, b] {
            c.stop.cancel();
            c.task.await.unwrap();
        }
    }

    /// A renewal beaten by another write is retried at once with a fresh read: still ours.
    #[tokio::test]
    async fn a_beaten_renewal_is_retried_at_once() {
        let sim = SimCloud::start().await.unwrap();
        let mut elector = elector(&sim, "scaler-a").await;
        assert!(elector.try_acquire_or_renew().await.unwrap());
        sim.kube.beat_next_lease_updates(1);
        assert!(elector.try_acquire_or_renew().await.unwrap());
        sim.kube.beat_next_lease_updates(2);
        assert!(
            !elector.try_acquire_or_renew().await.unwrap(),
            "twice beaten: not now"
        );
        assert_eq!(holder(&sim).as_deref(), Some("scaler-a"));
    }

    /// Two replicas creating the Lease at once: the loser reads again and follows.
    #[tokio::test]
    async fn a_lost_create_race_is_not_an_error() {
        let sim = SimCloud::start().await.unwrap();
        sim.kube.beat_next_lease_create("scaler-b");
        let mut elector = elector(&sim, "scaler-a").await;
        assert!(!elector.try_acquire_or_renew().await.unwrap());
        assert_eq!(holder(&sim).as_deref(), Some("scaler-b"));
    }

    /// A refusal is an error (logged, and the deadline runs), not "someone else holds it".
    #[tokio::test]
    async fn a_forbidden_create_is_an_error_not_a_lost_race() {
        let sim = SimCloud::start().await.unwrap();
        sim.kube.enforce_rbac(vec![Grant {
            namespace: SIM_SCALER_NAMESPACE.into(),
            api_group: "coordination.k8s.io".into(),
            resource: "leases".into(),
            verbs: vec!["get".into(), "update".into()],
            resource_names: vec![],
        }]);
        let mut elector = elector(&sim, "scaler-a").await;
        let err = elector
            .try_acquire_or_renew()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("create lease") && err.contains("403"), "{err}");
        assert_eq!(
            sim.kube.forbidden(),
            1,
            "refused once, not retried as a conflict"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_errors_keep_the_leader_until_its_renew_deadline() {
        let sim = SimCloud::start().await.unwrap();
        let a = candidate(&sim, "scaler-a").await;
        a.leader.clone().wait_for(|l| *l).await.unwrap();
        sim.kube.add_fault(KubeFault {
            endpoint: KubeEndpoint::Leases,
            status: 503,
            times: None,
        });
        let failing = tokio::time::Instant::now();
        let mut a_leader = a.leader.clone();
        tokio::time::timeout(Duration::from_secs(4), a_leader.wait_for(|l| !*l))
            .await
            .expect("a steps down")
            .unwrap();
        let after = failing.elapsed();
        assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_secs(3),
            "steps down at the renew deadline (2 s), before the lease (3 s) expires: {after:?}"
        );
        sim.kube.clear_faults();
        tokio::time::timeout(Duration::from_secs(2), a_leader.wait_for(|l| *l))
            .await
            .expect("a leads again once the API answers")
            .unwrap();
        a.stop.cancel();
        a.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_needs_no_more_than_the_rights_deploy_gives_it() {
    let grants = tools::grants(&tools::rendered(), "ado-scaler");
    assert!(!grants.is_empty());
    let h = Harness::start_gc(|sim| {
        sim.kube.enforce_rbac(grants.clone());
        // The namespaces deploy/ uses, as the Deployment passes them.
        GcSettings {
            lease_namespace: Some(SIM_SCALER_NAMESPACE.into()),
            ..settings(sim, "ado-scaler-5c9d-abcde")
        }
    })
    .await;
    let dead = dead_agent(&h.sim, h.pool_id, "ado-agent-oom", HOUR);
    assert!(
        eventually(Duration::from_secs(10), || async {
            deleted_ids(&h.sim) == [dead]
        })
        .await
    );
    assert_eq!(
        h.sim.kube.forbidden(),
        0,
        "a request outside the granted rights"
    );
    assert_eq!(metric_value(&h, "ado_scaler_gc_leader").await, Some(1.0));

    // The enforcement is real: without `update` on the Lease, nobody ever leads.
    let without_update: Vec<Grant> = grants
        .into_iter()
        .map(|mut g| {
            g.verbs.retain(|v| v != "update");
            g
        })
        .collect();
    let h = Harness::start_gc(|sim| {
        sim.kube.enforce_rbac(without_update);
        // The lease of a replica that is gone: it must be updated to be taken.
        sim.kube
            .put_lease(SIM_SCALER_NAMESPACE, LEASE_NAME, "ado-scaler-gone", 3);
        GcSettings {
            lease_namespace: Some(SIM_SCALER_NAMESPACE.into()),
            ..settings(sim, "ado-scaler-5c9d-abcde")
        }
    })
    .await;
    dead_agent(&h.sim, h.pool_id, "ado-agent-oom", HOUR);
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.sim.kube.forbidden() >= 3
        })
        .await
    );
    assert!(h.sim.ado.deletions().is_empty());
    assert_eq!(metric_value(&h, "ado_scaler_gc_leader").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_one_leader_and_the_survivor_collects() {
    use ado_scaler::{ado::AdoClient, auth::TokenSource, gc, gc::GcMetrics};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    let sim = SimCloud::start().await.unwrap();
    let pool = sim.ado.add_pool(POOL);
    let first = dead_agent(&sim, pool, "ado-agent-oom", HOUR);
    let mut replicas = Vec::new();
    for identity in ["scaler-a", "scaler-b"] {
        let http = sim.http_client().unwrap();
        let metrics = Arc::new(GcMetrics::default());
        let token = TokenSource::new(&sim.auth_settings(), &http, None).unwrap();
        let ado = AdoClient::new(http, token, Arc::default());
        let stop = CancellationToken::new();
        let task = gc::start(settings(&sim, identity), ado, metrics.clone(), stop.clone())
            .await
            .unwrap();
        replicas.push((metrics, stop, task));
    }
    let leaders = |r: &[(
        Arc<GcMetrics>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )]| { r.iter().map(|(m, _, _)| m.leader.get()).collect::<Vec<_>>() };
    assert!(
        eventually(Duration::from_secs(10), || async {
            deleted_ids(&sim) == [first]
        })
        .await
    );
    // Exactly one leader, all along.
    for _ in 0..100 {
        let l = leaders(&replicas);
        assert_eq!(l.iter().sum::<i64>(), 1, "{l:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = leaders(&replicas).iter().position(|l| *l == 1).unwrap();
    let (stopped, stop, task) = replicas.remove(leader);
    stop.cancel();
    task.await.unwrap();

    // The survivor takes the released lease at once and collects the next stale agent. The
    // simulated ADO records a deletion before it answers: wait for the collector's count.
    let second = dead_agent(&sim, pool, "gpu-evicted", HOUR);
    let deleted = |m: &GcMetrics| {
        m.deleted
            .get_or_create(&ado_scaler::telemetry::PoolLabels {
                org: sim.org_url.clone(),
                pool: POOL.into(),
            })
            .get()
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            deleted(&replicas[0].0) == 1
        })
        .await,
        "{:?}",
        sim.ado.deletions()
    );
    assert_eq!(deleted_ids(&sim), [first, second]);
    assert_eq!(deleted(&stopped), 1);
    assert_eq!(leaders(&replicas), [1]);
    let (_, stop, task) = replicas.remove(0);
    stop.cancel();
    task.await.unwrap();
}
