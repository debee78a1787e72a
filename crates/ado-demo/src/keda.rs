//! Emulates KEDA's ScaledJob controller: polls the scaler as KEDA does and applies the
//! `default` scaling strategy.

use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::transport::Channel;

use super::{
    agents::{Fate, Phase, World, simulated_agent},
    capabilities_of,
};
use ado_scaler::scaler::proto::{
    GetMetricsRequest, ScaledObjectRef, external_scaler_client::ExternalScalerClient,
};

/// Emulates KEDA's ScaledJob controller for one ScaledJob.
pub(super) struct KedaEmulator {
    pub(super) index: usize,
    pub(super) client: ExternalScalerClient<Channel>,
    pub(super) scaled_object: ScaledObjectRef,
    pub(super) world: World,
}

impl KedaEmulator {
    pub(super) async fn run(mut self) {
        let (config, stop) = (self.world.config.clone(), self.world.stop.clone());
        let mut ticker = tokio::time::interval(config.keda_polling);
        let mut next_agent = 0u64;
        // Which agents the chaos kills, and when: the same every run of a seed.
        let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(self.index as u64));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let Ok((queue, target, active)) = self.poll().await else {
                continue;
            };
            let running = self
                .world
                .stats
                .lock()
                .expect("stats")
                .running_jobs(self.index);
            // KEDA's `default` strategy.
            let max_scale = ((queue as f64 / target as f64).ceil() as u64).min(config.max_replicas);
            let create = if active {
                max_scale.saturating_sub(running).min(queue)
            } else {
                0
            };
            for _ in 0..create {
                next_agent += 1;
                let name = format!("sj{}-{next_agent:04}", self.index);
                let slot = {
                    let mut s = self.world.stats.lock().expect("stats");
                    s.agents.push((self.index, Phase::Starting));
                    s.agents.len() - 1
                };
                let fate = if rng.random_bool(config.chaos_share) {
                    if rng.random_bool(0.5) {
                        Fate::KilledRunning(rng.random())
                    } else {
                        Fate::KilledTearingDown
                    }
                } else {
                    Fate::Deregisters
                };
                tokio::spawn(simulated_agent(
                    self.world.clone(),
                    slot,
                    name,
                    capabilities_of(self.index),
                    fate,
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
