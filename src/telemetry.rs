//! Prometheus metrics (own registry, text format at `GET /metrics`) and log setup.
//!
//! Names follow Prometheus conventions: prefix `proco_`, base units (seconds), `_total`
//! for counters, `_info` gauges set to 1 that carry their facts as labels.

use std::sync::Arc;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of the process. The families about a model carry a `model` label first; a
/// loaded model writes them through its [`ModelMetrics`], and its series go when it is unloaded.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub ready: IntGauge,
    pub grpc_requests: IntCounterVec,
    pub panics: IntCounter,
    pub open_connections: IntGauge,
    pub connections_refused: IntCounter,
    per_model: PerModel,
}

/// The families with a `model` label.
struct PerModel {
    queue_duration: HistogramVec,
    decode_duration: HistogramVec,
    inference_duration: HistogramVec,
    posterior_duration: HistogramVec,
    batch_size: HistogramVec,
    queue_depth: IntGaugeVec,
    predictions: IntCounterVec,
    adaptive_prior: GaugeVec,
    adaptive_samples: GaugeVec,
    prototype_reloads: IntCounterVec,
    prototypes_info: GaugeVec,
    execution_provider_info: GaugeVec,
    model_info: GaugeVec,
    batch_failures: IntCounterVec,
    examples_learned: IntCounterVec,
    classes: IntGaugeVec,
    prototype_versions_written: IntCounterVec,
    prototype_rollbacks: IntCounterVec,
    prototype_version_mismatches: IntCounterVec,
    abstention_decisions: IntCounterVec,
    prediction_set_size: HistogramVec,
    prior_drift_total_variation: GaugeVec,
    prior_drift_kl: GaugeVec,
    feedback: IntCounterVec,
    feedback_labelled: GaugeVec,
    feedback_metrics: GaugeVec,
}

/// One family of one model: its series are the family's with that `model` label.
pub struct Labelled<V> {
    vec: V,
    model: String,
}

impl<T: MetricVecBuilder> Labelled<MetricVec<T>> {
    /// The series of these label values (after `model`).
    pub fn with_label_values(&self, values: &[&str]) -> T::M {
        let mut all = Vec::with_capacity(values.len() + 1);
        all.push(self.model.as_str());
        all.extend_from_slice(values);
        self.vec.with_label_values(&all)
    }

    pub fn remove_label_values(&self, values: &[&str]) {
        let mut all = vec![self.model.as_str()];
        all.extend_from_slice(values);
        let _ = self.vec.remove_label_values(&all);
    }

    /// Removes every series of this model in the family.
    pub fn reset(&self) {
        forget(&self.vec, &self.model);
    }
}

/// Removes the series of `model` from a family.
fn forget<T: MetricVecBuilder>(vec: &MetricVec<T>, model: &str) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("model") == Some(&model) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// What one loaded model writes: the same names as the families, its `model` label applied.
pub struct ModelMetrics {
    pub model: String,
    pub queue_duration: Histogram,
    pub decode_duration: Histogram,
    pub inference_duration: Histogram,
    pub posterior_duration: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
    pub adaptive_samples: Gauge,
    pub batch_failures: IntCounter,
    pub classes: IntGauge,
    pub prototype_versions_written: IntCounter,
    pub prototype_rollbacks: IntCounter,
    pub prototype_version_mismatches: IntCounter,
    pub prior_drift_total_variation: Gauge,
    pub prior_drift_kl: Gauge,
    pub feedback_labelled: Gauge,
    pub predictions: Labelled<IntCounterVec>,
    pub adaptive_prior: Labelled<GaugeVec>,
    pub prototype_reloads: Labelled<IntCounterVec>,
    pub prototypes_info: Labelled<GaugeVec>,
    pub execution_provider_info: Labelled<GaugeVec>,
    pub model_info: Labelled<GaugeVec>,
    pub examples_learned: Labelled<IntCounterVec>,
    pub abstention_decisions: Labelled<IntCounterVec>,
    pub prediction_set_size: Labelled<HistogramVec>,
    pub feedback: Labelled<IntCounterVec>,
    pub feedback_metrics: Labelled<GaugeVec>,
    all: Arc<Metrics>,
}

impl ModelMetrics {
    /// Replaces the `proco_prototypes_info` series: only the served version is present.
    pub fn set_prototypes_version(&self, previous: Option<&str>, current: &str) {
        if let Some(prev) = previous {
            self.prototypes_info.remove_label_values(&[prev]);
        }
        self.prototypes_info.with_label_values(&[current]).set(1.0);
    }

    /// Removes every series of this model (it was unloaded).
    pub fn forget(&self) {
        let m = &self.all.per_model;
        forget(&m.queue_duration, &self.model);
        forget(&m.decode_duration, &self.model);
        forget(&m.inference_duration, &self.model);
        forget(&m.posterior_duration, &self.model);
        forget(&m.batch_size, &self.model);
        forget(&m.queue_depth, &self.model);
        forget(&m.predictions, &self.model);
        forget(&m.adaptive_prior, &self.model);
        forget(&m.adaptive_samples, &self.model);
        forget(&m.prototype_reloads, &self.model);
        forget(&m.prototypes_info, &self.model);
        forget(&m.execution_provider_info, &self.model);
        forget(&m.model_info, &self.model);
        forget(&m.batch_failures, &self.model);
        forget(&m.examples_learned, &self.model);
        forget(&m.classes, &self.model);
        forget(&m.prototype_versions_written, &self.model);
        forget(&m.prototype_rollbacks, &self.model);
        forget(&m.prototype_version_mismatches, &self.model);
        forget(&m.abstention_decisions, &self.model);
        forget(&m.prediction_set_size, &self.model);
        forget(&m.prior_drift_total_variation, &self.model);
        forget(&m.prior_drift_kl, &self.model);
        forget(&m.feedback, &self.model);
        forget(&m.feedback_labelled, &self.model);
        forget(&m.feedback_metrics, &self.model);
    }
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let histograms = |name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            register(&r, HistogramVec::new(opts, labels).expect("valid"))
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
        let int_gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let int_gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid"));
        let int_counter =
            |name: &str, help: &str| register(&r, IntCounter::new(name, help).expect("valid"));
        let model = &["model"];
        let per_model = PerModel {
            queue_duration: histograms(
                "proco_queue_duration_seconds",
                "Time an image waited in the batch queue before the encoder took it",
                latency_buckets(),
                model,
            ),
            decode_duration: histograms(
                "proco_decode_duration_seconds",
                "Time to decode, check and resize one image",
                latency_buckets(),
                model,
            ),
            inference_duration: histograms(
                "proco_inference_duration_seconds",
                "Time of one encoder (ONNX Runtime) batch run",
                latency_buckets(),
                model,
            ),
            posterior_duration: histograms(
                "proco_posterior_duration_seconds",
                "Time to turn one batch of encoder outputs into posteriors (rules, temperature, prior)",
                latency_buckets(),
                model,
            ),
            batch_size: histograms(
                "proco_batch_size",
                "Images per encoder batch",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                model,
            ),
            queue_depth: int_gauges("proco_queue_depth", "Images waiting for the encoder right now", model),
            predictions: counters(
                "proco_predictions_total",
                "Top-1 predictions served, by label",
                &["model", "label"],
            ),
            adaptive_prior: gauges(
                "proco_adaptive_prior",
                "Current adaptive (EM label-shift) estimate of the class prior, by label",
                &["model", "label"],
            ),
            adaptive_samples: gauges(
                "proco_adaptive_prior_samples",
                "Images in the adaptive prior's window",
                model,
            ),
            prototype_reloads: counters(
                "proco_prototype_reloads_total",
                "Prototype reload attempts, by result (success, unchanged, rejected)",
                &["model", "result"],
            ),
            prototypes_info: gauges(
                "proco_prototypes_info",
                "Version of the prototypes being served (always 1)",
                &["model", "version"],
            ),
            execution_provider_info: gauges(
                "proco_execution_provider_info",
                "Execution provider in use and the one requested (always 1)",
                &["model", "provider", "requested"],
            ),
            model_info: gauges(
                "proco_model_info",
                "A model being served (always 1)",
                &["model", "variant", "feature_dim", "classes"],
            ),
            batch_failures: counters(
                "proco_batch_failures_total",
                "Encoder batches that failed or panicked (their requests got an error answer)",
                model,
            ),
            examples_learned: counters(
                "proco_examples_learned_total",
                "Images taught through POST /admin/prototypes/examples, by label",
                &["model", "label"],
            ),
            classes: int_gauges("proco_classes", "Classes in the prototypes being served", model),
            prototype_versions_written: counters(
                "proco_prototype_versions_written_total",
                "Prototype versions the server wrote itself (learned, deleted, rollback)",
                model,
            ),
            prototype_rollbacks: counters(
                "proco_prototype_rollbacks_total",
                "Rollbacks to an earlier prototypes version",
                model,
            ),
            prototype_version_mismatches: counters(
                "proco_prototype_version_mismatches_total",
                "Prototype files read whose stated version is not the id of their content (served under the content's id)",
                model,
            ),
            abstention_decisions: counters(
                "proco_abstention_decisions_total",
                "Answers to requests with abstain_below, by result (answered, abstained)",
                &["model", "result"],
            ),
            prediction_set_size: histograms(
                "proco_prediction_set_size",
                "Labels in each conformal prediction set served, by kind (class, marginal)",
                vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0],
                &["model", "kind"],
            ),
            prior_drift_total_variation: gauges(
                "proco_prior_drift_total_variation",
                "Total-variation distance between the adaptive prior and the training prior (0 to 1)",
                model,
            ),
            prior_drift_kl: gauges(
                "proco_prior_drift_kl",
                "KL divergence of the adaptive prior from the training prior, in nats",
                model,
            ),
            feedback: counters(
                "proco_feedback_total",
                "Feedback posts, by result (accepted, unknown_id, invalid, duplicate)",
                &["model", "result"],
            ),
            feedback_labelled: gauges(
                "proco_feedback_window_labelled",
                "Labelled answers in the feedback window",
                model,
            ),
            feedback_metrics: gauges(
                "proco_feedback_metric",
                "Over the labelled answers in the feedback window: accuracy, nll, brier, ece, set_coverage (NaN while none)",
                &["model", "metric"],
            ),
        };
        let request_opts = HistogramOpts::new(
            "proco_request_duration_seconds",
            "Time from receiving a request to sending its response, by route",
        )
        .buckets(latency_buckets());
        Metrics {
            http_requests: counters(
                "proco_http_requests_total",
                "HTTP requests answered, by route and status code",
                &["route", "status"],
            ),
            request_duration: register(&r, HistogramVec::new(request_opts, &["route"]).expect("valid")),
            ready: int_gauge(
                "proco_ready",
                "1 when /health/ready answers 200: the default model is loaded, its inference thread runs and recent batches succeed",
            ),
            grpc_requests: counters(
                "proco_grpc_requests_total",
                "gRPC calls answered, by method and status code",
                &["method", "code"],
            ),
            panics: int_counter(
                "proco_panics_total",
                "Request handlers that panicked (answered 500; the server kept serving)",
            ),
            open_connections: int_gauge("proco_open_connections", "HTTP connections open now"),
            connections_refused: int_counter(
                "proco_connections_refused_total",
                "HTTP connections closed at once because max_connections were open",
            ),
            per_model,
            registry: r.clone(),
        }
    }

    /// The handles model `model` writes through; its counters of outcomes start visible at 0.
    pub fn model(self: &Arc<Self>, model: &str) -> ModelMetrics {
        let m = &self.per_model;
        let one = [model];
        let metrics = ModelMetrics {
            model: model.to_string(),
            queue_duration: m.queue_duration.with_label_values(&one),
            decode_duration: m.decode_duration.with_label_values(&one),
            inference_duration: m.inference_duration.with_label_values(&one),
            posterior_duration: m.posterior_duration.with_label_values(&one),
            batch_size: m.batch_size.with_label_values(&one),
            queue_depth: m.queue_depth.with_label_values(&one),
            adaptive_samples: m.adaptive_samples.with_label_values(&one),
            batch_failures: m.batch_failures.with_label_values(&one),
            classes: m.classes.with_label_values(&one),
            prototype_versions_written: m.prototype_versions_written.with_label_values(&one),
            prototype_rollbacks: m.prototype_rollbacks.with_label_values(&one),
            prototype_version_mismatches: m.prototype_version_mismatches.with_label_values(&one),
            prior_drift_total_variation: m.prior_drift_total_variation.with_label_values(&one),
            prior_drift_kl: m.prior_drift_kl.with_label_values(&one),
            feedback_labelled: m.feedback_labelled.with_label_values(&one),
            predictions: label(&m.predictions, model),
            adaptive_prior: label(&m.adaptive_prior, model),
            prototype_reloads: label(&m.prototype_reloads, model),
            prototypes_info: label(&m.prototypes_info, model),
            execution_provider_info: label(&m.execution_provider_info, model),
            model_info: label(&m.model_info, model),
            examples_learned: label(&m.examples_learned, model),
            abstention_decisions: label(&m.abstention_decisions, model),
            prediction_set_size: label(&m.prediction_set_size, model),
            feedback: label(&m.feedback, model),
            feedback_metrics: label(&m.feedback_metrics, model),
            all: self.clone(),
        };
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

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of metrics cannot fail");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

fn label<T: MetricVecBuilder>(vec: &MetricVec<T>, model: &str) -> Labelled<MetricVec<T>> {
    Labelled {
        vec: vec.clone(),
        model: model.to_string(),
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
