//! Emulates KEDA's ScaledJob controller: polls the scaler as KEDA does and applies the
//! `default` scaling strategy.

use tonic::transport::Channel;

use super::{
    DemoConfig,
    agents::{Phase, Registrar, Shared, simulated_agent},
    capabilities_of,
};
use crate::{
    scaler::proto::{
        GetMetricsRequest, ScaledObjectRef, external_scaler_client::ExternalScalerClient,
    },
    sim::AdoSim,
};

/// Emulates KEDA's ScaledJob controller for one ScaledJob.
pub(super) struct KedaEmulator {
    pub(super) index: usize,
    pub(super) client: ExternalScalerClient<Channel>,
    pub(super) scaled_object: ScaledObjectRef,
    pub(super) config: DemoConfig,
    pub(super) stats: Shared,
    pub(super) ado: AdoSim,
    pub(super) registrar: Registrar,
}

impl KedaEmulator {
    pub(super) async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.keda_polling);
        let mut next_agent = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let Ok((queue, target, active)) = self.poll().await else {
                continue;
            };
            let running = self.stats.lock().expect("stats").running_jobs(self.index);
            // KEDA's `default` strategy.
            let max_scale =
                ((queue as f64 / target as f64).ceil() as u64).min(self.config.max_replicas);
            let create = if active {
                max_scale.saturating_sub(running).min(queue)
            } else {
                0
            };
            for _ in 0..create {
                next_agent += 1;
                let name = format!("sj{}-{next_agent:04}", self.index);
                let slot = {
                    let mut s = self.stats.lock().expect("stats");
                    s.agents.push((self.index, Phase::Starting));
                    s.agents.len() - 1
                };
                tokio::spawn(simulated_agent(
                    slot,
                    name,
                    capabilities_of(self.index),
                    self.config.clone(),
                    self.stats.clone(),
                    self.ado.clone(),
                    self.registrar.clone(),
                    stop.clone(),
                ));
            }
        }
    }

    /// One KEDA polling cycle: IsActive, GetMetricSpec, GetMetrics.
    pub(super) async fn poll(&mut self) -> std::result::Result<(u64, u64, bool), tonic::Status> {
        let active = self
            .client
            .is_active(self.scaled_object.clone())
            .await?
            .into_inner()
            .result;
        let spec = self
            .client
            .get_metric_spec(self.scaled_object.clone())
            .await?
            .into_inner();
        let spec = spec.metric_specs.first().cloned().unwrap_or_default();
        let metrics = self
            .client
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(self.scaled_object.clone()),
                metric_name: spec.metric_name.clone(),
            })
            .await?
            .into_inner();
        let value = metrics
            .metric_values
            .first()
            .map_or(0, |m| m.metric_value.max(0) as u64);
        Ok((value, spec.target_size.max(1) as u64, active))
    }
}
