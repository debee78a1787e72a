//! Deterministic jobrequests answers of any size, shaped like ADO's (every field KEDA's
//! `JobRequest` struct declares, `_links` included, agents as ADO's `TaskAgentReference`), for benchmarks and load tests: a pool
//! where every queued job lists hundreds of `matchedAgents` makes answers of tens of MB.

use std::fmt::Write as _;

use ado_scaler::count::{DemandRule, Filter, parse_demands};

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct BodySpec {
    /// Unfinished requests without an agent.
    pub queued: usize,
    /// Unfinished requests on an agent.
    pub running: usize,
    /// Finished requests ADO still lists.
    pub finished: usize,
    /// `matchedAgents` entries per request.
    pub matched_agents: usize,
    /// Distinct demand sets, cycled through the requests.
    pub demand_sets: usize,
    pub seed: u64,
}

impl BodySpec {
    /// The issue's big pool: 600 requests with 200 matched agents each (about 53 MB).
    pub const BIG_POOL: Self = Self {
        queued: 400,
        running: 150,
        finished: 50,
        matched_agents: 200,
        demand_sets: 8,
        seed: 42,
    };

    pub fn requests(&self) -> usize {
        self.queued + self.running + self.finished
    }
}

/// splitmix64: stable across versions of everything, unlike a library RNG.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn guid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
}

const ORG: &str = "https://dev.azure.com/contoso";

fn links(out: &mut String, kind: &str, id: u64) {
    let _ = write!(
        out,
        r#""_links":{{"self":{{"href":"{ORG}/_apis/{kind}/{id}"}},"web":{{"href":"{ORG}/_settings/{kind}?id={id}"}}}}"#
    );
}

/// A `TaskAgentReference`, with every field ADO's REST reference lists for it.
fn agent(out: &mut String, id: u64, name: &str, status: &str) {
    out.push('{');
    links(out, "distributedtask/pools/10/agents", id);
    let _ = write!(
        out,
        r#","id":{id},"name":"{name}","version":"4.261.0","osDescription":"Linux 6.8.0-1021-azure #25-Ubuntu SMP x86_64","enabled":true,"status":"{status}","provisioningState":"Provisioned","accessPoint":"CodexAccessMapping""#
    );
    out.push('}');
}

/// One jobrequests answer as ADO sends it.
pub fn job_requests_body(spec: &BodySpec) -> Vec<u8> {
    let mut mix = Mix(spec.seed);
    let demand_sets: Vec<Vec<String>> = (0..spec.demand_sets.max(1))
        .map(|set| {
            let mut demands = vec![format!("team-{set}")];
            if set % 2 == 0 {
                demands.push("docker".into());
            }
            if set % 3 == 0 {
                demands.push("java -equals 17".into());
            }
            demands.push("Agent.Version -gtVersion 2.163.1".into());
            demands
        })
        .collect();
    let agents: Vec<String> = (0..spec.matched_agents)
        .map(|i| format!("ado-agent-{:05}-{:04x}", i, mix.next() & 0xffff))
        .collect();
    let mut out = String::with_capacity(spec.requests() * (1200 + 420 * spec.matched_agents));
    let _ = write!(out, r#"{{"count":{},"value":["#, spec.requests());
    for i in 0..spec.requests() {
        if i > 0 {
            out.push(',');
        }
        let id = 100_000 + i as u64;
        let (running, finished) = (
            i >= spec.queued && i < spec.queued + spec.running,
            i >= spec.queued + spec.running,
        );
        let minute = (i / 60) % 60;
        let _ = write!(
            out,
            r#"{{"requestId":{id},"queueTime":"2026-11-26T09:{minute:02}:{:02}.{:07}Z""#,
            i % 60,
            mix.next() % 10_000_000
        );
        if running || finished {
            let _ = write!(
                out,
                r#","assignTime":"2026-11-26T10:{minute:02}:00.1234567Z","receiveTime":"2026-11-26T10:{minute:02}:01.2345678Z","lockedUntil":"2026-11-26T10:{minute:02}:05.5Z""#
            );
        }
        if finished {
            let _ = write!(
                out,
                r#","finishTime":"2026-11-26T10:{minute:02}:59.9Z","result":"succeeded""#
            );
        }
        let _ = write!(
            out,
            r#","serviceOwner":"{}","hostId":"{}","scopeId":"{}","planType":"Build","planId":"{}","jobId":"{}","demands":["#,
            mix.guid(),
            mix.guid(),
            mix.guid(),
            mix.guid(),
            mix.guid()
        );
        for (k, demand) in demand_sets[i % demand_sets.len()].iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let _ = write!(out, "{demand:?}");
        }
        out.push(']');
        if running || finished {
            out.push_str(r#","reservedAgent":"#);
            let name = &agents[i % agents.len().max(1)];
            agent(&mut out, i as u64, name, "online");
        }
        out.push_str(r#","definition":{"#);
        links(&mut out, "build/Definitions", (i % 40) as u64);
        let _ = write!(out, r#","id":{},"name":"pipeline-{}"}}"#, i % 40, i % 40);
        out.push_str(r#","owner":{"#);
        links(&mut out, "build/Builds", id);
        let _ = write!(out, r#","id":{id},"name":"20261126.{i}"}}"#);
        let _ = write!(
            out,
            r#","data":{{"ParallelismTag":"Private","IsScheduledKey":"False"}},"poolId":10,"orchestrationId":"{}.job.__default","priority":0,"matchesAllAgentsInPool":false,"matchedAgents":["#,
            mix.guid()
        );
        for (k, name) in agents.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let status = if k % 7 == 0 { "online" } else { "offline" };
            agent(&mut out, k as u64 + 1, name, status);
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out.into_bytes()
}

/// `n` triggers with different demands and rules over the generated demand lists (`team-N`),
/// as `n` ScaledJobs on one pool: what the benchmarks count a generated answer for.
pub fn triggers(n: usize) -> Vec<Filter> {
    (0..n)
        .map(|i| Filter {
            demands: parse_demands([format!("team-{}", i % 8).as_str()]),
            rule: if i % 2 == 0 {
                DemandRule::TriggerSubsetOfJob
            } else {
                DemandRule::JobSubsetOfTrigger
            },
            ..Filter::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ado_scaler::{
        ado::{
            models::{JobRequest, List},
            stream::decode_chunked,
        },
        poller::Answer,
    };

    #[test]
    fn bodies_decode_with_the_states_asked_for_and_are_deterministic() {
        let spec = BodySpec {
            queued: 5,
            running: 3,
            finished: 2,
            matched_agents: 4,
            demand_sets: 3,
            seed: 7,
        };
        let body = job_requests_body(&spec);
        assert_eq!(body, job_requests_body(&spec), "same seed, same bytes");
        let list: List<JobRequest> = serde_json::from_slice(&body).unwrap();
        assert_eq!((list.count, list.value.len()), (10, 10));
        let mut answer = Answer::default();
        assert_eq!(decode_chunked(&body, 1000, &mut answer), Ok(10));
        let jobs = answer.jobs;
        assert_eq!(jobs.len(), 8, "finished ones are not jobs");
        assert_eq!(answer.finished.len(), 2);
        assert_eq!(jobs.iter().filter(|j| j.is_queued()).count(), 5);
        assert!(
            list.value
                .iter()
                .all(|r| r.matched_agents.as_ref().unwrap().len() == 4)
        );
        assert_eq!(list.value[0].demands.len(), 4);
    }

    #[test]
    fn the_big_pool_is_about_53_mb() {
        let spec = BodySpec {
            queued: 4,
            running: 1,
            finished: 1,
            ..BodySpec::BIG_POOL
        };
        let per_request = job_requests_body(&spec).len() / spec.requests();
        let big = per_request * BodySpec::BIG_POOL.requests();
        assert!((50_000_000..56_000_000).contains(&big), "{big}");
    }
}
