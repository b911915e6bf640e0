//! One model's metric series: every per-model family with its `model` label applied.

use std::sync::Arc;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

use super::Metrics;

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
    pub abandoned_images: IntCounter,
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
    pub(super) all: Arc<Metrics>,
}

impl ModelMetrics {
    /// Replaces the `proco_prototypes_info` series: only the served version is present.
    pub fn set_prototypes_version(&self, previous: Option<&str>, current: &str) {
        if let Some(prev) = previous {
            self.prototypes_info.remove_label_values(&[prev]);
        }
        self.prototypes_info.with_label_values(&[current]).set(1.0);
    }

    /// The shared store's reachability, a series created only where one is used.
    pub fn prototype_store_up(&self) -> IntGauge {
        self.all
            .per_model
            .prototype_store_up
            .with_label_values(&[self.model.as_str()])
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
        forget(&m.abandoned_images, &self.model);
        forget(&m.examples_learned, &self.model);
        forget(&m.classes, &self.model);
        forget(&m.prototype_versions_written, &self.model);
        forget(&m.prototype_rollbacks, &self.model);
        forget(&m.prototype_store_up, &self.model);
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

pub(super) fn label<T: MetricVecBuilder>(
    vec: &MetricVec<T>,
    model: &str,
) -> Labelled<MetricVec<T>> {
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
