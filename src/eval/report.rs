//! What `eval` prints and writes: the results table on stdout, and the rows of the JSON report.

use serde_json::{json, Value};

use crate::vmf::{Evaluation, Rule};

/// One table row: a rule, with or without its fitted temperature, under one prior.
pub struct Row<'a> {
    pub rule: Rule,
    pub calibrated: bool,
    pub temperature: f64,
    pub prior: &'a str,
    pub metrics: Evaluation,
    /// The prior vector, for every prior but uniform.
    pub prior_vector: Option<Vec<f64>>,
    pub em_iterations: Option<usize>,
}

impl Row<'_> {
    pub fn calibration(&self) -> &'static str {
        if self.calibrated {
            "fitted"
        } else {
            "uncalibrated"
        }
    }

    pub fn to_json(&self) -> Value {
        let mut row = json!({"rule": self.rule, "calibrated": self.calibrated,
            "temperature": self.temperature, "prior": self.prior, "metrics": self.metrics});
        if let Some(q) = &self.prior_vector {
            row["prior_vector"] = json!(q);
        }
        if let Some(it) = self.em_iterations {
            row["em_iterations"] = json!(it);
        }
        row
    }
}

pub fn print_header() {
    println!(
        "{:<9} {:<13} {:>12} {:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9} {:>6}",
        "rule",
        "calibration",
        "T",
        "prior",
        "top1",
        "top5",
        "many",
        "medium",
        "few",
        "ECE",
        "cwECE",
        "NLL",
        "Brier"
    );
}

pub fn print_row(row: &Row) {
    let m = &row.metrics;
    println!(
        "{:<9} {:<13} {:>12} {:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9} {:>6}",
        row.rule.to_string(),
        row.calibration(),
        format!("{:.4}", row.temperature),
        row.prior,
        pct(m.top1),
        pct(m.top5),
        pct(m.many),
        pct(m.medium),
        pct(m.few),
        fixed(m.ece, 4),
        fixed(m.classwise_ece, 4),
        fixed(m.nll, 4),
        fixed(m.brier, 4)
    );
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{:.2}", 100.0 * v)
    }
}

fn fixed(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.digits$}")
    }
}

/// `{label: count}` in label order.
pub fn per_label(labels: &[String], counts: &[usize]) -> Value {
    Value::Object(
        labels
            .iter()
            .zip(counts)
            .map(|(l, &n)| (l.clone(), json!(n)))
            .collect(),
    )
}
