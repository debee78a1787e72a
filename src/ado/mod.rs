//! Azure DevOps REST client: the few distributed-task endpoints the scaler and agent use.

mod metrics;
pub mod models;
pub mod stream;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{StatusCode, header};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::{
    auth::TokenSource,
    count::parallelism,
    error::{Error, Result},
    telemetry::EndpointLabels,
};
pub use metrics::AdoMetrics;
use models::{Agent, AgentPackage, JobRequestView, List, Pool};
use stream::{ListDecoder, Sink};

/// Where a bearer token may be sent: over https, or in clear only to this machine (the
/// simulators, a local proxy in development). The one place this rule is written: the
/// organisation URL, `--allowed-orgs` and the agent package's download URL all ask here.
pub fn transport_allowed(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => is_loopback(url.host()),
        _ => false,
    }
}

fn is_loopback(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Why a string is not an organisation URL; callers name the flag or key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgUrlError {
    #[error("{0:?} is not a URL ({1})")]
    NotAUrl(String, String),
    /// Neither https nor http.
    #[error("{0:?} must be an https URL")]
    Scheme(String),
    /// Plain http to anything but a loopback host: see [`transport_allowed`].
    #[error("{0:?} must be an https URL (plain http only to a loopback host)")]
    NotHttps(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("credentials in the URL are not allowed")]
    Credentials,
    #[error("{0:?} must not have a query or fragment")]
    QueryOrFragment(String),
}

/// An organisation URL, normalised: lower-case host, no trailing slash, no query; https
/// unless the host is loopback.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgUrl(url::Url);

impl OrgUrl {
    pub fn parse(raw: &str) -> std::result::Result<Self, OrgUrlError> {
        let raw = raw.trim();
        let mut url = url::Url::parse(raw)
            .map_err(|e| OrgUrlError::NotAUrl(raw.to_owned(), e.to_string()))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(OrgUrlError::NoHost(raw.to_owned()));
        }
        if !matches!(url.scheme(), "https" | "http") {
            return Err(OrgUrlError::Scheme(raw.to_owned()));
        }
        if !transport_allowed(&url) {
            return Err(OrgUrlError::NotHttps(raw.to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OrgUrlError::Credentials);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(OrgUrlError::QueryOrFragment(raw.to_owned()));
        }
        let path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&path);
        Ok(Self(url))
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// `{org}/{path}`, with `path` relative to the organisation.
    pub fn join(&self, path: &str) -> url::Url {
        let mut url = self.0.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{}", path.trim_start_matches('/')));
        url
    }
}

impl std::fmt::Display for OrgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str().trim_end_matches('/'))
    }
}

/// ADO's rate-limit headers, present when the identity is being throttled or close to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub remaining: Option<i64>,
    pub limit: Option<i64>,
    pub reset_epoch: Option<i64>,
}

/// What ADO last said about an organisation's budget for this identity. ADO limits the
/// identity, not a pool, so every caller (polls, placeholders, the collector) shares it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throttle {
    /// A 429's `Retry-After` runs until then.
    pub blocked_until: Option<Instant>,
    /// The last rate-limit headers and when they came.
    pub last: Option<(RateLimit, Instant)>,
}

impl Throttle {
    /// ADO's sliding window: a reading older than this says nothing about now.
    const WINDOW: Duration = Duration::from_secs(300);

    /// Whether optional work (cleaning the pool) should yield to polls: blocked by a 429, or
    /// less than a fifth of the budget left in the current window.
    pub fn should_yield(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until) || self.budget_low(now)
    }

    /// Less than a fifth of the budget left, as last read within ADO's window: polls slow down.
    pub fn budget_low(&self, now: Instant) -> bool {
        match self.last {
            Some((rate, at)) if now.duration_since(at) < Self::WINDOW => {
                matches!((rate.remaining, rate.limit), (Some(left), Some(limit)) if left * 5 < limit)
            }
            _ => false,
        }
    }
}

/// `resourceusage` is a preview resource (version 2 since API 5.1: azure-devops-extension-api
/// `TaskAgentClient.getResourceUsage` asks `5.1-preview.2`, azure-devops-node-api `7.2-preview.2`);
/// ADO refuses a preview resource asked without `-preview`.
pub const RESOURCE_USAGE_API_VERSION: &str = "7.1-preview.2";

/// The response header that says more pages follow (ADO's convention across its REST APIs).
pub const CONTINUATION_TOKEN: &str = "x-ms-continuationtoken";

/// The row count at which ADO is known to cap job-request answers (with `$top`; KEDA issue
/// 6819). An answer of exactly this many rows and no continuation token may be cut short.
pub const ADO_ROW_CAP: usize = 200;

/// A bound on pages followed, against a server that never stops handing out tokens.
const MAX_PAGES: usize = 1000;

/// How a pool's job requests came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pages {
    pub rows: usize,
    pub pages: usize,
    /// The last page had exactly [`ADO_ROW_CAP`] rows and no continuation token.
    pub possibly_truncated: bool,
}

/// The largest answer read from ADO unless `--max-body` says otherwise. A jobrequests answer
/// of 760 requests was 4 s of ADO's time (KEDA issue 4324); at a few KiB a request with its
/// matched agents, 64 MiB leaves room for pools ten times that size.
pub const DEFAULT_MAX_BODY: u64 = 64 << 20;

/// Talks to one or many organisations with one identity.
#[derive(Clone, Debug)]
pub struct AdoClient {
    http: reqwest::Client,
    auth: TokenSource,
    metrics: Arc<AdoMetrics>,
    throttles: Arc<Mutex<HashMap<OrgUrl, Throttle>>>,
    max_body: u64,
}

impl AdoClient {
    pub fn new(http: reqwest::Client, auth: TokenSource, metrics: Arc<AdoMetrics>) -> Self {
        Self {
            http,
            auth,
            metrics,
            throttles: Arc::default(),
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Answers larger than `limit` bytes fail with [`Error::TooLarge`], read no further.
    pub fn with_max_body(mut self, limit: u64) -> Self {
        self.max_body = limit;
        self
    }

    /// The organisation's rate-limit state as seen by every call of this client.
    pub fn throttle(&self, org: &OrgUrl) -> Throttle {
        self.throttles
            .lock()
            .expect("throttles poisoned")
            .get(org)
            .copied()
            .unwrap_or_default()
    }

    pub fn identity(&self) -> &str {
        self.auth.identity()
    }

    /// Resolves a pool name to exactly one pool.
    pub async fn find_pool(&self, org: &OrgUrl, name: &str) -> Result<Pool> {
        let mut url = org.join("_apis/distributedtask/pools");
        url.query_pairs_mut()
            .append_pair("poolName", name)
            .append_pair("api-version", "7.1");
        let pools: List<Pool> = self.get_json(org, "pools", url).await?;
        // Only a pool of that very name (regardless of case, as the simulator's filter; two
        // such pools are ambiguous): whatever else ADO's filter may match, the name is what
        // --allowed-pools allowed.
        let wanted = name.to_lowercase();
        let mut pools: Vec<Pool> = pools
            .value
            .into_iter()
            .filter(|p| p.name.to_lowercase() == wanted)
            .collect();
        match pools.len() {
            0 => Err(Error::NotFound(format!("agent pool `{name}` in {org}"))),
            1 => Ok(pools.remove(0)),
            count => Err(Error::AmbiguousPool {
                name: name.to_owned(),
                count,
            }),
        }
    }

    /// Unfinished job requests of a pool, every page of them, each put into `sink` as soon
    /// as its bytes are in. No `$top` (it drops `matchedAgents` and caps at 200) and no
    /// api-version, as KEDA's scaler calls it.
    ///
    /// The answer is decoded from the response stream ([`stream::ListDecoder`]): a big pool's
    /// answer of tens of MB costs about a MiB of buffer, not its size. An answer that fails
    /// half-way has handed out some requests already; the caller keeps them only on `Ok`.
    ///
    /// An answer with an `x-ms-continuationtoken` header is followed with
    /// `continuationToken=<token>` until none comes back; `--max-body` bounds all pages
    /// together.
    pub async fn job_requests<S>(&self, org: &OrgUrl, pool_id: u32, sink: &mut S) -> Result<Pages>
    where
        S: for<'de> Sink<Element<'de> = JobRequestView<'de>>,
    {
        const ENDPOINT: &str = "jobrequests";
        let mut token: Option<String> = None;
        let mut budget = self.max_body;
        let mut pages = Pages::default();
        loop {
            pages.pages += 1;
            let mut url = org.join(&format!(
                "_apis/distributedtask/pools/{pool_id}/jobrequests"
            ));
            url.query_pairs_mut()
                .append_pair("completedRequestCount", "0");
            if let Some(token) = &token {
                url.query_pairs_mut()
                    .append_pair("continuationToken", token);
            }
            let response = self
                .send(org, ENDPOINT, reqwest::Method::GET, url, None)
                .await?;
            let next = response
                .headers()
                .get(CONTINUATION_TOKEN)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            let mut decoder = ListDecoder::new();
            let read = self
                .read_body_within(org, ENDPOINT, response, budget, |chunk| {
                    decoder.push(chunk, sink).map_err(|e| Error::Decode {
                        org: org.to_string(),
                        endpoint: ENDPOINT,
                        reason: e.to_string(),
                    })
                })
                .await?;
            budget -= read;
            let rows = decoder.elements();
            pages.rows += rows;
            match next {
                None => {
                    pages.possibly_truncated = rows == ADO_ROW_CAP;
                    return Ok(pages);
                }
                Some(next) if token.as_ref() == Some(&next) || pages.pages >= MAX_PAGES => {
                    return Err(Error::Decode {
                        org: org.to_string(),
                        endpoint: ENDPOINT,
                        reason: format!(
                            "continuation tokens did not end after {} pages of {} rows",
                            pages.pages, pages.rows
                        ),
                    });
                }
                Some(next) => token = Some(next),
            }
        }
    }

    /// The newest non-prerelease agent package for `platform` (e.g. `linux-x64`).
    pub async fn agent_package(&self, org: &OrgUrl, platform: &str) -> Result<AgentPackage> {
        let mut url = org.join("_apis/distributedtask/packages/agent");
        url.query_pairs_mut()
            .append_pair("platform", platform)
            .append_pair("$top", "1");
        let list: List<AgentPackage> = self.get_json(org, "packages", url).await?;
        list.value
            .into_iter()
            .find(|p| !p.version.is_prerelease)
            .ok_or_else(|| {
                Error::NotFound(format!("a released agent package for {platform} in {org}"))
            })
    }

    /// The organisation's private self-hosted parallel jobs and what holds them now
    /// (`GET _apis/distributedtask/resourceusage`, a preview resource: README, "Parallel
    /// jobs"). An answer without `resourceLimit.totalCount`, or with neither running requests
    /// nor `usedCount`, is [`Error::Decode`]: the cap is not applied on a guess.
    pub async fn resource_usage(&self, org: &OrgUrl) -> Result<parallelism::Usage> {
        let mut url = org.join("_apis/distributedtask/resourceusage");
        url.query_pairs_mut()
            .append_pair("parallelismTag", "Private")
            .append_pair("poolIsHosted", "false")
            .append_pair("includeRunningRequests", "true")
            .append_pair("api-version", RESOURCE_USAGE_API_VERSION);
        let usage: models::ResourceUsage = self.get_json(org, "resourceusage", url).await?;
        let unknown = |reason: &str| Error::Decode {
            org: org.to_string(),
            endpoint: "resourceusage",
            reason: reason.to_owned(),
        };
        let limit = usage
            .resource_limit
            .ok_or_else(|| unknown("no resourceLimit"))?;
        if limit.is_hosted == Some(true)
            || limit
                .parallelism_tag
                .as_deref()
                .is_some_and(|t| !t.eq_ignore_ascii_case("Private"))
        {
            return Err(unknown(
                "the limit is not the private self-hosted one asked for",
            ));
        }
        let total = limit
            .total_count
            .ok_or_else(|| unknown("no resourceLimit.totalCount"))?;
        let running = match (usage.running_requests, usage.used_count) {
            (Some(requests), _) => {
                parallelism::Running::Requests(requests.into_iter().map(|r| r.pool_id).collect())
            }
            (None, Some(used)) => parallelism::Running::Count(used),
            (None, None) => return Err(unknown("neither runningRequests nor usedCount")),
        };
        Ok(parallelism::Usage { total, running })
    }

    /// Agents of a pool registered under `name` (ADO matches names case-insensitively).
    pub async fn agents_named(&self, org: &OrgUrl, pool_id: u32, name: &str) -> Result<Vec<Agent>> {
        self.list_agents(org, pool_id, name, false).await
    }

    /// Like [`Self::agents_named`], with capabilities (ADO omits them unless asked).
    pub async fn agents_named_with_capabilities(
        &self,
        org: &OrgUrl,
        pool_id: u32,
        name: &str,
    ) -> Result<Vec<Agent>> {
        self.list_agents(org, pool_id, name, true).await
    }

    /// Every agent of a pool, with the request each one holds (`includeAssignedRequest`).
    pub async fn agents_with_assigned_requests(
        &self,
        org: &OrgUrl,
        pool_id: u32,
    ) -> Result<Vec<Agent>> {
        let mut url = org.join(&format!("_apis/distributedtask/pools/{pool_id}/agents"));
        url.query_pairs_mut()
            .append_pair("includeAssignedRequest", "true")
            .append_pair("api-version", "7.1");
        let list: List<Agent> = self.get_json(org, "agents", url).await?;
        Ok(list.value)
    }

    async fn list_agents(
        &self,
        org: &OrgUrl,
        pool_id: u32,
        name: &str,
        with_capabilities: bool,
    ) -> Result<Vec<Agent>> {
        let mut url = org.join(&format!("_apis/distributedtask/pools/{pool_id}/agents"));
        url.query_pairs_mut().append_pair("agentName", name);
        if with_capabilities {
            url.query_pairs_mut()
                .append_pair("includeCapabilities", "true");
        }
        url.query_pairs_mut().append_pair("api-version", "7.1");
        let list: List<Agent> = self.get_json(org, "agents", url).await?;
        Ok(list.value)
    }

    /// Registers an agent as `config.sh` does; `Ok(None)` when one of that name already
    /// exists (HTTP 409).
    pub async fn add_agent(
        &self,
        org: &OrgUrl,
        pool_id: u32,
        agent: &Agent,
    ) -> Result<Option<Agent>> {
        let mut url = org.join(&format!("_apis/distributedtask/pools/{pool_id}/agents"));
        url.query_pairs_mut().append_pair("api-version", "7.1");
        match self
            .json_call(org, "agents", reqwest::Method::POST, url, agent)
            .await
        {
            Err(Error::Upstream { status: 409, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Replaces a registration in place (`PUT`), as `config.sh --replace` does.
    pub async fn replace_agent(&self, org: &OrgUrl, pool_id: u32, agent: &Agent) -> Result<Agent> {
        let mut url = org.join(&format!(
            "_apis/distributedtask/pools/{pool_id}/agents/{}",
            agent.id
        ));
        url.query_pairs_mut().append_pair("api-version", "7.1");
        self.json_call(org, "agents", reqwest::Method::PUT, url, agent)
            .await
    }

    /// Deletes an agent registration.
    pub async fn delete_agent(&self, org: &OrgUrl, pool_id: u32, agent_id: u32) -> Result<()> {
        let mut url = org.join(&format!(
            "_apis/distributedtask/pools/{pool_id}/agents/{agent_id}"
        ));
        url.query_pairs_mut().append_pair("api-version", "7.1");
        self.send(org, "agents", reqwest::Method::DELETE, url, None)
            .await
            .map(drop)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        org: &OrgUrl,
        endpoint: &'static str,
        url: url::Url,
    ) -> Result<T> {
        let response = self
            .send(org, endpoint, reqwest::Method::GET, url, None)
            .await?;
        self.read_json(org, endpoint, response).await
    }

    /// Sends `body` as JSON and reads a JSON answer.
    async fn json_call<T: DeserializeOwned>(
        &self,
        org: &OrgUrl,
        endpoint: &'static str,
        method: reqwest::Method,
        url: url::Url,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(body).map_err(|e| Error::Decode {
            org: org.to_string(),
            endpoint,
            reason: e.to_string(),
        })?;
        let response = self.send(org, endpoint, method, url, Some(body)).await?;
        self.read_json(org, endpoint, response).await
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        org: &OrgUrl,
        endpoint: &'static str,
        response: reqwest::Response,
    ) -> Result<T> {
        let mut body = Vec::new();
        self.read_body_within(org, endpoint, response, self.max_body, |chunk| {
            body.extend_from_slice(chunk.unwrap_or_default());
            Ok(())
        })
        .await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode {
            org: org.to_string(),
            endpoint,
            reason: e.to_string(),
        })
    }

    /// Reads a JSON answer's bytes, at most `limit` of them, handing each chunk to `each`
    /// as it comes and then `None` at the end; the number of bytes read.
    ///
    /// A declared length over the limit is refused before reading; an undeclared one is read
    /// until it passes the limit.
    async fn read_body_within(
        &self,
        org: &OrgUrl,
        endpoint: &'static str,
        mut response: reqwest::Response,
        limit: u64,
        mut each: impl FnMut(Option<&[u8]>) -> Result<()>,
    ) -> Result<u64> {
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
        if !is_json {
            // ADO's answer to an identity it does not know: 203 + an HTML sign-in page.
            return Err(Error::NotAccepted {
                org: org.to_string(),
                status: response.status().as_u16(),
                what: "a sign-in page instead of JSON",
            });
        }
        let declared = response.content_length();
        let too_large = || Error::TooLarge {
            org: org.to_string(),
            endpoint,
            limit: self.max_body,
            declared,
        };
        if declared.is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut read: u64 = 0;
        loop {
            let chunk = response.chunk().await.map_err(|e| Error::Transport {
                org: org.to_string(),
                reason: describe_transport_error(&e),
            })?;
            let Some(chunk) = chunk else {
                each(None)?;
                return Ok(read);
            };
            read += chunk.len() as u64;
            if read > limit {
                return Err(too_large());
            }
            each(Some(&chunk))?;
        }
    }

    /// Sends one authorised request; counts it, records rate limits, maps error statuses.
    async fn send(
        &self,
        org: &OrgUrl,
        endpoint: &'static str,
        method: reqwest::Method,
        url: url::Url,
        json_body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response> {
        let authorization = self.auth.authorization().await?;
        let started = Instant::now();
        let mut request = self
            .http
            .request(method, url.as_str())
            .header(header::AUTHORIZATION, authorization.secret())
            .header(header::ACCEPT, "application/json");
        if let Some(body) = json_body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let sent = request.send().await;
        self.metrics
            .request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(started.elapsed().as_secs_f64());
        let org_label = org.to_string();
        let count = |code: String| self.metrics.request(&org_label, endpoint, code);
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                count("error".into());
                return Err(Error::Transport {
                    org: org_label.clone(),
                    reason: describe_transport_error(&e),
                });
            }
        };
        let status = response.status();
        count(status.as_u16().to_string());
        let rate = rate_limit(response.headers());
        self.record_throttle(org, status, &rate, response.headers());
        self.metrics.rate_limit(&org_label, &rate);
        if let Some(err) = status_error(org, endpoint, status, response.headers(), &url) {
            return Err(err);
        }
        if status == StatusCode::NON_AUTHORITATIVE_INFORMATION {
            // ADO's answer to an identity it does not know: 203 + an HTML sign-in page.
            return Err(Error::NotAccepted {
                org: org_label,
                status: status.as_u16(),
                what: "a sign-in page instead of JSON",
            });
        }
        Ok(response)
    }
}

impl AdoClient {
    fn record_throttle(
        &self,
        org: &OrgUrl,
        status: StatusCode,
        rate: &RateLimit,
        headers: &header::HeaderMap,
    ) {
        let blocked = status == StatusCode::TOO_MANY_REQUESTS;
        let now = Instant::now();
        let mut throttles = self.throttles.lock().expect("throttles poisoned");
        if !blocked && *rate == RateLimit::default() {
            // ADO sends rate-limit headers only near or over the limit: none on a success
            // means the identity is no longer short of budget.
            if status.is_success()
                && let Some(throttle) = throttles.get_mut(org)
            {
                throttle.last = None;
            }
            return;
        }
        let throttle = throttles.entry(org.clone()).or_default();
        if blocked {
            throttle.blocked_until = Some(now + retry_after(headers));
        }
        if *rate != RateLimit::default() {
            throttle.last = Some((*rate, now));
        }
    }
}

fn status_error(
    org: &OrgUrl,
    endpoint: &'static str,
    status: StatusCode,
    headers: &header::HeaderMap,
    url: &url::Url,
) -> Option<Error> {
    let org_s = org.to_string();
    Some(match status.as_u16() {
        200..=299 => return None,
        300..=399 | 401 => Error::NotAccepted {
            org: org_s,
            status: status.as_u16(),
            what: if status == StatusCode::UNAUTHORIZED {
                "unauthorized"
            } else {
                "a redirect to sign-in"
            },
        },
        403 => Error::Forbidden {
            org: org_s,
            resource: url.path().to_owned(),
        },
        404 => Error::NotFound(format!("{} at {org_s}", url.path())),
        429 => Error::RateLimited {
            org: org_s,
            retry_after: retry_after(headers),
        },
        code => Error::Upstream {
            org: org_s,
            endpoint,
            status: code,
        },
    })
}

/// `Retry-After` in seconds (ADO sends seconds); a minute when absent or unreadable.
pub fn retry_after(headers: &header::HeaderMap) -> Duration {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs)
}

fn rate_limit(headers: &header::HeaderMap) -> RateLimit {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    };
    RateLimit {
        remaining: num("x-ratelimit-remaining"),
        limit: num("x-ratelimit-limit"),
        reset_epoch: num("x-ratelimit-reset"),
    }
}

/// The error chain without the URL (reqwest puts the URL first; the chain has the cause).
pub(crate) fn describe_transport_error(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_urls_are_normalised() {
        let a = OrgUrl::parse("https://dev.azure.com/Contoso/").unwrap();
        assert_eq!(a.to_string(), "https://dev.azure.com/Contoso");
        assert_eq!(
            a.join("_apis/distributedtask/pools").as_str(),
            "https://dev.azure.com/Contoso/_apis/distributedtask/pools"
        );
        let b = OrgUrl::parse("https://CONTOSO.visualstudio.com").unwrap();
        assert_eq!(b.to_string(), "https://contoso.visualstudio.com");
        assert_eq!(
            b.join("/_apis/x").as_str(),
            "https://contoso.visualstudio.com/_apis/x"
        );
        let err = |raw| OrgUrl::parse(raw).unwrap_err();
        assert!(matches!(err("ftp://x"), OrgUrlError::Scheme(_)));
        assert!(matches!(err("ftp://127.0.0.1/o"), OrgUrlError::Scheme(_)));
        assert_eq!(err("https://u:p@dev.azure.com/x"), OrgUrlError::Credentials);
        assert_eq!(err("https://u@dev.azure.com/x"), OrgUrlError::Credentials);
        assert_eq!(err("https://:p@dev.azure.com/x"), OrgUrlError::Credentials);
        assert!(matches!(
            err("https://dev.azure.com/x?a=1"),
            OrgUrlError::QueryOrFragment(_)
        ));
        assert!(matches!(
            err("https://dev.azure.com/x#f"),
            OrgUrlError::QueryOrFragment(_)
        ));
        assert!(matches!(err("dev.azure.com/x"), OrgUrlError::NotAUrl(..)));
        // Plain http only to this machine: the token must not travel in clear text.
        for loopback in [
            "http://127.0.0.1:8080/o",
            "http://127.9.9.9/o",
            "http://[::1]:8080/o",
            "http://LOCALHOST:1/o",
        ] {
            assert!(OrgUrl::parse(loopback).is_ok(), "{loopback}");
        }
        for remote in [
            "http://10.0.0.1/o",
            "http://dev.azure.com/o",
            "http://localhost.evil/o",
        ] {
            let e = err(remote);
            assert!(matches!(e, OrgUrlError::NotHttps(_)), "{remote}");
            assert!(e.to_string().contains("must be an https URL"), "{e}");
        }
    }

    #[test]
    fn tokens_travel_in_clear_only_to_loopback() {
        let allowed = |raw: &str| transport_allowed(&url::Url::parse(raw).unwrap());
        assert!(allowed("https://dev.azure.com/o"));
        assert!(allowed("https://10.0.0.1/o"));
        assert!(allowed("http://127.0.0.1/o"));
        assert!(allowed("http://[::1]/o"));
        assert!(allowed("http://localhost/o"));
        assert!(!allowed("http://10.0.0.1/o"));
        assert!(!allowed("http://[::2]/o"));
        assert!(!allowed("http://localhost.example/o"));
        assert!(!allowed("ftp://127.0.0.1/o"));
        assert!(!allowed("file:///etc/passwd"));
    }

    #[test]
    fn optional_work_yields_to_a_429_and_to_a_low_budget_in_the_window() {
        let now = Instant::now();
        let rate = |remaining, limit| RateLimit {
            remaining: Some(remaining),
            limit: Some(limit),
            reset_epoch: None,
        };
        assert!(!Throttle::default().should_yield(now));
        let blocked = Throttle {
            blocked_until: Some(now + Duration::from_secs(30)),
            last: None,
        };
        assert!(blocked.should_yield(now));
        assert!(!blocked.should_yield(now + Duration::from_secs(30)));
        let low = Throttle {
            blocked_until: None,
            last: Some((rate(39, 200), now)),
        };
        assert!(low.should_yield(now + Duration::from_secs(299)));
        assert!(
            !low.should_yield(now + Duration::from_secs(300)),
            "an old reading"
        );
        let fifth = Throttle {
            blocked_until: None,
            last: Some((rate(40, 200), now)),
        };
        assert!(!fifth.should_yield(now));
        let no_limit = Throttle {
            blocked_until: None,
            last: Some((
                RateLimit {
                    remaining: Some(0),
                    ..RateLimit::default()
                },
                now,
            )),
        };
        assert!(!no_limit.should_yield(now));
    }

    #[test]
    fn retry_after_defaults_to_a_minute() {
        let mut h = header::HeaderMap::new();
        assert_eq!(retry_after(&h), Duration::from_secs(60));
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(7));
    }
}
