//! Decode-and-count harness for big pools (scripts/bench-decode.sh runs it beside the
//! KEDA-shaped Go decoder on the same file):
//!
//! cargo run --release --example decode -- write body.json [queued running finished agents]
//! cargo run --release --example decode -- run body.json ITERATIONS TRIGGERS
//!
//! `run` reads the file in 64 KiB chunks, as the client reads a response, through the
//! client's incremental decoder into the poller's answer, builds the snapshot and counts it
//! for TRIGGERS triggers with different demands, ITERATIONS times. It prints the median wall
//! time of one round, the mean CPU time and the process's peak resident memory (which
//! includes the runtime and the binary: the whole cost of a big pool).

use std::{io::Read, time::Duration};

use ado_scaler::{
    ado::stream::ListDecoder,
    poller::{Answer, Snapshot},
};
use ado_sim::ado::generate::{BodySpec, job_requests_body, triggers};

/// User plus system CPU time of this process.
fn cpu() -> Duration {
    let stat = procfs::process::Process::myself()
        .and_then(|me| me.stat())
        .expect("/proc/self/stat");
    Duration::from_secs_f64((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

fn peak_rss_mib() -> f64 {
    let status = procfs::process::Process::myself()
        .and_then(|me| me.status())
        .expect("/proc/self/status");
    status.vmhwm.unwrap_or(0) as f64 / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let number = |i: usize, default: usize| arg(i).parse().unwrap_or(default);
    match arg(0) {
        "write" => {
            let spec = BodySpec {
                queued: number(2, BodySpec::BIG_POOL.queued),
                running: number(3, BodySpec::BIG_POOL.running),
                finished: number(4, BodySpec::BIG_POOL.finished),
                matched_agents: number(5, BodySpec::BIG_POOL.matched_agents),
                ..BodySpec::BIG_POOL
            };
            let body = job_requests_body(&spec);
            std::fs::write(arg(1), &body).unwrap();
            println!("{} requests, {} bytes", spec.requests(), body.len());
        }
        "run" => {
            let path = arg(1);
            let size = std::fs::metadata(path).expect("the body file").len();
            let mut chunk = vec![0; 64 << 10];
            let iterations = number(2, 20);
            let triggers = triggers(number(3, 1));
            let mut rounds = Vec::with_capacity(iterations);
            let mut counted = 0;
            let mut overhead = (0, 0);
            for _ in 0..iterations {
                let before = cpu();
                let started = std::time::Instant::now();
                let mut file = std::fs::File::open(path).unwrap();
                let mut decoder = ListDecoder::new();
                let mut answer = Answer::default();
                loop {
                    let read = file.read(&mut chunk).unwrap();
                    let bytes = (read > 0).then(|| &chunk[..read]);
                    decoder.push(bytes, &mut answer).expect("a valid body");
                    if read == 0 {
                        break;
                    }
                }
                overhead = decoder.overhead();
                let now = tokio::time::Instant::now();
                let snapshot = Snapshot::next(None, answer, now, time::OffsetDateTime::now_utc());
                counted = triggers
                    .iter()
                    .map(|f| f.count(&snapshot.jobs, &snapshot.departed, now).total())
                    .sum::<u64>();
                rounds.push((started.elapsed(), cpu() - before));
            }
            rounds.sort();
            let (wall, _) = rounds[rounds.len() / 2];
            let total_cpu: Duration = rounds.iter().map(|(_, c)| *c).sum();
            println!(
                "ado-scaler      decoder overhead: {} bytes parsed twice, {} moved",
                overhead.0, overhead.1
            );
            println!(
                "ado-scaler      {} bytes, {} iterations, {} trigger(s): median {:.1} ms wall ({:.0} MB/s), mean {:.1} ms CPU, {counted} counted, peak RSS {:.1} MiB",
                size,
                iterations,
                triggers.len(),
                wall.as_secs_f64() * 1000.0,
                size as f64 / wall.as_secs_f64() / 1e6,
                total_cpu.as_secs_f64() * 1000.0 / iterations as f64,
                peak_rss_mib()
            );
        }
        _ => {
            eprintln!(
                "usage: decode write FILE [queued running finished agents] | decode run FILE ITERATIONS TRIGGERS"
            );
            std::process::exit(2);
        }
    }
}
