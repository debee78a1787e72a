//! Any bytes as a jobrequests answer, in chunks of any size: decoded by the client's own
//! incremental decoder, turned into a snapshot and counted by every kind of trigger. Nothing may panic, and no count may exceed
//! the unfinished requests of the answer.
#![no_main]

use ado_scaler::{
    ado::{
        models::{JobRequest, List},
        stream::decode_chunked,
    },
    count::Filter,
    poller::{Answer, Snapshot},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The first byte picks the chunk size: the decoder must not care how the bytes arrive.
    let Some((&chunk, body)) = input.split_first() else {
        return;
    };
    let mut answer = Answer::default();
    let streamed = decode_chunked(body, usize::from(chunk) + 1, &mut answer);
    let mut at_once = Answer::default();
    assert_eq!(decode_chunked(body, body.len(), &mut at_once), streamed);
    assert_eq!(at_once.jobs, answer.jobs);
    // Never stricter than serde_json's typed whole-body decode, and the same requests.
    if let Ok(list) = serde_json::from_slice::<List<JobRequest>>(body) {
        assert_eq!(streamed, Ok(list.value.len()));
        let unfinished = list
            .value
            .iter()
            .filter(|r| r.result.is_none() && r.finish_time.is_none())
            .count();
        assert_eq!(answer.jobs.len(), unfinished);
    }
    if streamed.is_err() {
        return;
    }
    let unfinished = answer.jobs.len() as u64;
    let now = tokio::time::Instant::now();
    let half = Answer {
        jobs: answer.jobs[answer.jobs.len() / 2..].to_vec(),
        ..Answer::default()
    };
    let first = Snapshot::next(None, answer, now, time::OffsetDateTime::now_utc());
    // Half of it a poll later: transitions between two snapshots are exercised.
    let snapshot = Snapshot::next(Some(&first), half, now, time::OffsetDateTime::now_utc());
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
