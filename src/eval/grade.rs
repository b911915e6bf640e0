//! Grading an encoded set: every rule, uncalibrated and fitted, under every prior, and the
//! reliability diagram.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use ndarray::ArrayView2;
use serde_json::{json, Value};

use super::dataset::label_counts;
use super::report::{self, Row};
use super::{
    plot, Bins, Encoded, EvalPrior, RuleLogits, Setup, BINS, EM_MAX_ITERATIONS, EM_TOLERANCE,
};
use crate::engine::PriorName;
use crate::vmf::{em_label_shift, evaluate, posterior, reliability_bins, Rule};

/// The graded set: the report's rows and reliability bins, and the diagram's panels.
pub(super) struct Graded {
    pub(super) rows: Vec<Value>,
    pub(super) reliability: serde_json::Map<String, Value>,
    /// Rule-major: for each rule, the uncalibrated then the fitted panel (first prior).
    pub(super) panels: Vec<Bins>,
}

/// Every rule, uncalibrated and fitted, under every prior: prints the table as it goes.
pub(super) fn grade(
    setup: &Setup,
    set: &Encoded,
    logits: &RuleLogits,
    temperatures: &HashMap<Rule, f64>,
    adaptive_floor: f64,
) -> anyhow::Result<Graded> {
    let classes = &setup.protos.classes;
    let labels = &set.labels;
    let c = classes.num_classes();
    let counts = label_counts(labels, c);
    let oracle: Vec<f64> = counts
        .iter()
        .map(|&k| (k as f64 / labels.len() as f64).max(adaptive_floor))
        .collect();
    report::print_header();
    let mut graded = Graded {
        rows: Vec::new(),
        reliability: serde_json::Map::new(),
        panels: Vec::new(),
    };
    for &rule in &setup.rules {
        let g = &logits[&rule];
        for (calibrated, t) in [(false, 1.0), (true, temperatures[&rule])] {
            for (pi, &prior) in setup.priors.iter().enumerate() {
                let (q, em_iterations) = match prior {
                    EvalPrior::Serving(PriorName::Uniform) => (vec![1.0 / c as f64; c], None),
                    EvalPrior::Serving(PriorName::Train) => (classes.train_prior(), None),
                    EvalPrior::Oracle => (oracle.clone(), None),
                    EvalPrior::Serving(PriorName::Adaptive) => {
                        let (q, it) =
                            adaptive_prior(g.view(), t, &classes.train_prior(), adaptive_floor);
                        (q, Some(it))
                    }
                };
                let log_q: Vec<f64> = match prior {
                    EvalPrior::Serving(PriorName::Train) => classes.log_train_prior().to_vec(),
                    _ => q.iter().map(|v| v.ln()).collect(),
                };
                let row = Row {
                    rule,
                    calibrated,
                    temperature: t,
                    prior: prior.name(),
                    metrics: evaluate(g.view(), t, &log_q, labels, classes.counts()),
                    prior_vector: (prior != EvalPrior::Serving(PriorName::Uniform)).then_some(q),
                    em_iterations,
                };
                report::print_row(&row);
                graded.rows.push(row.to_json());
                if pi == 0 {
                    let probs = posterior(g.view(), t, &log_q);
                    let bins = reliability_bins(probs.view(), labels, BINS);
                    graded.reliability.insert(
                        format!("{rule}/{}/{}", row.calibration(), prior.name()),
                        json!(bins
                            .iter()
                            .map(|&(conf, acc, n)| json!([conf, acc, n]))
                            .collect::<Vec<_>>()),
                    );
                    graded.panels.push(bins);
                }
            }
        }
    }
    Ok(graded)
}

pub(super) fn write_reliability(
    path: &Path,
    setup: &Setup,
    panels: Vec<Bins>,
) -> anyhow::Result<()> {
    // Columns: rules; rows: uncalibrated, fitted (the panels are rule-major).
    let mut grid = vec![Vec::new(); 2];
    for (i, bins) in panels.into_iter().enumerate() {
        grid[i % 2].push(bins);
    }
    plot::draw_reliability(&grid)
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote {} (columns: {}; top row T = 1, bottom row fitted T; prior {})",
        path.display(),
        setup
            .rules
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        setup.priors[0].name()
    );
    Ok(())
}

/// Saerens EM over all calibrated rows g/T, from the training prior; floored and renormalised.
fn adaptive_prior(
    g: ArrayView2<f64>,
    t: f64,
    train_prior: &[f64],
    floor: f64,
) -> (Vec<f64>, usize) {
    let calibrated = g.mapv(|v| v / t);
    let (q, it) = em_label_shift(
        calibrated.view(),
        train_prior,
        EM_MAX_ITERATIONS,
        EM_TOLERANCE,
    );
    let floored: Vec<f64> = q.iter().map(|v| v.max(floor)).collect();
    let total: f64 = floored.iter().sum();
    (floored.iter().map(|v| v / total).collect(), it)
}
