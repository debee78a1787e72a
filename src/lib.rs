//! ado-scaler: autoscale ephemeral Azure DevOps agents on Kubernetes through KEDA, with no PAT.
//!
//! The data path, one module per step:
//!
//! - [`scaler`]: KEDA's external-scaler gRPC service; admits a trigger (its namespace,
//!   organisation, pool and bounded metadata) before anything reaches ADO, answers from
//! - [`parallelism`]: one read of each organisation's parallel jobs, capping what counts to
//!   the queued jobs that can start, over
//! - [`poller`]: one background poll per pool, shared by every trigger on it, using
//! - [`ado`]: the Azure DevOps REST client and its serde models (big answers decoded as they
//!   arrive, in bounded memory); each trigger's value comes from
//! - [`count`]: the pure rules of which job requests count (demands, capabilities, states,
//!   teardown), and [`standby`]: idle agents to keep ready, by schedule.
//!
//! Beside the data path, `serve` keeps [`placeholder`] registrations so that ADO queues jobs
//! for a pool scaled to zero, [`claims`] reports queued jobs no trigger (or several) counts,
//! and [`gc`] deletes the registrations of agents that died without deregistering, on the
//! one replica [`k8s`] elects, and [`refresh`] changes ScaledJobs whose TLS material KEDA
//! read before it existed or was renewed.
//!
//! The agent side: [`agent`] is the entrypoint of each ephemeral agent pod (token exchange,
//! register, one job, deregister).
//!
//! Operations: [`check`] explains setup mistakes with the real calls.
//!
//! Around it: [`auth`] (workload identity, managed identity, PAT file), [`telemetry`]
//! (logging, label types, the Prometheus registry). [`cli`] is the binary's edge: clap's
//! structs, validated into each module's plain settings. The simulators (`ado-sim`) and
//! the demo (`ado-demo`) are crates of their own: nothing of them is linked into this one.

#![forbid(unsafe_code)]

pub mod ado;
pub mod agent;
pub mod auth;
pub mod check;
pub mod claims;
pub mod cli;
pub mod count;
pub mod error;
pub mod gc;
pub mod k8s;
pub mod parallelism;
pub mod placeholder;
pub mod poller;
pub mod refresh;
pub mod registrar;
pub mod scaler;
pub mod serve;
pub mod standby;
pub mod telemetry;

pub use error::{Error, Result};
