//! Prometheus metrics (own registry, text format at `GET /metrics`) and log setup.
//!
//! Names follow Prometheus conventions: prefix `proco_`, base units (seconds), `_total`
//! for counters, `_info` gauges set to 1 that carry their facts as labels.

use std::sync::Arc;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod logging;
mod model;
pub mod traces;

pub use logging::{init_logging, init_telemetry, AccessLogFormat};
use model::label;
pub use model::{Labelled, ModelMetrics};

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
    pub(crate) per_model: PerModel,
}

/// The families with a `model` label.
pub(crate) struct PerModel {
    pub(crate) queue_duration: HistogramVec,
    pub(crate) decode_duration: HistogramVec,
    pub(crate) inference_duration: HistogramVec,
    pub(crate) posterior_duration: HistogramVec,
    pub(crate) batch_size: HistogramVec,
    pub(crate) queue_depth: IntGaugeVec,
    pub(crate) predictions: IntCounterVec,
    pub(crate) adaptive_prior: GaugeVec,
    pub(crate) adaptive_samples: GaugeVec,
    pub(crate) prototype_reloads: IntCounterVec,
    pub(crate) prototypes_info: GaugeVec,
    pub(crate) execution_provider_info: GaugeVec,
    pub(crate) model_info: GaugeVec,
    pub(crate) batch_failures: IntCounterVec,
    pub(crate) abandoned_images: IntCounterVec,
    pub(crate) examples_learned: IntCounterVec,
    pub(crate) classes: IntGaugeVec,
    pub(crate) prototype_versions_written: IntCounterVec,
    pub(crate) prototype_rollbacks: IntCounterVec,
    pub(crate) prototype_store_up: IntGaugeVec,
    pub(crate) prototype_version_mismatches: IntCounterVec,
    pub(crate) abstention_decisions: IntCounterVec,
    pub(crate) prediction_set_size: HistogramVec,
    pub(crate) prior_drift_total_variation: GaugeVec,
    pub(crate) prior_drift_kl: GaugeVec,
    pub(crate) feedback: IntCounterVec,
    pub(crate) feedback_labelled: GaugeVec,
    pub(crate) feedback_metrics: GaugeVec,
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
            abandoned_images: counters(
                "proco_abandoned_images_total",
                "Images dropped from the queue unencoded because their request stopped waiting (deadline passed or client gone)",
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
            prototype_store_up: int_gauges(
                "proco_prototype_store_up",
                "1 while the shared prototype store (prototype_store = postgres://...) is reachable and followed, 0 while not; absent with the file store",
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
            abandoned_images: m.abandoned_images.with_label_values(&one),
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
