//! Logging setup, the label types metrics share, and the one Prometheus registry every
//! concern registers its own families into.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        counter::ConstCounter,
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
    // Escape codes only where a terminal reads them: piped or collected logs stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
pub struct ReasonLabels {
    pub reason: &'static str,
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

/// Buckets for request latencies, from a millisecond to ten seconds: the one shape every
/// latency histogram shares, so dashboards can compare them.
pub fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The process's one Prometheus registry: the standard `process_*` families at the root,
/// `ado_scaler_build_info`, and room under `ado_scaler_` where each concern registers the
/// families it owns (as kube-rs/controller-rs does). It names no concern.
#[derive(Debug)]
pub struct MetricsRegistry {
    root: Registry,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        root.sub_registry_with_prefix("ado_scaler").register(
            "build_info",
            "Version of the running ado-scaler (always 1)",
            build_info,
        );
        Self { root }
    }

    /// Where a concern registers its families, under `ado_scaler_`, before the registry is
    /// shared.
    pub fn concern(&mut self) -> &mut Registry {
        self.root.sub_registry_with_prefix("ado_scaler")
    }

    /// OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.root).expect("writing to a String cannot fail");
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
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn the_root_carries_process_metrics_and_concerns_their_prefix() {
        let mut registry = MetricsRegistry::new();
        let counter = Family::<ResultLabels, Counter>::default();
        registry
            .concern()
            .register("things", "Things, by result", counter.clone());
        counter.get_or_create(&ResultLabels { result: "ok" }).inc();
        let text = registry.encode();
        for name in [
            "ado_scaler_things_total{result=\"ok\"} 1",
            "ado_scaler_build_info{version=\"",
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn latency_buckets_span_a_millisecond_to_ten_seconds() {
        let family = Family::<ResultLabels, Histogram>::new_with_constructor(latency_histogram);
        family
            .get_or_create(&ResultLabels { result: "x" })
            .observe(0.2);
        let mut registry = MetricsRegistry::new();
        registry.concern().register("latency", "", family);
        let text = registry.encode();
        assert!(text.contains("le=\"0.001\""), "{text}");
        assert!(text.contains("le=\"10.0\""), "{text}");
        assert!(
            text.contains("ado_scaler_latency_bucket{le=\"0.25\",result=\"x\"} 1"),
            "{text}"
        );
    }
}
