//! The KEDA external-scaler gRPC service: metadata in, queue length out.

pub mod access;
pub mod allowlist;
pub mod metadata;
mod metrics;
pub mod tls;

/// Generated from `proto/externalscaler.proto`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("externalscaler");
}

use std::{borrow::Cow, collections::HashSet, pin::Pin, sync::Arc};

use futures::Stream;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    claims::ClaimTracker,
    count::{Counted, parallelism::Cap},
    error::{Error, Result},
    parallelism::Parallelism,
    placeholder::Placeholders,
    poller::{Poller, PoolKey, Snapshot},
    telemetry::TriggerLabels,
};
use access::{Access, RefusalLog};
use metadata::{PoolRef, Trigger};
pub use metrics::ScalerMetrics;
use metrics::StreamGuard;
use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef, external_scaler_server::ExternalScaler,
};

/// Answers KEDA from the poller's shared snapshots.
#[derive(Clone)]
pub struct ScalerService {
    poller: Poller,
    access: Arc<Access>,
    refusals: Arc<RefusalLog>,
    metrics: Arc<ScalerMetrics>,
    /// Cancelled when the server stops: ends open streams so that shutdown can drain.
    streams_end: CancellationToken,
    placeholders: Placeholders,
    claims: ClaimTracker,
    parallelism: Parallelism,
}

/// A trigger, the pool it resolved to, and its value.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub trigger: Trigger,
    pub counted: Counted,
    /// Standby agents wanted now.
    pub standby: u64,
}

impl Evaluation {
    /// The value KEDA gets.
    pub fn value(&self) -> u64 {
        self.counted.total() + self.standby
    }

    /// What `IsActive` answers: the value is above the trigger's activation threshold.
    pub fn active(&self) -> bool {
        self.value() as i64 > self.trigger.activation
    }
}

/// A trigger the scaler acts for, its pool, and a subscription to the pool's polls (which
/// keeps the pool's watcher going while it lives).
struct Resolved {
    trigger: Trigger,
    key: PoolKey,
    state: tokio::sync::watch::Receiver<crate::poller::PoolState>,
}

/// The name a trigger goes by in logs: its ScaledJob (or ScaledObject).
fn trigger_name(r: &ScaledObjectRef) -> String {
    format!("{}/{}", r.namespace, r.name)
}

impl ScalerService {
    pub fn new(
        poller: Poller,
        access: Access,
        metrics: Arc<ScalerMetrics>,
        streams_end: CancellationToken,
        placeholders: Placeholders,
        claims: ClaimTracker,
        parallelism: Parallelism,
    ) -> Self {
        Self {
            poller,
            access: Arc::new(access),
            refusals: Arc::default(),
            metrics,
            streams_end,
            placeholders,
            claims,
            parallelism,
        }
    }

    /// Tells the placeholder keeper and the claim tracker that this trigger asked.
    fn noticed(&self, r: &ScaledObjectRef, trigger: &Trigger, key: &PoolKey) {
        let name = trigger_name(r);
        let label = trigger.pool.label();
        if let Some(spec) = &trigger.placeholder {
            self.placeholders.want(key, &label, &name, spec);
        }
        self.claims.observe(key, &label, &name, &trigger.filter);
    }

    async fn pool_key(&self, trigger: &Trigger) -> Result<PoolKey> {
        let pool_id = match &trigger.pool {
            PoolRef::Id(id) => *id,
            PoolRef::Name(name) => self.poller.pool_id(&trigger.org, name).await?,
        };
        Ok(PoolKey {
            org: trigger.org.clone(),
            pool_id,
            identity: self.poller.identity(),
        })
    }

    /// The first step of every call: the trigger parsed, if the scaler may act for it.
    fn admit(&self, r: &ScaledObjectRef) -> Result<Trigger> {
        self.access.admit(&r.namespace, &r.scaler_metadata)
    }

    /// The first steps of every call that needs a value: the trigger admitted, its pool found
    /// and subscribed to (within `--max-pools`), and only then the keepers told it asked, so
    /// that a refused trigger gets no placeholder.
    async fn resolve(&self, r: &ScaledObjectRef) -> Result<Resolved> {
        let trigger = self.admit(r)?;
        let subscribed = async {
            let key = self.pool_key(&trigger).await?;
            let parent = trigger.filter.parent.as_deref();
            let state = self.poller.subscribe(&key, &trigger.pool.label(), parent)?;
            Ok((key, state))
        }
        .await;
        let (key, state) = subscribed.map_err(|e| self.failed(&trigger, e))?;
        if trigger.parallelism_aware {
            self.parallelism.ready(&trigger.org).await;
        }
        self.noticed(r, &trigger, &key);
        Ok(Resolved {
            trigger,
            key,
            state,
        })
    }

    /// The last step: the trigger's value in a snapshot, recorded for the dashboard.
    fn evaluation(&self, r: &ScaledObjectRef, trigger: Trigger, snapshot: &Snapshot) -> Evaluation {
        let cap = if trigger.parallelism_aware {
            self.parallelism.cap(&trigger.org)
        } else {
            None
        };
        let (counted, standby) = value_now(&trigger, snapshot, cap.as_deref());
        let evaluation = Evaluation {
            trigger,
            counted,
            standby,
        };
        self.metrics
            .trigger_value
            .get_or_create(&TriggerLabels {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                pool: evaluation.trigger.pool.label(),
            })
            .set(evaluation.value() as i64);
        evaluation
    }

    /// What every path does with an error about the trigger's pool: a pool that is gone is
    /// looked up again by name next time (it may have been recreated with a new id).
    fn failed(&self, trigger: &Trigger, err: Error) -> Error {
        if let (Error::NotFound(_), PoolRef::Name(name)) = (&err, &trigger.pool) {
            self.poller.forget_pool_name(&trigger.org, name);
        }
        err
    }

    /// Parses the trigger and counts it against the pool's current snapshot.
    pub async fn evaluate(&self, r: &ScaledObjectRef) -> Result<Evaluation> {
        let Resolved {
            trigger,
            key,
            mut state,
        } = self.resolve(r).await?;
        let parent = trigger.filter.parent.as_deref();
        let snapshot = self
            .poller
            .snapshot(&mut state, &key, parent)
            .await
            .map_err(|e| self.failed(&trigger, e))?;
        Ok(self.evaluation(r, trigger, &snapshot))
    }

    /// The last step of every call: counted, timed, a failure logged (a refusal once per
    /// ScaledJob and reason), and turned into KEDA's status.
    fn answered<T>(
        &self,
        method: &'static str,
        started: Instant,
        r: Option<&ScaledObjectRef>,
        result: Result<T>,
    ) -> Result<T, Status> {
        self.metrics.call(method, started, &result);
        if let (Err(e), Some(r)) = (&result, r)
            && e.is_refusal()
            && self.refusals.first(&trigger_name(r), e.reason())
        {
            tracing::warn!(
                namespace = r.namespace,
                name = r.name,
                reason = e.reason(),
                error = %e,
                "refused a ScaledJob's trigger (logged once per ScaledJob; counted in ado_scaler_denied_total)"
            );
        }
        result.map_err(Status::from)
    }

    fn metric_spec(trigger: &Trigger) -> GetMetricSpecResponse {
        GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: trigger.metric_name(),
                target_size: trigger.target,
                target_size_float: trigger.target as f64,
            }],
        }
    }
}

/// A trigger's counted jobs in a snapshot (less those waiting for a parallel job when `cap`
/// applies), and the standby agents it wants now.
fn value_now(trigger: &Trigger, snapshot: &Snapshot, cap: Option<&Cap>) -> (Counted, u64) {
    let held_back = cap.map_or_else(
        || Cow::Owned(HashSet::new()),
        |c| c.held_back(trigger.parallelism_headroom),
    );
    let counted = trigger.filter.count_within(
        &snapshot.jobs,
        &snapshot.departed,
        Instant::now(),
        &held_back,
    );
    let standby = trigger
        .standby
        .as_ref()
        .map_or(0, |s| s.at(jiff::Timestamp::now()));
    (counted, standby)
}

type StreamOf<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for ScalerService {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let result = self
            .evaluate(r)
            .await
            .map(|e| Response::new(IsActiveResponse { result: e.active() }));
        self.answered("IsActive", started, Some(r), result)
    }

    type StreamIsActiveStream = StreamOf<IsActiveResponse>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let opened = self.resolve(&r).await;
        let Resolved {
            trigger,
            key,
            mut state,
        } = self.answered("StreamIsActive", started, Some(&r), opened)?;

        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = StreamGuard::new(&this.metrics);
            let parent = trigger.filter.parent.as_deref();
            let max_staleness = this.poller.settings().max_staleness;
            let mut last_sent: Option<bool> = None;
            loop {
                let usable =
                    state
                        .borrow_and_update()
                        .usable(&key, max_staleness, Instant::now(), parent);
                match usable {
                    Some(Ok(snapshot)) => {
                        this.noticed(&r, &trigger, &key);
                        let active = this.evaluation(&r, trigger.clone(), &snapshot).active();
                        if last_sent != Some(active) {
                            if tx
                                .send(Ok(IsActiveResponse { result: active }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            last_sent = Some(active);
                        }
                    }
                    Some(Err(err)) => {
                        // End the stream; KEDA reopens it and meanwhile falls back to polling.
                        let err = this.failed(&trigger, err);
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                    None => {}
                }
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = this.streams_end.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let result = self.admit(r).map(|t| Response::new(Self::metric_spec(&t)));
        self.answered("GetMetricSpec", started, Some(r), result)
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let r = request.scaled_object_ref.as_ref();
        let result = async {
            let r = r.ok_or_else(|| Error::InvalidMetadata {
                key: "scaledObjectRef",
                reason: "missing".into(),
            })?;
            let evaluation = self.evaluate(r).await?;
            let value = evaluation.value();
            tracing::debug!(
                namespace = r.namespace,
                name = r.name,
                value,
                queued = evaluation.counted.queued,
                in_flight = evaluation.counted.in_flight,
                tearing_down = evaluation.counted.tearing_down,
                waiting_for_parallelism = evaluation.counted.waiting_for_parallelism,
                standby = evaluation.standby,
                "metric"
            );
            // KEDA strips its `sN-` prefix before asking; answer with the name it asked for.
            Ok::<_, Error>(Response::new(GetMetricsResponse {
                metric_values: vec![MetricValue {
                    metric_name: request.metric_name.clone(),
                    metric_value: value as i64,
                    metric_value_float: value as f64,
                }],
            }))
        }
        .await;
        self.answered("GetMetrics", started, r, result)
    }

    type StreamMetricSpecStream = StreamOf<GetMetricSpecResponse>;

    async fn stream_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let result = self.admit(r);
        let spec =
            Self::metric_spec(&self.answered("StreamMetricSpec", started, Some(r), result)?);
        let (tx, rx) = mpsc::channel(1);
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = StreamGuard::new(&this.metrics);
            if tx.send(Ok(spec)).await.is_err() {
                return;
            }
            // The spec only changes with the metadata, which reopens the stream.
            tokio::select! {
                () = tx.closed() => {}
                () = this.streams_end.cancelled() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
