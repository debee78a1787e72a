//! The job request as counting reads it, borrowed from the bytes of ADO's answer. It lives
//! here, under the pure rules, so that counting depends on no client: `ado` decodes into it.

use std::borrow::Cow;

use serde::Deserialize;
use time::OffsetDateTime;

/// What counting reads of a job request, borrowed from the answer's bytes: the poller
/// decodes every element of a jobrequests answer into this, from the response stream
/// (`ado::stream`), and keeps only what triggers need. The other fields, and each matched
/// agent's id, version, status and links, are skipped without being allocated.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequestView<'a> {
    pub request_id: u64,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub queue_time: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub assign_time: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finish_time: Option<OffsetDateTime>,
    /// Only whether it is there matters: a request with a result is finished.
    #[serde(default)]
    pub result: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    pub demands: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub matched_agents: Option<Vec<NameRef<'a>>>,
    #[serde(default)]
    pub matches_all_agents_in_pool: bool,
    #[serde(default, borrow)]
    pub reserved_agent: Option<NameRef<'a>>,
    #[serde(default, borrow)]
    pub definition: Option<NameRef<'a>>,
    #[serde(default, borrow)]
    pub data: Option<RequestData<'a>>,
}

/// The request's `data`: of it, which parallel jobs the request takes.
#[derive(Debug, Default, Deserialize)]
pub struct RequestData<'a> {
    #[serde(rename = "ParallelismTag", default, borrow)]
    pub parallelism_tag: Option<Cow<'a, str>>,
}

impl JobRequestView<'_> {
    /// ADO sometimes lists finished requests despite `completedRequestCount=0`.
    pub fn is_finished(&self) -> bool {
        self.result.is_some() || self.finish_time.is_some()
    }

    /// Whether the request takes one of the organisation's private parallel jobs (a private
    /// project's job; a public project's takes none). Unmarked: not known, so not capped.
    pub fn takes_private_parallel_job(&self) -> bool {
        self.data
            .as_ref()
            .and_then(|d| d.parallelism_tag.as_deref())
            .is_some_and(|tag| tag.eq_ignore_ascii_case("Private"))
    }
}

/// The name of an agent or definition reference, borrowed unless it has escapes.
#[derive(Debug, Deserialize)]
pub struct NameRef<'a> {
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
}
