//! Any bytes as a jobrequests answer: decoded by the client's own decoder, turned into a
//! snapshot and counted by every kind of trigger. Nothing may panic, and no count may exceed
//! the unfinished requests of the answer.
#![no_main]

use ado_scaler::{ado::models::decode_job_requests, count::Filter, poller::Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(list) = decode_job_requests(body) else {
        return;
    };
    let unfinished = list
        .value
        .iter()
        .filter(|r| r.result.is_none() && r.finish_time.is_none())
        .count() as u64;
    let now = tokio::time::Instant::now();
    let first = Snapshot::next(None, &list.value, now, time::OffsetDateTime::now_utc());
    // The same answer again, a poll later: transitions between two snapshots are exercised.
    let snapshot = Snapshot::next(Some(&first), &list.value[list.value.len() / 2..], now, time::OffsetDateTime::now_utc());
    assert!(snapshot.jobs.len() as u64 <= unfinished);
    let filters = [
        Filter::default(),
        Filter {
            scale_on_in_flight: false,
            ..Filter::default()
        },
        Filter {
            agent_name_prefix: Some("ado-agent-".into()),
            ..Filter::default()
        },
    ];
    for filter in &filters {
        let counted = filter.count(&snapshot.jobs, &snapshot.departed, now);
        assert!(counted.queued + counted.in_flight <= unfinished);
        assert!(counted.tearing_down as usize <= snapshot.departed.len());
    }
});
