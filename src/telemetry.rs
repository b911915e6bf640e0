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
    pub examples_learned: IntCounterVec,
    pub classes: IntGauge,
    pub prototype_versions_written: IntCounter,
    pub prototype_rollbacks: IntCounter,
    pub prototype_version_mismatches: IntCounter,
    pub grpc_requests: IntCounterVec,
    pub panics: IntCounter,
    pub open_connections: IntGauge,
    pub connections_refused: IntCounter,
    pub abstention_decisions: IntCounterVec,
    pub prediction_set_size: HistogramVec,
    pub prior_drift_total_variation: Gauge,
    pub prior_drift_kl: Gauge,
    pub feedback: IntCounterVec,
    pub feedback_labelled: Gauge,
    /// Windowed feedback metrics, by name: accuracy, nll, brier, ece, set_coverage.
    pub feedback_metrics: GaugeVec,
}

/// Latency buckets from 0.1 ms to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

/// Registers a metric in `registry` and hands it back. The names and help texts are fixed
/// and valid, so registration cannot fail at run time.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let hist = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
            register(&r, Histogram::with_opts(opts).expect("valid histogram"))
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let request_opts = HistogramOpts::new(
            "proco_request_duration_seconds",
            "Time from receiving a request to sending its response, by route",
        )
        .buckets(latency_buckets());
        let set_opts = HistogramOpts::new(
            "proco_prediction_set_size",
            "Labels in each conformal prediction set served, by kind (class, marginal)",
        )
        .buckets(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        let gauge = |name: &str, help: &str| register(&r, Gauge::new(name, help).expect("valid"));
        let batch_opts = HistogramOpts::new("proco_batch_size", "Images per encoder batch")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        let metrics = Metrics {
            http_requests: counters(
                "proco_http_requests_total",
                "HTTP requests answered, by route and status code",
                &["route", "status"],
            ),
            request_duration: register(&r, HistogramVec::new(request_opts, &["route"]).expect("valid")),
            queue_duration: hist(
                "proco_queue_duration_seconds",
                "Time an image waited in the batch queue before the encoder took it",
            ),
            decode_duration: hist(
                "proco_decode_duration_seconds",
                "Time to decode, check and resize one image",
            ),
            inference_duration: hist(
                "proco_inference_duration_seconds",
                "Time of one encoder (ONNX Runtime) batch run",
            ),
            posterior_duration: hist(
                "proco_posterior_duration_seconds",
                "Time to turn one batch of encoder outputs into posteriors (rules, temperature, prior)",
            ),
            batch_size: register(&r, Histogram::with_opts(batch_opts).expect("valid")),
            queue_depth: register(
                &r,
                IntGauge::new("proco_queue_depth", "Images waiting for the encoder right now")
                    .expect("valid"),
            ),
            predictions: counters(
                "proco_predictions_total",
                "Top-1 predictions served, by label",
                &["label"],
            ),
            adaptive_prior: gauges(
                "proco_adaptive_prior",
                "Current adaptive (EM label-shift) estimate of the class prior, by label",
                &["label"],
            ),
            adaptive_samples: register(
                &r,
                Gauge::new(
                    "proco_adaptive_prior_samples",
                    "Images in the adaptive prior's window",
                )
                .expect("valid"),
            ),
            prototype_reloads: counters(
                "proco_prototype_reloads_total",
                "Prototype reload attempts, by result (success, unchanged, rejected)",
                &["result"],
            ),
            prototypes_info: gauges(
                "proco_prototypes_info",
                "Version of the prototypes being served (always 1)",
                &["version"],
            ),
            execution_provider_info: gauges(
                "proco_execution_provider_info",
                "Execution provider in use and the one requested (always 1)",
                &["provider", "requested"],
            ),
            model_info: gauges(
                "proco_model_info",
                "The model being served (always 1)",
                &["model", "variant", "feature_dim", "classes"],
            ),
            batch_failures: register(
                &r,
                IntCounter::new(
                    "proco_batch_failures_total",
                    "Encoder batches that failed or panicked (their requests got an error answer)",
                )
                .expect("valid"),
            ),
            ready: register(
                &r,
                IntGauge::new(
                    "proco_ready",
                    "1 when /health/ready answers 200: the model is loaded, the inference thread runs and recent batches succeed",
                )
                .expect("valid"),
            ),
            examples_learned: counters(
                "proco_examples_learned_total",
                "Images taught through POST /admin/prototypes/examples, by label",
                &["label"],
            ),
            classes: register(
                &r,
                IntGauge::new("proco_classes", "Classes in the prototypes being served")
                    .expect("valid"),
            ),
            prototype_versions_written: register(
                &r,
                IntCounter::new(
                    "proco_prototype_versions_written_total",
                    "Prototype versions the server wrote itself (learned, deleted, rollback)",
                )
                .expect("valid"),
            ),
            prototype_rollbacks: register(
                &r,
                IntCounter::new(
                    "proco_prototype_rollbacks_total",
                    "Rollbacks to an earlier prototypes version",
                )
                .expect("valid"),
            ),
            prototype_version_mismatches: register(
                &r,
                IntCounter::new(
                    "proco_prototype_version_mismatches_total",
                    "Prototype files read whose stated version is not the id of their content (served under the content's id)",
                )
                .expect("valid"),
            ),
            grpc_requests: counters(
                "proco_grpc_requests_total",
                "gRPC calls answered, by method and status code",
                &["method", "code"],
            ),
            panics: register(
                &r,
                IntCounter::new(
                    "proco_panics_total",
                    "Request handlers that panicked (answered 500; the server kept serving)",
                )
                .expect("valid"),
            ),
            open_connections: register(
                &r,
                IntGauge::new("proco_open_connections", "HTTP connections open now").expect("valid"),
            ),
            connections_refused: register(
                &r,
                IntCounter::new(
                    "proco_connections_refused_total",
                    "HTTP connections closed at once because max_connections were open",
                )
                .expect("valid"),
            ),
            abstention_decisions: counters(
                "proco_abstention_decisions_total",
                "Answers to requests with abstain_below, by result (answered, abstained)",
                &["result"],
            ),
            prediction_set_size: register(&r, HistogramVec::new(set_opts, &["kind"]).expect("valid")),
            prior_drift_total_variation: gauge(
                "proco_prior_drift_total_variation",
                "Total-variation distance between the adaptive prior and the training prior (0 to 1)",
            ),
            prior_drift_kl: gauge(
                "proco_prior_drift_kl",
                "KL divergence of the adaptive prior from the training prior, in nats",
            ),
            feedback: counters(
                "proco_feedback_total",
                "Feedback posts, by result (accepted, unknown_id, invalid, duplicate)",
                &["result"],
            ),
            feedback_labelled: gauge(
                "proco_feedback_window_labelled",
                "Labelled answers in the feedback window",
            ),
            feedback_metrics: gauges(
                "proco_feedback_metric",
                "Over the labelled answers in the feedback window: accuracy, nll, brier, ece, set_coverage (NaN while none)",
                &["metric"],
            ),
            registry: r.clone(),
        };
        // Make the reload counters visible at 0 before the first reload.
        for result in ["success", "unchanged", "rejected"] {
            metrics.prototype_reloads.with_label_values(&[result]);
        }
        for result in ["answered", "abstained"] {
            metrics.abstention_decisions.with_label_values(&[result]);
        }
        for result in ["accepted", "unknown_id", "invalid", "duplicate"] {
            metrics.feedback.with_label_values(&[result]);
        }
        metrics
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

/// How access lines are written (`access_log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    Json,
    Off,
}

impl std::str::FromStr for AccessLogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(AccessLogFormat::Text),
            "json" => Ok(AccessLogFormat::Json),
            "off" => Ok(AccessLogFormat::Off),
            other => Err(format!(
                "unknown access log format {other:?}: expected text, json or off"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for AccessLogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
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
