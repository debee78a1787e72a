//! Time from `ado-scaler agent` start to `config.sh` exec, token exchange included, against
//! the simulated Entra over TLS. Run: `cargo bench --bench agent_startup`.
//!
//! The fake `config.sh` records the time it was started and fails, so nothing else runs.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ado_sim::SimCloud;

const RUNS: usize = 30;

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime.block_on(SimCloud::start()).unwrap();
    // The failed registration is cleaned up through the REST API: one lookup finds nothing.
    sim.ado.add_pool("Default");
    let dir = sim.dir().join("bench-agent");
    std::fs::create_dir_all(&dir).unwrap();
    let stamp = dir.join("stamp");
    let script = format!("#!/bin/sh\ndate +%s%N > {}\nexit 1\n", stamp.display());
    write_exec(&dir.join("config.sh"), &script);

    let mut samples: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let _ = std::fs::remove_file(&stamp);
            let started = SystemTime::now();
            let status = Command::new(env!("CARGO_BIN_EXE_ado-scaler"))
                .arg("agent")
                .envs(sim.pod_env())
                .env("AZP_URL", &sim.org_url)
                .env("AZP_AGENT_NAME", "bench")
                .env("AZP_AGENT_DIR", &dir)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(!status.success(), "config.sh fails by design");
            let exec_ns: u128 = std::fs::read_to_string(&stamp)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let start_ns = started.duration_since(UNIX_EPOCH).unwrap().as_nanos();
            Duration::from_nanos((exec_ns - start_ns) as u64)
        })
        .collect();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "agent start -> config.sh exec ({RUNS} runs, token exchange over TLS included): \
         min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(samples[0]),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(samples[samples.len() - 1])
    );
    println!("token requests served: {}", sim.entra.requests());
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn write_exec(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
