//! What `eval` measures of the decisions made with calibrated probabilities: conformal
//! prediction sets (fitting their scores on the validation split, and grading coverage and set
//! size on the test set) and abstention (the risk-coverage curve).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use ndarray::{Array2, Axis};
use serde_json::{json, Value};

use super::{plot, rule_logits, Encoded, RuleLogits, Setup};
use crate::prototypes::{ConformalRule, ConformalSection, CONFORMAL_SCORE};
use crate::vmf::conformal::{evaluate_sets, ConformalScores, SetEvaluation, SetKind};
use crate::vmf::metrics::{argmax, frequency_group};
use crate::vmf::{posterior, Rule};

/// Shares of images answered at which the risk-coverage table is printed.
const ANSWERED_SHARES: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Abstention thresholds printed beside them.
const THRESHOLDS: [f64; 5] = [0.5, 0.6, 0.7, 0.8, 0.9];

/// The balanced probabilities softmax(g / T) of every image, from a rule's balanced logits.
fn balanced(g: &Array2<f64>, t: f64) -> Array2<f64> {
    posterior(g.view(), t, &vec![0.0; g.ncols()])
}

/// Conformal scores of every rule on the labelled validation images, at the temperatures the
/// written prototypes will carry.
pub fn fit(
    setup: &Setup,
    val: &Encoded,
    temperatures: &HashMap<Rule, f64>,
    source: &Path,
) -> anyhow::Result<(ConformalSection, HashMap<Rule, ConformalScores>)> {
    let mut rules = std::collections::BTreeMap::new();
    let mut fitted = HashMap::new();
    let logits = rule_logits(setup, val, &Rule::ALL)?;
    for rule in Rule::ALL {
        let p = balanced(&logits[&rule], temperatures[&rule]);
        let scores = ConformalScores::calibrate(p.view(), &val.labels);
        rules.insert(
            rule.to_string(),
            ConformalRule {
                temperature: temperatures[&rule],
                scores: scores.per_class().to_vec(),
            },
        );
        fitted.insert(rule, scores);
    }
    let counts: Vec<usize> = fitted[&Rule::ALL[0]]
        .per_class()
        .iter()
        .map(Vec::len)
        .collect();
    let fewest = counts.iter().copied().min().unwrap_or(0);
    eprintln!(
        "conformal scores (1 - p_y, balanced) of {} validation images, {fewest} to {} per class: class-conditional sets up to coverage {:.4}, marginal up to {:.4}",
        val.labels.len(),
        counts.iter().copied().max().unwrap_or(0),
        crate::vmf::conformal::max_supported(fewest),
        crate::vmf::conformal::max_supported(val.labels.len()),
    );
    let section = ConformalSection {
        score: CONFORMAL_SCORE.to_string(),
        calibration_data: format!("{} ({} images)", source.display(), val.labels.len()),
        rules,
    };
    Ok((section, fitted))
}

/// Coverage and size of marginal and class-conditional sets at each level, per rule: prints
/// the table and returns the report's rows.
pub fn grade_sets(
    setup: &Setup,
    set: &Encoded,
    logits: &RuleLogits,
    temperatures: &HashMap<Rule, f64>,
    scores: &HashMap<Rule, ConformalScores>,
    levels: &[f64],
) -> anyhow::Result<Vec<Value>> {
    let classes = &setup.protos.classes;
    let labels = classes.labels();
    let groups: Vec<usize> = classes
        .counts()
        .iter()
        .map(|&n| frequency_group(n))
        .collect();
    println!();
    println!(
        "{:<9} {:<9} {:>6} {:>8} {:>8} {:<12} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "rule",
        "set",
        "level",
        "coverage",
        "worst",
        "(class)",
        "size",
        "many",
        "medium",
        "few",
        "empty"
    );
    let mut rows = Vec::new();
    for &rule in &setup.rules {
        let Some(rule_scores) = scores.get(&rule) else {
            continue;
        };
        let p = balanced(&logits[&rule], temperatures[&rule]);
        for kind in SetKind::ALL {
            for &level in levels {
                let thresholds = match rule_scores.thresholds(kind, level, labels) {
                    Ok(t) => t,
                    Err(e) => {
                        println!(
                            "{:<9} {:<9} {level:>6}  not served: {e}",
                            rule.as_str(),
                            kind.as_str()
                        );
                        continue;
                    }
                };
                let e = evaluate_sets(p.view(), &set.labels, &thresholds);
                rows.push(set_row(rule, kind, level, &e, labels, &groups, &set.labels));
            }
        }
    }
    Ok(rows)
}

/// Prints one level's line of the table and returns its report row.
fn set_row(
    rule: Rule,
    kind: SetKind,
    level: f64,
    e: &SetEvaluation,
    labels: &[String],
    groups: &[usize],
    truth: &[usize],
) -> Value {
    let (worst, worst_cov) = e
        .class_coverage
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.is_nan())
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, &c)| (labels[i].as_str(), c))
        .unwrap_or(("-", f64::NAN));
    // Mean set size over the images of each frequency group (many, medium, few).
    let group_size = |g: usize| {
        let (mut sum, mut n) = (0.0, 0usize);
        for y in truth.iter().filter(|&&y| groups[y] == g) {
            sum += e.class_mean_size[*y];
            n += 1;
        }
        if n == 0 {
            f64::NAN
        } else {
            sum / n as f64
        }
    };
    let sizes = [group_size(0), group_size(1), group_size(2)];
    println!(
        "{:<9} {:<9} {level:>6} {:>8.4} {:>8.4} {:<12} {:>6.3} {:>6} {:>6} {:>6} {:>6.3}",
        rule.as_str(),
        kind.as_str(),
        e.coverage,
        worst_cov,
        worst,
        e.mean_size,
        num(sizes[0]),
        num(sizes[1]),
        num(sizes[2]),
        e.empty
    );
    json!({
        "rule": rule, "kind": kind, "level": level, "coverage": e.coverage,
        "worst_class": worst, "worst_class_coverage": worst_cov,
        "class_coverage": labels.iter().zip(&e.class_coverage).map(|(l, c)| (l.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "mean_size": e.mean_size,
        "mean_size_many": sizes[0], "mean_size_medium": sizes[1], "mean_size_few": sizes[2],
        "empty": e.empty, "n": e.n,
    })
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.3}")
    }
}

/// Accuracy on the images answered when the least confident are abstained on, per rule, under
/// the calibrated probabilities of `log_q`: prints the table, draws the curves when asked, and
/// returns the report's entry.
pub fn risk_coverage(
    setup: &Setup,
    set: &Encoded,
    logits: &RuleLogits,
    temperatures: &HashMap<Rule, f64>,
    log_q: &[f64],
    prior_name: &str,
    png: Option<&Path>,
) -> anyhow::Result<Value> {
    println!();
    println!("risk-coverage (prior {prior_name}, fitted T): accuracy on the answered images");
    print!("{:<9}", "rule");
    for share in ANSWERED_SHARES {
        print!(" {:>6}", format!("{:.0}%", 100.0 * share));
    }
    for t in THRESHOLDS {
        print!(" {:>13}", format!("p>={t}: ans/acc"));
    }
    println!();
    let mut out = serde_json::Map::new();
    let mut curves = Vec::new();
    for &rule in &setup.rules {
        let p = posterior(logits[&rule].view(), temperatures[&rule], log_q);
        // (confidence, correct) for each image, most confident first.
        let mut answers: Vec<(f64, bool)> = p
            .axis_iter(Axis(0))
            .zip(&set.labels)
            .map(|(row, &y)| {
                let top = argmax(row.iter().copied());
                let conf = row[top];
                (conf, top == y)
            })
            .collect();
        answers.sort_by(|a, b| b.0.total_cmp(&a.0));
        let n = answers.len();
        let mut correct_prefix = Vec::with_capacity(n + 1);
        correct_prefix.push(0usize);
        for (_, ok) in &answers {
            correct_prefix.push(correct_prefix.last().unwrap() + usize::from(*ok));
        }
        let accuracy_at = |k: usize| {
            if k == 0 {
                f64::NAN
            } else {
                correct_prefix[k] as f64 / k as f64
            }
        };
        print!("{:<9}", rule.as_str());
        let mut by_share = Vec::new();
        for share in ANSWERED_SHARES {
            let k = ((share * n as f64).round() as usize).clamp(1, n);
            print!(" {:>6.2}", 100.0 * accuracy_at(k));
            by_share.push(json!({"answered": share, "accuracy": accuracy_at(k)}));
        }
        let mut by_threshold = Vec::new();
        for t in THRESHOLDS {
            let k = answers.iter().take_while(|(c, _)| *c >= t).count();
            print!(
                " {:>13}",
                format!("{:.1}/{}", 100.0 * k as f64 / n as f64, pct(accuracy_at(k)))
            );
            by_threshold.push(json!({"abstain_below": t, "answered": k as f64 / n as f64, "accuracy": accuracy_at(k)}));
        }
        println!();
        // The whole curve, one point per image answered, for the plot.
        curves.push(
            (1..=n)
                .map(|k| (k as f64 / n as f64, accuracy_at(k)))
                .collect::<Vec<_>>(),
        );
        out.insert(
            rule.to_string(),
            json!({"by_share": by_share, "by_threshold": by_threshold}),
        );
    }
    if let Some(path) = png {
        write_risk_coverage(path, setup, &curves)?;
    }
    Ok(json!({"prior": prior_name, "rules": out}))
}

/// The risk-coverage curves as a PNG, one colour per rule.
fn write_risk_coverage(
    path: &Path,
    setup: &Setup,
    curves: &[Vec<(f64, f64)>],
) -> anyhow::Result<()> {
    plot::draw_risk_coverage(curves)
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote {} (x: share answered, 0 to 1; y: accuracy on the answered, 0.7 to 1, grid every 0.05; {})",
        path.display(),
        setup
            .rules
            .iter()
            .zip(plot::CURVE_COLOURS_NAMED)
            .map(|(r, c)| format!("{r} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{:.1}", 100.0 * v)
    }
}

/// The balanced probabilities and labels of the calibration and test images, per rule, for an
/// independent check of the sets (tests/conformal).
pub fn export(
    setup: &Setup,
    calibration: &Encoded,
    test: &Encoded,
    test_logits: &RuleLogits,
    temperatures: &HashMap<Rule, f64>,
    path: &Path,
) -> anyhow::Result<()> {
    let calibration_logits = rule_logits(setup, calibration, &setup.rules)?;
    let mut rules = serde_json::Map::new();
    for &rule in &setup.rules {
        let t = temperatures[&rule];
        let rows = |e: &Encoded, g: &Array2<f64>| -> Value {
            let p = balanced(g, t);
            json!({
                "probabilities": p.axis_iter(Axis(0)).map(|r| r.to_vec()).collect::<Vec<_>>(),
                "labels": e.labels,
            })
        };
        rules.insert(
            rule.to_string(),
            json!({"temperature": t, "calibration": rows(calibration, &calibration_logits[&rule]),
                "test": rows(test, &test_logits[&rule])}),
        );
    }
    let doc =
        json!({"labels": setup.protos.classes.labels(), "score": CONFORMAL_SCORE, "rules": rules});
    std::fs::write(path, serde_json::to_string(&doc)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
