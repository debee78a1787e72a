//! Criterion benchmarks of the big-pool path, on bodies from the project's deterministic
//! generator (`sim::ado::generate`): decode a jobrequests answer incrementally into the
//! poller's answer, build the snapshot, and count it for one and for ten triggers.
//!
//! `cargo bench --bench decode_count` (BENCHMARKS.md has the numbers); CI only compiles it.

use std::{hint::black_box, time::Duration};

use ado_scaler::{
    ado::stream::decode_chunked,
    poller::{Answer, Snapshot},
};
use ado_sim::ado::generate::{BodySpec, job_requests_body, triggers};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use time::OffsetDateTime;
use tokio::time::Instant;

/// As a TLS read hands the client its body: 16 KiB records.
const CHUNK: usize = 16 << 10;

fn bodies() -> Vec<(&'static str, BodySpec)> {
    let pool = |queued, running, matched_agents| BodySpec {
        queued,
        running,
        finished: 0,
        matched_agents,
        ..BodySpec::BIG_POOL
    };
    vec![
        ("20 jobs x 5 agents", pool(15, 5, 5)),
        ("200 jobs x 50 agents", pool(150, 50, 50)),
        ("600 jobs x 200 agents", BodySpec::BIG_POOL),
    ]
}

fn poll(body: &[u8], previous: Option<&Snapshot>) -> Snapshot {
    let mut answer = Answer::default();
    decode_chunked(body, CHUNK, &mut answer).expect("a generated body decodes");
    Snapshot::next(previous, answer, Instant::now(), OffsetDateTime::now_utc())
}

fn decode_and_count(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode+count");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (name, spec) in bodies() {
        let body = job_requests_body(&spec);
        group.throughput(Throughput::Bytes(body.len() as u64));
        for n in [1, 10] {
            let filters = triggers(n);
            group.bench_with_input(
                BenchmarkId::new(format!("{n} trigger(s)"), name),
                &body,
                |b, body| {
                    b.iter(|| {
                        let snapshot = poll(body, None);
                        let now = Instant::now();
                        filters
                            .iter()
                            .map(|f| f.count(&snapshot.jobs, &snapshot.departed, now).total())
                            .sum::<u64>()
                    })
                },
            );
        }
    }
    group.finish();
}

/// What each KEDA call costs once the pool is polled: counting a snapshot.
fn count_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("count");
    for (name, spec) in bodies() {
        let body = job_requests_body(&spec);
        let previous = poll(&body, None);
        let snapshot = poll(&body, Some(&previous));
        let filters = triggers(10);
        let now = Instant::now();
        group.bench_function(BenchmarkId::new("one trigger", name), |b| {
            b.iter(|| black_box(&filters[3]).count(&snapshot.jobs, &snapshot.departed, now))
        });
    }
    group.finish();
}

criterion_group!(benches, decode_and_count, count_only);
criterion_main!(benches);
