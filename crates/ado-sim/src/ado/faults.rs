//! Switchable faults: a status instead of the answer, a delay, or an answer whose body goes
//! wrong on the way (cut short, oversized, stalled, reset), for the fault-matrix tests.

use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, header},
    response::Response,
};

/// The REST endpoints, for counters and faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Pools,
    JobRequests,
    Agents,
    /// `…/distributedtask/packages/agent`.
    Packages,
    /// The package download itself (a CDN in reality: no token).
    Download,
    /// `…/distributedtask/resourceusage`: the organisation's parallel jobs.
    ResourceUsage,
}

/// A scripted failure: the next `times` matching requests (all, when `None`) get it.
#[derive(Debug, Clone)]
pub struct Fault {
    pub endpoint: Option<Endpoint>,
    /// HTTP status to answer instead of the real response; `None` only delays.
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    pub delay: Duration,
    /// What happens to the body of the real answer.
    pub body: Option<BodyFault>,
    pub times: Option<u32>,
}

impl Fault {
    pub fn status(endpoint: Endpoint, status: u16) -> Self {
        Self {
            endpoint: Some(endpoint),
            status: Some(status),
            retry_after: None,
            delay: Duration::ZERO,
            body: None,
            times: None,
        }
    }

    pub fn delay(endpoint: Endpoint, delay: Duration) -> Self {
        Self {
            endpoint: Some(endpoint),
            status: None,
            retry_after: None,
            delay,
            body: None,
            times: None,
        }
    }

    /// The real answer, with its body going wrong as `body` says (job requests only).
    pub fn body(endpoint: Endpoint, body: BodyFault) -> Self {
        Self {
            endpoint: Some(endpoint),
            status: None,
            retry_after: None,
            delay: Duration::ZERO,
            body: Some(body),
            times: None,
        }
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

/// How an answer's body goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The first half of the answer as a complete body (its own Content-Length): JSON that
    /// ends early, as from a proxy that cut it.
    Truncated,
    /// The answer padded with matched agents (as a pool with many agents has) to at least
    /// `size` bytes (unchanged when it lists no job); `chunked`: sent without a
    /// Content-Length, so the size is known only while reading.
    Oversized { size: usize, chunked: bool },
    /// Half the answer, then silence on an open connection.
    StallMidBody,
    /// Half the answer, then the connection is dropped.
    ResetMidBody,
}

impl BodyFault {
    /// The response for a JSON answer `json`.
    pub(super) fn respond(self, json: Vec<u8>) -> Response {
        let half = Bytes::copy_from_slice(&json[..json.len() / 2]);
        let body = match self {
            BodyFault::Truncated => Body::from(half),
            BodyFault::Oversized { chunked: false, .. } => Body::from(json),
            BodyFault::Oversized { chunked: true, .. } => {
                let chunks: Vec<Result<Bytes, std::io::Error>> = json
                    .chunks(16 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                Body::from_stream(futures::stream::iter(chunks))
            }
            BodyFault::StallMidBody => Body::from_stream(futures::StreamExt::chain(
                futures::stream::iter([Ok::<_, std::io::Error>(half)]),
                futures::stream::pending(),
            )),
            BodyFault::ResetMidBody => Body::from_stream(futures::stream::iter([
                Ok(half),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated reset",
                )),
            ])),
        };
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        response
    }
}
