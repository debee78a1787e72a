//! One poll's view of a pool, and what changed since the previous one.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use time::OffsetDateTime;
use tokio::time::Instant;

use super::MAX_TEARDOWN_WINDOW;
use crate::{
    ado::{models::JobRequestView, stream::Sink},
    count::{AgentNames, DemandSets, Departed, Job},
};

/// One poll's answer as the poller keeps it, built element by element while the answer
/// is still arriving (see [`crate::ado::stream`]).
#[derive(Debug, Default)]
pub struct Answer {
    /// The `parent` names the matched agents were read for.
    pub parents: Arc<AgentNames>,
    pub jobs: Vec<Job>,
    /// Finished requests ADO still listed, for the departures of the jobs they were.
    pub finished: HashMap<u64, FinishedRecord>,
    demand_sets: DemandSets,
}

/// What a finished request tells about the job it was.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedRecord {
    pub reserved_agent: Option<String>,
    pub assign_time: Option<OffsetDateTime>,
    pub finish_time: Option<OffsetDateTime>,
}

impl Answer {
    pub fn new(parents: Arc<AgentNames>) -> Self {
        Self {
            parents,
            ..Self::default()
        }
    }

    pub fn add(&mut self, req: JobRequestView<'_>) {
        match Job::from_view(&req, &self.parents, &mut self.demand_sets) {
            Some(job) => self.jobs.push(job),
            None => {
                self.finished.insert(
                    req.request_id,
                    FinishedRecord {
                        reserved_agent: req.reserved_agent.map(|a| a.name.into_owned()),
                        assign_time: req.assign_time,
                        finish_time: req.finish_time,
                    },
                );
            }
        }
    }
}

impl Sink for Answer {
    type Element<'de> = JobRequestView<'de>;
    fn push(&mut self, element: JobRequestView<'_>) {
        self.add(element);
    }
}

/// One successful poll, parsed once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub fetched_at: Instant,
    /// Unfinished job requests.
    pub jobs: Vec<Job>,
    /// Jobs that left the in-flight state within [`MAX_TEARDOWN_WINDOW`].
    pub departed: Vec<Departed>,
    /// Since the previous poll: jobs seen assigned for the first time, with their wait
    /// (`assignTime − queueTime`) when ADO gave both times.
    pub started: Vec<Option<Duration>>,
    /// Since the previous poll: assigned jobs that finished or vanished.
    pub finished: usize,
    /// The `parent` names whose matches the jobs carry.
    pub parents: Arc<AgentNames>,
}

impl Snapshot {
    /// Builds the next snapshot from a poll, noticing which in-flight jobs have since
    /// finished or vanished: their agents are still tearing down.
    ///
    /// When a job left is estimated, not noticed: ADO's `finishTime` when the finished record
    /// is still listed (mapped onto our clock with `now_utc`), else the midpoint between the
    /// two polls. Taking the time of noticing would stretch every teardown window by up to a
    /// poll interval and start agents for nothing.
    pub fn next(
        previous: Option<&Snapshot>,
        answer: Answer,
        now: Instant,
        now_utc: OffsetDateTime,
    ) -> Self {
        let Answer {
            parents,
            jobs,
            finished: finished_here,
            ..
        } = answer;
        let mut departed = Vec::new();
        let mut started = Vec::new();
        let mut finished = 0;
        // Transitions need a previous poll: the first one after a start counts nothing, so a
        // restart does not count running jobs twice.
        if let Some(prev) = previous {
            departed.extend(
                prev.departed
                    .iter()
                    .filter(|d| now.saturating_duration_since(d.left_at) < MAX_TEARDOWN_WINDOW)
                    .cloned(),
            );
            let before: HashMap<u64, &Job> = prev.jobs.iter().map(|j| (j.request_id, j)).collect();
            for job in jobs.iter().filter(|j| !j.is_queued()) {
                if before
                    .get(&job.request_id)
                    .is_none_or(|old| old.is_queued())
                {
                    started.push(wait(job));
                }
            }
            let unfinished: HashSet<u64> = jobs.iter().map(|j| j.request_id).collect();
            for old in prev
                .jobs
                .iter()
                .filter(|j| !unfinished.contains(&j.request_id))
            {
                // A queued job that finished between two polls still had an agent; ADO's
                // finished record names it. One that vanished while queued was cancelled.
                let record = finished_here.get(&old.request_id);
                let agent = old
                    .reserved_agent
                    .clone()
                    .or_else(|| record.and_then(|r| r.reserved_agent.clone()));
                let Some(agent) = agent else { continue };
                if old.is_queued() {
                    let mut seen = old.clone();
                    seen.assign_time = record.and_then(|r| r.assign_time);
                    started.push(wait(&seen));
                }
                finished += 1;
                let midpoint = prev.fetched_at + now.saturating_duration_since(prev.fetched_at) / 2;
                let left_at = record
                    .and_then(|r| r.finish_time)
                    .and_then(|done| Duration::try_from(now_utc - done).ok())
                    .and_then(|ago| now.checked_sub(ago))
                    .map_or(midpoint, |at| at.clamp(prev.fetched_at, now));
                let mut job = old.clone();
                job.reserved_agent = Some(agent);
                departed.push(Departed { job, left_at });
            }
        }
        Self {
            fetched_at: now,
            jobs,
            departed,
            started,
            finished,
            parents,
        }
    }

    pub fn queued(&self) -> usize {
        self.jobs.iter().filter(|j| j.is_queued()).count()
    }

    /// Whether the jobs say which are matched to `parent` (always, without one).
    pub fn covers(&self, parent: Option<&str>) -> bool {
        parent.is_none_or(|p| self.parents.contains(p))
    }
}

/// `assignTime − queueTime`, when ADO gave both and they are in order.
fn wait(job: &Job) -> Option<Duration> {
    let (queued, assigned) = (job.queue_time?, job.assign_time?);
    Duration::try_from(assigned - queued).ok()
}

/// The answer a poll would build from `requests`, through their JSON as ADO sends it.
#[cfg(test)]
pub(crate) fn answer_of(requests: &[crate::ado::models::JobRequest]) -> Answer {
    let body =
        serde_json::to_vec(&serde_json::json!({ "count": requests.len(), "value": requests }))
            .expect("requests serialise");
    let mut answer = Answer::default();
    crate::ado::stream::decode_chunked(&body, 4096, &mut answer).expect("requests decode");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ado::models::JobRequest;

    const UTC0: OffsetDateTime = time::macros::datetime!(2026-01-01 00:00:00 UTC);

    /// A request; `finished_at` is seconds after UTC0.
    fn request(id: u64, agent: Option<&str>, finished_at: Option<i64>) -> JobRequest {
        let mut req: JobRequest =
            serde_json::from_value(serde_json::json!({ "requestId": id })).unwrap();
        req.queue_time = Some(UTC0);
        if let Some(a) = agent {
            req.assign_time = Some(UTC0);
            req.reserved_agent = Some(crate::ado::models::AgentRef {
                id: 1,
                name: a.into(),
                version: None,
                status: None,
                enabled: None,
            });
        }
        if let Some(secs) = finished_at {
            req.result = Some("succeeded".into());
            req.finish_time = Some(UTC0 + time::Duration::seconds(secs));
        }
        req
    }

    #[test]
    fn a_snapshot_covers_the_parents_it_was_read_for() {
        let parents = Arc::new(["tmpl".to_owned()].into_iter().collect());
        let s = Snapshot::next(None, Answer::new(parents), Instant::now(), UTC0);
        assert!(s.covers(None));
        assert!(s.covers(Some("tmpl")));
        assert!(!s.covers(Some("other")));
        let none = Snapshot::next(None, Answer::default(), Instant::now(), UTC0);
        assert!(!none.covers(Some("tmpl")));
    }

    #[test]
    fn departures_are_seen_between_polls() {
        let t0 = Instant::now();
        let utc = |secs: i64| UTC0 + time::Duration::seconds(secs);
        let s0 = Snapshot::next(
            None,
            answer_of(&[
                request(1, None, None),
                request(2, Some("a"), None),
                request(3, None, None),
                request(4, None, None),
                request(5, Some("c"), None),
            ]),
            t0,
            utc(0),
        );
        assert_eq!(s0.queued(), 3);
        assert!(s0.departed.is_empty());
        assert!(
            s0.started.is_empty() && s0.finished == 0,
            "nothing counted on the first poll"
        );
        let t1 = t0 + Duration::from_secs(4);
        // 1: picked up and finished between polls (still listed, finished 1 s ago),
        // 2: vanished while in flight, 3: vanished while queued (cancelled), 4: still queued,
        // 5: listed finished with a clock-skewed finishTime before the previous poll.
        let s1 = Snapshot::next(
            Some(&s0),
            answer_of(&[
                request(1, Some("b"), Some(3)),
                request(4, None, None),
                request(5, Some("c"), Some(-30)),
            ]),
            t1,
            utc(4),
        );
        // 1 was queued before and finished between the polls: it started and finished.
        assert_eq!(s1.started, vec![Some(Duration::ZERO)]);
        assert_eq!(s1.finished, 3);
        let mut gone: Vec<_> = s1
            .departed
            .iter()
            .map(|d| {
                (
                    d.job.request_id,
                    d.job.reserved_agent.clone().unwrap(),
                    d.left_at,
                )
            })
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            vec![
                (1, "b".into(), t0 + Duration::from_secs(3)),
                (2, "a".into(), t0 + Duration::from_secs(2)),
                (5, "c".into(), t0),
            ]
        );
        assert_eq!(s1.jobs.len(), 1);
        // Departed jobs survive later polls until MAX_TEARDOWN_WINDOW.
        let s2 = Snapshot::next(
            Some(&s1),
            answer_of(&[]),
            t1 + Duration::from_secs(1),
            utc(5),
        );
        assert_eq!(s2.departed.len(), 3);
        let s3 = Snapshot::next(
            Some(&s2),
            answer_of(&[]),
            t0 + MAX_TEARDOWN_WINDOW + Duration::from_secs(3),
            utc(700),
        );
        assert!(s3.departed.is_empty());
    }
}

#[cfg(test)]
mod transition_tests {
    use super::*;
    use crate::ado::models::JobRequest;

    fn req(id: u64, queued_s: i64, assigned_s: Option<i64>) -> JobRequest {
        let base = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        let mut r: JobRequest =
            serde_json::from_value(serde_json::json!({ "requestId": id })).unwrap();
        r.queue_time = Some(base + time::Duration::seconds(queued_s));
        if let Some(a) = assigned_s {
            r.assign_time = Some(base + time::Duration::seconds(a));
            r.reserved_agent = Some(crate::ado::models::AgentRef {
                id: 1,
                name: format!("agent-{id}"),
                version: None,
                status: None,
                enabled: None,
            });
        }
        r
    }

    #[test]
    fn started_jobs_carry_their_queue_wait_once() {
        let t0 = Instant::now();
        let utc = OffsetDateTime::now_utc();
        let s0 = Snapshot::next(
            None,
            answer_of(&[req(1, 0, None), req(2, 0, Some(3))]),
            t0,
            utc,
        );
        // 1 gets assigned after 12 s; 3 appears already assigned (picked up within one interval).
        let running = [req(1, 0, Some(12)), req(2, 0, Some(3)), req(3, 5, Some(6))];
        let s1 = Snapshot::next(Some(&s0), answer_of(&running), t0, utc);
        let mut waits: Vec<u64> = s1.started.iter().map(|w| w.unwrap().as_secs()).collect();
        waits.sort();
        assert_eq!(waits, [1, 12]);
        assert_eq!(s1.finished, 0);
        // The same jobs seen again are not started again.
        let s2 = Snapshot::next(Some(&s1), answer_of(&running), t0, utc);
        assert!(s2.started.is_empty());
        // Two finish (vanish); one is still running.
        let s3 = Snapshot::next(Some(&s2), answer_of(&[req(3, 5, Some(6))]), t0, utc);
        assert_eq!((s3.started.len(), s3.finished), (0, 2));
    }
}
