//! Logging setup and the one Prometheus registry every component reports into.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global tracing subscriber; the level comes from `RUST_LOG`, else `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub org: String,
    pub pool: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub namespace: String,
    pub name: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdoRequestLabels {
    pub org: String,
    pub endpoint: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub org: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgLabels {
    pub org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// How long jobs wait for an agent: seconds to an hour.
fn queue_wait_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// All metric families: ours under `ado_scaler_` in a sub-registry, the standard `process_*`
/// ones at the root, all in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub job_queue_wait: Family<PoolLabels, Histogram>,
    pub jobs_started: Family<PoolLabels, Counter>,
    pub jobs_finished: Family<PoolLabels, Counter>,
    pub queue_jobs: Family<QueueLabels, Gauge>,
    pub trigger_value: Family<TriggerLabels, Gauge>,
    pub poll_age_seconds: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    pub token_requests: Family<ResultLabels, Counter>,
    pub rate_limit_remaining: Family<OrgLabels, Gauge>,
    pub rate_limit_limit: Family<OrgLabels, Gauge>,
    pub rate_limit_reset: Family<OrgLabels, Gauge>,
    pub active_streams: Gauge,
    pub ado_requests: Family<AdoRequestLabels, Counter>,
    pub ado_request_duration: Family<EndpointLabels, Histogram>,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_request_duration: Family<MethodLabels, Histogram>,
    pub placeholders: Arc<crate::placeholder::PlaceholderMetrics>,
    pub claims: Arc<crate::claims::ClaimMetrics>,
    pub gc: Arc<crate::gc::GcMetrics>,
    pub poll: Arc<crate::poller::PollMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("ado_scaler");

        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Version of the running ado-scaler (always 1)",
            build_info,
        );
        let job_queue_wait =
            Family::new_with_constructor(queue_wait_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "job_queue_wait",
            "Time from queueTime to assignTime of each job, observed when first seen assigned",
            Unit::Seconds,
            job_queue_wait.clone(),
        );
        let jobs_started = Family::default();
        registry.register(
            "jobs_started",
            "Jobs seen going from queued to assigned between two polls",
            jobs_started.clone(),
        );
        let jobs_finished = Family::default();
        registry.register(
            "jobs_finished",
            "Assigned jobs seen finishing or vanishing between two polls",
            jobs_finished.clone(),
        );

        let queue_jobs = Family::default();
        registry.register(
            "queue_jobs",
            "Unfinished job requests of a pool, by state",
            queue_jobs.clone(),
        );
        let trigger_value = Family::default();
        registry.register(
            "trigger_value",
            "Last value answered to KEDA for a ScaledJob/ScaledObject trigger",
            trigger_value.clone(),
        );
        let poll_age_seconds = Family::default();
        registry.register_with_unit(
            "poll_age",
            "Age of the last successful job-requests poll of a pool",
            Unit::Seconds,
            poll_age_seconds.clone(),
        );
        let token_requests = Family::default();
        registry.register(
            "token_requests",
            "Token requests sent to Entra (cache misses), by result",
            token_requests.clone(),
        );
        let rate_limit_remaining = Family::default();
        registry.register(
            "rate_limit_remaining",
            "Last X-RateLimit-Remaining reported by Azure DevOps",
            rate_limit_remaining.clone(),
        );
        let rate_limit_limit = Family::default();
        registry.register(
            "rate_limit_limit",
            "Last X-RateLimit-Limit reported by Azure DevOps (TSTUs per window)",
            rate_limit_limit.clone(),
        );
        let rate_limit_reset = Family::default();
        registry.register_with_unit(
            "rate_limit_reset_timestamp",
            "Last X-RateLimit-Reset reported by Azure DevOps, as a Unix time",
            Unit::Seconds,
            rate_limit_reset.clone(),
        );
        let active_streams = Gauge::default();
        registry.register(
            "active_streams",
            "Open StreamIsActive/StreamMetricSpec streams",
            active_streams.clone(),
        );

        let placeholders = crate::placeholder::PlaceholderMetrics::register(registry);
        let claims = crate::claims::ClaimMetrics::register(registry);
        let gc = crate::gc::GcMetrics::register(registry);
        let poll = crate::poller::PollMetrics::register(registry);

        let ado = registry.sub_registry_with_prefix("ado");
        let ado_requests = Family::default();
        ado.register(
            "requests",
            "Requests sent to Azure DevOps, by endpoint and HTTP status",
            ado_requests.clone(),
        );
        let ado_request_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        ado.register_with_unit(
            "request_duration",
            "Latency of Azure DevOps requests",
            Unit::Seconds,
            ado_request_duration.clone(),
        );

        let grpc = registry.sub_registry_with_prefix("grpc");
        let grpc_requests = Family::default();
        grpc.register(
            "requests",
            "KEDA gRPC calls, by method and status code",
            grpc_requests.clone(),
        );
        let grpc_request_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        grpc.register_with_unit(
            "request_duration",
            "Latency of KEDA gRPC calls",
            Unit::Seconds,
            grpc_request_duration.clone(),
        );

        Self {
            registry: root,
            job_queue_wait,
            jobs_started,
            jobs_finished,
            queue_jobs,
            trigger_value,
            poll_age_seconds,
            token_requests,
            rate_limit_remaining,
            rate_limit_limit,
            rate_limit_reset,
            active_streams,
            ado_requests,
            ado_request_duration,
            grpc_requests,
            grpc_request_duration,
            placeholders,
            claims,
            gc,
            poll,
        }
    }

    pub fn token_request(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.token_requests
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// OpenMetrics text of every family.
    /// Where a concern registers its own metrics, under `ado_scaler_`, before the registry is
    /// shared: the concern names its families, this module names no concern.
    pub fn registry_for_concern(&mut self) -> &mut Registry {
        self.registry.sub_registry_with_prefix("ado_scaler")
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The standard `process_*` metrics of this process, read from `/proc` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl ProcessCollector {
    fn emit(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        metric: &impl EncodeMetric,
    ) -> Result<(), std::fmt::Error> {
        metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            Self::emit(
                &mut encoder,
                "process_cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                &ConstCounter::new(cpu),
            )?;
            let rss = stat.rss * procfs::page_size();
            Self::emit(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                &ConstGauge::new(rss as i64),
            )?;
            Self::emit(
                &mut encoder,
                "process_virtual_memory",
                "Virtual memory size",
                Some(&Unit::Bytes),
                &ConstGauge::new(stat.vsize as i64),
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = boot as f64 + stat.starttime as f64 / ticks;
                Self::emit(
                    &mut encoder,
                    "process_start_time",
                    "Start time since the Unix epoch",
                    Some(&Unit::Seconds),
                    &ConstGauge::new(start),
                )?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            Self::emit(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                None,
                &ConstGauge::new(fds as i64),
            )?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            Self::emit(
                &mut encoder,
                "process_max_fds",
                "Maximum open file descriptors",
                None,
                &ConstGauge::new(max as i64),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_carry_the_contract_names() {
        let m = Metrics::new();
        m.token_request(true);
        m.ado_requests
            .get_or_create(&AdoRequestLabels {
                org: "o".into(),
                endpoint: "jobrequests",
                code: "200".into(),
            })
            .inc();
        m.grpc_request_duration
            .get_or_create(&MethodLabels {
                method: "GetMetrics",
            })
            .observe(0.01);
        m.poll_age_seconds
            .get_or_create(&PoolLabels {
                org: "o".into(),
                pool: "p".into(),
            })
            .set(1.5);
        let pool = PoolLabels {
            org: "o".into(),
            pool: "p".into(),
        };
        m.gc.deleted.get_or_create(&pool).inc();
        m.gc.runs
            .get_or_create(&ResultLabels { result: "success" })
            .inc();
        let text = m.encode();
        for name in [
            "ado_scaler_token_requests_total{result=\"success\"} 1",
            "ado_scaler_ado_requests_total{org=\"o\",endpoint=\"jobrequests\",code=\"200\"} 1",
            "ado_scaler_grpc_request_duration_seconds_bucket{",
            "ado_scaler_poll_age_seconds{org=\"o\",pool=\"p\"} 1.5",
            "# HELP ado_scaler_active_streams ",
            "ado_scaler_build_info{version=\"",
            "ado_scaler_gc_leader 0",
            "ado_scaler_gc_deleted_agents_total{org=\"o\",pool=\"p\"} 1",
            "ado_scaler_gc_runs_total{result=\"success\"} 1",
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
