//! Which queued jobs can start now: an organisation runs at most as many self-hosted jobs at
//! once as it has private parallel jobs, counted across all its self-hosted pools. A job
//! queued beyond them waits in its pool (ADO: "…reached the maximum number of requests that
//! can run for parallelism type 'Private'") while `jobrequests` still lists it as queued; an
//! agent started for it would wait too. ADO hands the slots that free up to the oldest
//! waiting jobs first.
//!
//! Pure: the caller reads the organisation's usage and its pools' snapshots.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashSet},
};

use super::Job;

/// What ADO's `resourceusage` said of the organisation's private self-hosted parallel jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// `resourceLimit.totalCount`.
    pub total: u64,
    pub running: Running,
}

/// What holds a parallel job now, as ADO reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Running {
    /// `runningRequests` (with `includeRunningRequests=true`): the pool of each.
    Requests(Vec<u32>),
    /// Only `usedCount`.
    Count(u64),
}

/// One watched pool of the organisation: its id and its unfinished jobs from the last poll.
#[derive(Debug, Clone, Copy)]
pub struct PoolJobs<'a> {
    pub pool_id: u32,
    pub jobs: &'a [Job],
}

/// The organisation's cap: its parallel jobs and the queued jobs that wait for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cap {
    pub total: u64,
    pub running: u64,
    pub free: u64,
    /// Request ids of the queued jobs past the free slots.
    pub waiting: HashSet<u64>,
    /// The same, oldest first: the next to get a slot lead.
    pub waiting_in_order: Vec<u64>,
    /// How many of them each pool holds (every watched pool listed, 0 included).
    pub waiting_by_pool: BTreeMap<u32, u64>,
}

/// The cap from the usage and the watched pools' jobs.
///
/// Running jobs are counted from the freshest source for each pool: the watched pools' own
/// snapshots (polled every few seconds) for theirs, ADO's running requests for the other
/// pools (read once a minute). With only `usedCount`, the larger of it and the watched pools'
/// own count. Of the queued jobs taking a private parallel job, the `free` oldest (by queue
/// time, then request id) can start; the rest wait. A job not marked as taking one (a public
/// project's, or unmarked) is neither capped nor counted as running.
pub fn cap(usage: &Usage, pools: &[PoolJobs<'_>]) -> Cap {
    let ours_running = pools
        .iter()
        .flat_map(|p| private(p.jobs))
        .filter(|j| !j.is_queued())
        .count() as u64;
    let running = match &usage.running {
        Running::Requests(pool_ids) => {
            let watched: HashSet<u32> = pools.iter().map(|p| p.pool_id).collect();
            let elsewhere = pool_ids.iter().filter(|id| !watched.contains(id)).count() as u64;
            elsewhere + ours_running
        }
        Running::Count(used) => (*used).max(ours_running),
    };
    let free = usage.total.saturating_sub(running);
    let mut queued: Vec<(&Job, u32)> = pools
        .iter()
        .flat_map(|p| private(p.jobs).map(move |j| (j, p.pool_id)))
        .filter(|(j, _)| j.is_queued())
        .collect();
    // Unknown queue times last: ADO knows them, we do not.
    queued.sort_by_key(|(j, _)| (j.queue_time.is_none(), j.queue_time, j.request_id));
    let mut waiting_by_pool: BTreeMap<u32, u64> = pools.iter().map(|p| (p.pool_id, 0)).collect();
    let mut waiting_in_order = Vec::new();
    for (job, pool_id) in queued
        .into_iter()
        .skip(usize::try_from(free).unwrap_or(usize::MAX))
    {
        waiting_in_order.push(job.request_id);
        *waiting_by_pool.entry(pool_id).or_default() += 1;
    }
    Cap {
        total: usage.total,
        running,
        free,
        waiting: waiting_in_order.iter().copied().collect(),
        waiting_in_order,
        waiting_by_pool,
    }
}

impl Cap {
    /// The jobs a trigger with `parallelismHeadroom: headroom` leaves out: all that wait, but
    /// the `headroom` next in line, whose agents are then up when a slot frees (each slot
    /// turnover otherwise waits for an agent's start).
    pub fn held_back(&self, headroom: u64) -> Cow<'_, HashSet<u64>> {
        if headroom == 0 {
            return Cow::Borrowed(&self.waiting);
        }
        let ahead = usize::try_from(headroom).unwrap_or(usize::MAX);
        Cow::Owned(self.waiting_in_order.iter().skip(ahead).copied().collect())
    }
}

fn private(jobs: &[Job]) -> impl Iterator<Item = &Job> {
    jobs.iter().filter(|j| j.private_parallelism)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Duration, OffsetDateTime};

    fn job(id: u64, queued_at: Option<i64>, running: bool) -> Job {
        Job {
            request_id: id,
            demands: Vec::new().into(),
            requirements: Vec::new().into(),
            definition: None,
            matches_all_agents: false,
            matched_agents: Vec::new(),
            reserved_agent: running.then(|| "agent".to_owned()),
            queue_time: queued_at
                .map(|s| OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_800_000_000 + s)),
            assign_time: None,
            private_parallelism: true,
        }
    }

    fn usage(total: u64, running: Running) -> Usage {
        Usage { total, running }
    }

    fn waiting(cap: &Cap) -> Vec<u64> {
        let mut ids: Vec<u64> = cap.waiting.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn the_oldest_queued_jobs_across_pools_take_the_free_slots() {
        // Two slots, one running in pool 1: one slot free. Pool 2's job 7 was queued first.
        let a = [
            job(5, None, true),
            job(6, Some(20), false),
            job(8, Some(30), false),
        ];
        let b = [job(7, Some(10), false), job(9, Some(40), false)];
        let pools = [
            PoolJobs {
                pool_id: 1,
                jobs: &a,
            },
            PoolJobs {
                pool_id: 2,
                jobs: &b,
            },
        ];
        let cap = cap(&usage(2, Running::Requests(vec![1])), &pools);
        assert_eq!((cap.total, cap.running, cap.free), (2, 1, 1));
        assert_eq!(waiting(&cap), [6, 8, 9]);
        assert_eq!(cap.waiting_by_pool, BTreeMap::from([(1, 2), (2, 1)]));
    }

    #[test]
    fn running_jobs_come_from_the_freshest_source() {
        let a = [
            job(1, None, true),
            job(2, Some(1), false),
            job(3, Some(2), false),
        ];
        let pools = [PoolJobs {
            pool_id: 1,
            jobs: &a,
        }];
        // ADO still lists a job of ours that has finished since, and one in an unwatched
        // pool: ours come from our poll (1), the other pool's from ADO (1).
        let listed = cap(&usage(3, Running::Requests(vec![1, 1, 4])), &pools);
        assert_eq!((listed.running, listed.free), (2, 1));
        assert_eq!(waiting(&listed), [3]);
        // Only a count: the larger of it and ours.
        assert_eq!(cap(&usage(3, Running::Count(0)), &pools).running, 1);
        assert_eq!(cap(&usage(3, Running::Count(2)), &pools).running, 2);
        // More running than licensed (a licence reduced meanwhile): nothing free.
        let over = cap(&usage(1, Running::Count(5)), &pools);
        assert_eq!((over.free, waiting(&over)), (0, vec![2, 3]));
    }

    #[test]
    fn ties_and_unknown_queue_times_keep_request_order() {
        let a = [
            job(12, Some(5), false),
            job(11, Some(5), false),
            job(10, None, false),
            job(13, Some(6), false),
        ];
        let pools = [PoolJobs {
            pool_id: 1,
            jobs: &a,
        }];
        let cap = cap(&usage(2, Running::Count(0)), &pools);
        assert_eq!(waiting(&cap), [10, 13]);
        let none_free = super::cap(&usage(0, Running::Count(0)), &pools);
        assert_eq!(waiting(&none_free), [10, 11, 12, 13]);
    }

    #[test]
    fn headroom_counts_the_next_in_line() {
        let a = [
            job(1, Some(1), false),
            job(2, Some(2), false),
            job(3, Some(3), false),
            job(4, Some(4), false),
        ];
        let pools = [PoolJobs {
            pool_id: 1,
            jobs: &a,
        }];
        let cap = cap(&usage(1, Running::Count(0)), &pools);
        assert_eq!(cap.waiting_in_order, [2, 3, 4]);
        let held = |headroom| {
            let mut ids: Vec<u64> = cap.held_back(headroom).iter().copied().collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(held(0), [2, 3, 4]);
        assert_eq!(held(1), [3, 4]);
        assert_eq!(held(2), [4]);
        assert!(held(3).is_empty());
        assert!(held(u64::MAX).is_empty());
    }

    #[test]
    fn jobs_of_public_projects_are_neither_capped_nor_running() {
        let mut public_queued = job(2, Some(1), false);
        public_queued.private_parallelism = false;
        let mut public_running = job(3, None, true);
        public_running.private_parallelism = false;
        let a = [public_running, public_queued, job(4, Some(2), false)];
        let pools = [PoolJobs {
            pool_id: 1,
            jobs: &a,
        }];
        let cap = cap(&usage(1, Running::Requests(vec![])), &pools);
        assert_eq!((cap.running, cap.free), (0, 1));
        assert!(cap.waiting.is_empty());
        assert_eq!(cap.waiting_by_pool, BTreeMap::from([(1, 0)]));
    }
}
