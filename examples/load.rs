//! Load and shutdown harness (not a test): the release `ado-scaler serve` binary against the
//! simulated organisation, with `--streams` open StreamIsActive streams and as many GetMetrics
//! calls as `--workers` concurrent callers can make, for `--seconds`. Then SIGTERM under that
//! load. Prints what it measured; exits 1 if a target is missed:
//! - no errors while serving;
//! - the scaler's resident memory at the end within 10% (or 4 MiB) of the start of the load;
//! - ADO polled once per interval per pool, however many triggers;
//! - on SIGTERM: health NOT_SERVING before the process exits, every call sent before the
//!   signal answered, exit within 5 s;
//! - with `--rate N`, the callers send N calls/s in all, steadily, and p99 must be ≤ 1 ms;
//! - a job queued after the load is seen by GetMetrics within a poll interval + 100 ms.
//!
//! It also prints the scaler's CPU (cores, from /proc/PID/stat), its peak resident memory
//! (VmHWM) and ADO requests per minute. `--big-pool 1` makes pool-0 answer with the
//! generated 600 × 200 body (51 MB, `sim::ado::generate`), as a big organisation's pool does.
//!
//! cargo build --release && cargo run --release --example load -- --seconds 60
//! (BENCHMARKS.md lists the runs behind each number.)

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ado_scaler::scaler::proto::{
    GetMetricsRequest, ScaledObjectRef, external_scaler_client::ExternalScalerClient,
};
use ado_sim::{
    Endpoint, SimCloud,
    ado::generate::{BodySpec, job_requests_body},
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

struct Args {
    seconds: u64,
    streams: usize,
    workers: usize,
    pools: usize,
    poll: Duration,
    channels: usize,
    /// Calls per second in all; 0: as fast as the callers can.
    rate: u64,
    big_pool: bool,
    scaler: std::path::PathBuf,
}

fn args() -> Args {
    let mut args = Args {
        seconds: 60,
        streams: 1000,
        workers: 64,
        pools: 10,
        poll: Duration::from_secs(1),
        channels: 4,
        rate: 0,
        big_pool: false,
        scaler: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/release/ado-scaler"),
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{}: a number", pair[0]))
        };
        match pair[0].as_str() {
            "--seconds" => args.seconds = number(),
            "--streams" => args.streams = number() as usize,
            "--workers" => args.workers = number() as usize,
            "--pools" => args.pools = number() as usize,
            "--channels" => args.channels = number() as usize,
            "--poll-ms" => args.poll = Duration::from_millis(number()),
            "--rate" => args.rate = number(),
            "--big-pool" => args.big_pool = number() != 0,
            "--scaler" => args.scaler = value.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn process(pid: u32) -> procfs::process::Process {
    procfs::process::Process::new(pid as i32).expect("the scaler's /proc entry")
}

/// Resident memory now and at its peak (VmRSS, VmHWM), in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = process(pid).status().expect("/proc/PID/status");
    (status.vmrss.unwrap_or(0), status.vmhwm.unwrap_or(0))
}

fn rss_kib(pid: u32) -> u64 {
    memory_kib(pid).0
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = process(pid).stat().expect("/proc/PID/stat");
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

fn trigger(sim: &SimCloud, pool: usize, name: usize) -> ScaledObjectRef {
    ScaledObjectRef {
        name: format!("agents-{name}"),
        namespace: "load".into(),
        scaler_metadata: HashMap::from([
            ("organizationURL".into(), sim.org_url.clone()),
            ("poolName".into(), format!("pool-{pool}")),
            ("placeholder".into(), "false".into()),
            ("teardownWindow".into(), "0s".into()),
        ]),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = args();
    assert!(
        args.scaler.exists(),
        "{} not found: `cargo build --release` first (or pass --scaler)",
        args.scaler.display()
    );
    let sim = SimCloud::start().await.unwrap();
    let pools: Vec<u32> = (0..args.pools)
        .map(|i| {
            let id = sim.ado.add_pool(&format!("pool-{i}"));
            sim.ado
                .register_offline_agent(id, "template", &Default::default());
            for _ in 0..i % 3 {
                sim.ado.enqueue(id, &[]);
            }
            id
        })
        .collect();
    if args.big_pool {
        let body = job_requests_body(&BodySpec::BIG_POOL);
        println!("pool-0 answers with a {} byte body", body.len());
        sim.ado.record_job_requests_answer(pools[0], Some(body));
    }

    let mut child = Command::new(&args.scaler)
        .arg("serve")
        .envs(sim.pod_env())
        .env("ADO_SCALER_GRPC_ADDR", "127.0.0.1:0")
        .env("ADO_SCALER_HTTP_ADDR", "127.0.0.1:0")
        .env("ADO_SCALER_ALLOWED_ORGS", &sim.org_url)
        .env(
            "ADO_SCALER_POLL_INTERVAL",
            format!("{}ms", args.poll.as_millis()),
        )
        .env("ADO_SCALER_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn,ado_scaler=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let (grpc_addr, http_addr) = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("startup line");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["message"] == "ado-scaler serving" {
            let addr = |key: &str| event[key].as_str().unwrap().to_owned();
            break (addr("grpc_addr"), addr("http_addr"));
        }
    };
    let idle_rss = rss_kib(pid);
    let mut channels = Vec::new();
    for _ in 0..args.channels {
        channels.push(
            Channel::from_shared(format!("http://{grpc_addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }

    // The streams, spread over the pools; each must stay open until shutdown.
    let stream_errors = Arc::new(AtomicU64::new(0));
    let stream_updates = Arc::new(AtomicU64::new(0));
    for i in 0..args.streams {
        let mut client = ExternalScalerClient::new(channels[i % channels.len()].clone());
        let r = trigger(&sim, i % args.pools, i);
        let (errors, updates) = (stream_errors.clone(), stream_updates.clone());
        tokio::spawn(async move {
            match client.stream_is_active(r).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    while let Some(item) = stream.message().await.transpose() {
                        match item {
                            Ok(_) => updates.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Wait until every stream has its first answer (the pools' first polls).
    let settle = Instant::now();
    while stream_updates.load(Ordering::Relaxed) < args.streams as u64 {
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "streams did not open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // GetMetrics callers.
    let stop = Arc::new(AtomicBool::new(false));
    let sigterm_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let failed_in_flight = Arc::new(AtomicU64::new(0));
    let latencies: Arc<std::sync::Mutex<Vec<u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let mut client = ExternalScalerClient::new(channels[w % channels.len()].clone());
        let triggers: Vec<ScaledObjectRef> = (0..16)
            .map(|k| trigger(&sim, (w + k) % args.pools, w * 16 + k))
            .collect();
        let (stop, ok, errors, failed_in_flight, latencies, sigterm_at) = (
            stop.clone(),
            ok.clone(),
            errors.clone(),
            failed_in_flight.clone(),
            latencies.clone(),
            sigterm_at.clone(),
        );
        let mut pace = (args.rate > 0).then(|| {
            let period = Duration::from_secs_f64(args.workers as f64 / args.rate as f64);
            let mut pace = tokio::time::interval(period);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pace
        });
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(1 << 16);
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = &mut pace {
                    pace.tick().await;
                }
                k = (k + 1) % triggers.len();
                let started = Instant::now();
                let result = client
                    .get_metrics(GetMetricsRequest {
                        scaled_object_ref: Some(triggers[k].clone()),
                        metric_name: "m".into(),
                    })
                    .await;
                match result {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if mine.len() < mine.capacity() {
                            mine.push(started.elapsed().as_micros() as u32);
                        }
                    }
                    Err(_) => {
                        let sent_before_sigterm =
                            sigterm_at.lock().unwrap().is_none_or(|at| started < at);
                        if sent_before_sigterm {
                            failed_in_flight.fetch_add(1, Ordering::Relaxed);
                        }
                        errors.fetch_add(1, Ordering::Relaxed);
                        if sigterm_at.lock().unwrap().is_some() {
                            break;
                        }
                    }
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }

    let start_rss = rss_kib(pid);
    let start_cpu = cpu_seconds(pid);
    let polls_before: u64 = sim.ado.requests(Endpoint::JobRequests);
    let started = Instant::now();
    let mut max_rss = start_rss;
    let mut last_ok = 0;
    println!("   t  calls/s   rss MiB");
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss = rss_kib(pid);
        max_rss = max_rss.max(rss);
        let now_ok = ok.load(Ordering::Relaxed);
        println!(
            "{:>4}  {:>7}  {:>8.1}",
            started.elapsed().as_secs(),
            (now_ok - last_ok) / 5,
            rss as f64 / 1024.0
        );
        last_ok = now_ok;
    }
    let elapsed = started.elapsed();
    let cores = (cpu_seconds(pid) - start_cpu) / elapsed.as_secs_f64();
    let end_rss = rss_kib(pid);
    let peak_rss = memory_kib(pid).1;
    let polls = sim.ado.requests(Endpoint::JobRequests) - polls_before;
    let all_requests = sim.ado.total_requests();
    let within_1ms = served_within_1ms(&http_addr).await;
    let calls = ok.load(Ordering::Relaxed);
    let serving_errors = errors.load(Ordering::Relaxed) + stream_errors.load(Ordering::Relaxed);

    // Detection: a job queued now, on a pool that is not the recorded big one, against the
    // value GetMetrics gives for a trigger of that pool.
    let detected = match pools.len() > usize::from(args.big_pool) {
        true => Some(
            detect(
                &sim,
                &channels[0],
                pools.len() - 1,
                pools[pools.len() - 1],
                args.poll,
            )
            .await,
        ),
        false => None,
    };

    // SIGTERM under load: a health Watch opened before the signal must report NOT_SERVING
    // before the process exits.
    let mut health = HealthClient::new(channels[0].clone());
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
    let not_serving: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    tokio::spawn({
        let not_serving = not_serving.clone();
        async move {
            while let Ok(Some(update)) = watch.message().await {
                if update.status == ServingStatus::NotServing as i32 {
                    *not_serving.lock().unwrap() = Some(Instant::now());
                }
            }
        }
    });
    // The time is taken before the signal goes: a call counts as sent before the signal only
    // if it certainly was.
    let signalled = Instant::now();
    *sigterm_at.lock().unwrap() = Some(signalled);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exited_at = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break signalled.elapsed();
        }
        if signalled.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break signalled.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let not_serving_at = not_serving
        .lock()
        .unwrap()
        .map(|t| t.saturating_duration_since(signalled));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let rate = calls as f64 / elapsed.as_secs_f64();
    let expected_polls = pools.len() as f64 * elapsed.as_secs_f64() / args.poll.as_secs_f64();
    let rss_flat = end_rss <= start_rss + (start_rss / 10).max(4096);

    println!();
    println!("scaler            {} (pid {pid})", args.scaler.display());
    println!(
        "load              {} streams, {} GetMetrics callers on {} connections, {} pools, poll {:?}, {:.0} s",
        args.streams,
        args.workers,
        args.channels,
        args.pools,
        args.poll,
        elapsed.as_secs_f64()
    );
    println!(
        "GetMetrics        {calls} calls, {rate:.0}/s, p50 {} µs, p99 {} µs, p99.9 {} µs",
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    println!(
        "stream updates    {}",
        stream_updates.load(Ordering::Relaxed)
    );
    println!(
        "GetMetrics served {:.2}% within 1 ms by the scaler (its own histogram, from receiving the call to answering)",
        within_1ms * 100.0
    );
    println!("errors            {serving_errors} while serving");
    println!(
        "scaler RSS        idle {:.1} MiB, load start {:.1} MiB, end {:.1} MiB, max {:.1} MiB",
        idle_rss as f64 / 1024.0,
        start_rss as f64 / 1024.0,
        end_rss as f64 / 1024.0,
        max_rss as f64 / 1024.0
    );
    println!(
        "scaler peak RSS   {:.1} MiB (VmHWM, whole process)",
        peak_rss as f64 / 1024.0
    );
    println!("scaler CPU        {cores:.3} cores during the load");
    println!(
        "ADO polls         {polls} for {} pools in {:.0} s (once per interval per pool: {expected_polls:.0}); {:.0} jobrequests/min, {all_requests} ADO requests since start",
        pools.len(),
        elapsed.as_secs_f64(),
        polls as f64 * 60.0 / elapsed.as_secs_f64()
    );
    if let Some(detected) = detected {
        println!(
            "detection         queued → GetMetrics in {detected:.2?} (poll {:?})",
            args.poll
        );
    }
    println!(
        "SIGTERM           health NOT_SERVING after {}, exit after {exited_at:.2?}, {} calls sent before the signal failed",
        not_serving_at.map_or("never seen".to_owned(), |t| format!("{t:.2?}")),
        failed_in_flight.load(Ordering::Relaxed)
    );

    let mut missed = Vec::new();
    if serving_errors > 0 {
        missed.push("errors while serving");
    }
    if args.rate == 0 && rate < 10_000.0 {
        missed.push("under 10k GetMetrics/s");
    }
    if args.rate > 0 && within_1ms < 0.99 {
        missed.push("the scaler's p99 over 1 ms at a steady rate");
    }
    if detected.is_some_and(|d| d > args.poll + Duration::from_millis(100)) {
        missed.push("a queued job took longer than a poll + 100 ms to be seen");
    }
    if !rss_flat {
        missed.push("resident memory grew");
    }
    if (polls as f64) > expected_polls + pools.len() as f64 * 2.0 {
        missed.push("ADO polled more than once per interval per pool");
    }
    if (polls as f64) < expected_polls * 0.9 {
        missed.push("pools polled less than once per interval");
    }
    if not_serving_at.is_none_or(|t| t > exited_at) {
        missed.push("health NOT_SERVING not seen before exit");
    }
    if failed_in_flight.load(Ordering::Relaxed) > 0 {
        missed.push("calls in flight at SIGTERM failed");
    }
    if exited_at > Duration::from_secs(5) {
        missed.push("exit took over 5 s");
    }
    if missed.is_empty() {
        println!("all targets met");
    } else {
        println!("MISSED: {}", missed.join("; "));
        std::process::exit(1);
    }
}

/// Time from queueing a job on `pool-{pool}` until GetMetrics counts it, asked every 2 ms.
async fn detect(
    sim: &SimCloud,
    channel: &Channel,
    pool: usize,
    pool_id: u32,
    poll: Duration,
) -> Duration {
    let mut client = ExternalScalerClient::new(channel.clone());
    let r = trigger(sim, pool, 1_000_000);
    let value = |client: &mut ExternalScalerClient<Channel>| {
        let request = GetMetricsRequest {
            scaled_object_ref: Some(r.clone()),
            metric_name: "m".into(),
        };
        let mut client = client.clone();
        async move {
            client
                .get_metrics(request)
                .await
                .expect("GetMetrics")
                .into_inner()
                .metric_values[0]
                .metric_value_float
        }
    };
    let before = value(&mut client).await;
    sim.ado.enqueue(pool_id, &[]);
    let queued = Instant::now();
    while value(&mut client).await <= before {
        assert!(
            queued.elapsed() < poll * 10,
            "the queued job was never counted"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    queued.elapsed()
}

/// The share of GetMetrics calls the scaler answered within 1 ms, from its
/// `ado_scaler_grpc_request_duration_seconds` histogram (first bucket: 1 ms).
async fn served_within_1ms(http_addr: &str) -> f64 {
    let text = reqwest::get(format!("http://{http_addr}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("the scaler's /metrics")
        .text()
        .await
        .expect("a metrics body");
    let sample = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let family = "ado_scaler_grpc_request_duration_seconds";
    let within = sample(&format!(
        r#"{family}_bucket{{le="0.001",method="GetMetrics"}}"#
    ));
    let count = sample(&format!(r#"{family}_count{{method="GetMetrics"}}"#));
    if count == 0.0 { 0.0 } else { within / count }
}
