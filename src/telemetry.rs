//! Prometheus metrics (own registry, text format at `GET /metrics`) and log setup.
//!
//! Names follow Prometheus conventions: prefix `proco_`, base units (seconds), `_total`
//! for counters, `_info` gauges set to 1 that carry their facts as labels.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue_duration: Histogram,
    pub decode_duration: Histogram,
    pub inference_duration: Histogram,
    pub posterior_duration: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
    pub predictions: IntCounterVec,
    pub adaptive_prior: GaugeVec,
    pub adaptive_samples: Gauge,
    pub prototype_reloads: IntCounterVec,
    pub prototypes_info: GaugeVec,
    pub execution_provider_info: GaugeVec,
    pub model_info: GaugeVec,
    pub batch_failures: IntCounter,
    pub ready: IntGauge,
}

/// Latency buckets from 0.1 ms to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let hist = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets()))
                .unwrap();
            registry.register(Box::new(h.clone())).unwrap();
            h
        };
        let http_requests = IntCounterVec::new(
            Opts::new(
                "proco_http_requests_total",
                "HTTP requests answered, by route and status code",
            ),
            &["route", "status"],
        )
        .unwrap();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "proco_request_duration_seconds",
                "Time from receiving a request to sending its response, by route",
            )
            .buckets(latency_buckets()),
            &["route"],
        )
        .unwrap();
        let queue_duration = hist(
            "proco_queue_duration_seconds",
            "Time an image waited in the batch queue before the encoder took it",
        );
        let decode_duration = hist(
            "proco_decode_duration_seconds",
            "Time to decode, check and resize one image",
        );
        let inference_duration = hist(
            "proco_inference_duration_seconds",
            "Time of one encoder (ONNX Runtime) batch run",
        );
        let posterior_duration = hist(
            "proco_posterior_duration_seconds",
            "Time to turn one batch of encoder outputs into posteriors (rules, temperature, prior)",
        );
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("proco_batch_size", "Images per encoder batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .unwrap();
        let queue_depth = IntGauge::new(
            "proco_queue_depth",
            "Images waiting for the encoder right now",
        )
        .unwrap();
        let predictions = IntCounterVec::new(
            Opts::new(
                "proco_predictions_total",
                "Top-1 predictions served, by label",
            ),
            &["label"],
        )
        .unwrap();
        let adaptive_prior = GaugeVec::new(
            Opts::new(
                "proco_adaptive_prior",
                "Current adaptive (EM label-shift) estimate of the class prior, by label",
            ),
            &["label"],
        )
        .unwrap();
        let adaptive_samples = Gauge::new(
            "proco_adaptive_prior_samples",
            "Images in the adaptive prior's window",
        )
        .unwrap();
        let prototype_reloads = IntCounterVec::new(
            Opts::new(
                "proco_prototype_reloads_total",
                "Prototype reload attempts, by result (success, unchanged, rejected)",
            ),
            &["result"],
        )
        .unwrap();
        let prototypes_info = GaugeVec::new(
            Opts::new(
                "proco_prototypes_info",
                "Version of the prototypes being served (always 1)",
            ),
            &["version"],
        )
        .unwrap();
        let execution_provider_info = GaugeVec::new(
            Opts::new(
                "proco_execution_provider_info",
                "Execution provider in use and the one requested (always 1)",
            ),
            &["provider", "requested"],
        )
        .unwrap();
        let model_info = GaugeVec::new(
            Opts::new("proco_model_info", "The model being served (always 1)"),
            &["model", "feature_dim", "classes"],
        )
        .unwrap();
        let batch_failures = IntCounter::new(
            "proco_batch_failures_total",
            "Encoder batches that failed or panicked (their requests got an error answer)",
        )
        .unwrap();
        let ready = IntGauge::new(
            "proco_ready",
            "1 when /health/ready answers 200: the model is loaded, the inference thread runs and recent batches succeed",
        )
        .unwrap();
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batch_failures.clone()),
            Box::new(ready.clone()),
            Box::new(request_duration.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(predictions.clone()),
            Box::new(adaptive_prior.clone()),
            Box::new(adaptive_samples.clone()),
            Box::new(prototype_reloads.clone()),
            Box::new(prototypes_info.clone()),
            Box::new(execution_provider_info.clone()),
            Box::new(model_info.clone()),
        ] {
            registry.register(c).unwrap();
        }
        // Make the reload counters visible at 0 before the first reload.
        for result in ["success", "unchanged", "rejected"] {
            prototype_reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            http_requests,
            request_duration,
            queue_duration,
            decode_duration,
            inference_duration,
            posterior_duration,
            batch_size,
            queue_depth,
            predictions,
            adaptive_prior,
            adaptive_samples,
            prototype_reloads,
            prototypes_info,
            execution_provider_info,
            model_info,
            batch_failures,
            ready,
        }
    }

    /// Replaces the `proco_prototypes_info` series: only the served version is present.
    pub fn set_prototypes_version(&self, previous: Option<&str>, current: &str) {
        if let Some(prev) = previous {
            let _ = self.prototypes_info.remove_label_values(&[prev]);
        }
        self.prototypes_info.with_label_values(&[current]).set(1.0);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of metrics cannot fail");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Installs the log subscriber: human-readable lines on stderr, filtered by `level`
/// (`RUST_LOG` wins when set). stdout stays free for the "listening on" line.
///
/// A plain level (`info`, `debug`...) keeps ONNX Runtime's own chatter (dozens of lines
/// per session) at `warn`; give a full directive (e.g. `debug,ort=info`) to see it.
pub fn init_logging(level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let directive = match level {
        "error" | "warn" | "info" | "debug" | "trace" => format!("{level},ort=warn"),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directive))
        .unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
