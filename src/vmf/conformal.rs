//! Split-conformal prediction sets (Vovk et al. 2005; Sadinle, Lei and Wasserman 2019) over
//! *balanced* calibrated probabilities p(y | x) = softmax(g / T).
//!
//! Score: s(x, y) = 1 - p(y | x), the "least ambiguous set-valued classifier" score. Of the usual
//! scores it gives the smallest mean set size at a given coverage (Sadinle et al.); adaptive
//! scores (APS) buy sets that grow with difficulty at the price of larger sets overall.
//!
//! Calibration keeps each class's scores, sorted, so any level can be served later:
//! * **class-conditional** (Mondrian): class y is in the set when s(x, y) <= q_y, q_y the
//!   ceil((n_y + 1)(1 - alpha))-th smallest of the n_y scores of class y. Then
//!   P(y in set | Y = y) >= 1 - alpha for every class y. Because the score uses the balanced
//!   probabilities, which do not depend on the class mix, this holds under any label shift.
//! * **marginal**: one threshold from all scores pooled, P(Y in set) >= 1 - alpha on data mixed
//!   as the calibration split was; a rare class can get far less.
//!
//! A level is served only when the finite-sample rank exists (k <= n); finer levels are refused
//! rather than answered with the trivial set of every class.

use ndarray::{ArrayView2, Axis};

/// Which guarantee a prediction set carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetKind {
    /// One threshold for all classes: coverage on average over the calibration mix.
    Marginal,
    /// One threshold per class: coverage for every class.
    Class,
}

impl SetKind {
    pub const ALL: [SetKind; 2] = [SetKind::Marginal, SetKind::Class];

    pub fn as_str(self) -> &'static str {
        match self {
            SetKind::Marginal => "marginal",
            SetKind::Class => "class",
        }
    }
}

impl std::str::FromStr for SetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "marginal" => Ok(SetKind::Marginal),
            "class" => Ok(SetKind::Class),
            other => Err(format!(
                "unknown set kind {other:?}; valid kinds are class (class-conditional) and marginal"
            )),
        }
    }
}

/// Why a level cannot be served.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConformalError {
    #[error("coverage {0} is not a level: it must be strictly between 0 and 1")]
    OutOfRange(f64),
    #[error("coverage {coverage} needs at least {needed} calibration scores {what}, which has {have}; use a coverage of at most {max_supported}")]
    TooFine {
        coverage: f64,
        needed: usize,
        have: usize,
        what: String,
        max_supported: f64,
    },
}

/// The finite-sample rank k = ceil((n + 1) * coverage) (1-based), or `None` when k > n. The small
/// epsilon keeps levels such as 0.9 with n = 9 (exactly 9 in real numbers) from rounding up.
pub fn finite_sample_rank(n: usize, coverage: f64) -> Option<usize> {
    let k = ((n as f64 + 1.0) * coverage - 1e-9).ceil().max(1.0) as usize;
    (k <= n).then_some(k)
}

/// The smallest n for which `coverage` has a finite-sample rank.
pub fn scores_needed(coverage: f64) -> usize {
    (1..)
        .find(|&n| finite_sample_rank(n, coverage).is_some())
        .expect("every level in (0, 1) is reachable")
}

/// The highest level n scores support: n / (n + 1).
pub fn max_supported(n: usize) -> f64 {
    n as f64 / (n as f64 + 1.0)
}

/// The nonconformity score of label y for one row of balanced probabilities.
pub fn score(p_balanced: &[f64], y: usize) -> f64 {
    1.0 - p_balanced[y]
}

/// Calibration scores of one rule: per class, ascending.
#[derive(Clone, Debug, PartialEq)]
pub struct ConformalScores {
    per_class: Vec<Vec<f64>>,
    pooled: Vec<f64>,
}

impl ConformalScores {
    /// From stored per-class scores; each list must be finite, in [0, 1] and ascending.
    pub fn new(per_class: Vec<Vec<f64>>) -> Result<Self, String> {
        for (y, scores) in per_class.iter().enumerate() {
            if let Some(bad) = scores.iter().find(|s| !(0.0..=1.0).contains(*s)) {
                return Err(format!("class {y} has score {bad}, outside [0, 1]"));
            }
            if scores.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!(
                    "the scores of class {y} are not in ascending order"
                ));
            }
        }
        let mut pooled: Vec<f64> = per_class.iter().flatten().copied().collect();
        pooled.sort_by(f64::total_cmp);
        Ok(ConformalScores { per_class, pooled })
    }

    /// Scores 1 - p_y of labelled rows of balanced probabilities (N x C).
    pub fn calibrate(p_balanced: ArrayView2<f64>, labels: &[usize]) -> Self {
        assert_eq!(p_balanced.nrows(), labels.len(), "one label per row");
        let mut per_class = vec![Vec::new(); p_balanced.ncols()];
        for (row, &y) in p_balanced.axis_iter(Axis(0)).zip(labels) {
            per_class[y].push(1.0 - row[y]);
        }
        for scores in &mut per_class {
            scores.sort_by(f64::total_cmp);
        }
        Self::new(per_class).expect("probabilities are in [0, 1]")
    }

    pub fn per_class(&self) -> &[Vec<f64>] {
        &self.per_class
    }

    pub fn num_classes(&self) -> usize {
        self.per_class.len()
    }

    /// Per-class score thresholds for a level: class y is in the set when its score is at
    /// most `thresholds[y]`.
    pub fn thresholds(
        &self,
        kind: SetKind,
        coverage: f64,
        labels: &[String],
    ) -> Result<Vec<f64>, ConformalError> {
        if !(coverage > 0.0 && coverage < 1.0) {
            return Err(ConformalError::OutOfRange(coverage));
        }
        let quantile = |sorted: &[f64], what: String| {
            finite_sample_rank(sorted.len(), coverage)
                .map(|k| sorted[k - 1])
                .ok_or_else(|| ConformalError::TooFine {
                    coverage,
                    needed: scores_needed(coverage),
                    have: sorted.len(),
                    what,
                    max_supported: max_supported(sorted.len()),
                })
        };
        match kind {
            SetKind::Marginal => {
                let q = quantile(&self.pooled, "in all".into())?;
                Ok(vec![q; self.per_class.len()])
            }
            SetKind::Class => {
                // Name the least calibrated class, the one that limits the level.
                let (fewest, scores) = self
                    .per_class
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.len())
                    .expect("at least one class");
                let name = labels.get(fewest).map_or("?", String::as_str);
                quantile(scores, format!("per class (class {name:?})"))?;
                Ok(self
                    .per_class
                    .iter()
                    .map(|s| s[finite_sample_rank(s.len(), coverage).expect("checked") - 1])
                    .collect())
            }
        }
    }
}

/// The classes of one row whose score is within their threshold, most probable first.
pub fn prediction_set(p_balanced: &[f64], thresholds: &[f64]) -> Vec<usize> {
    let mut set: Vec<usize> = (0..p_balanced.len())
        .filter(|&y| score(p_balanced, y) <= thresholds[y])
        .collect();
    set.sort_by(|&a, &b| p_balanced[b].total_cmp(&p_balanced[a]).then(a.cmp(&b)));
    set
}

/// Coverage and size of prediction sets on labelled rows.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SetEvaluation {
    pub n: usize,
    /// Share of rows whose label is in their set.
    pub coverage: f64,
    /// Per class: share of its rows whose label is in the set (NaN without rows).
    pub class_coverage: Vec<f64>,
    /// Mean set size overall and per class of the true label.
    pub mean_size: f64,
    pub class_mean_size: Vec<f64>,
    /// Share of empty sets.
    pub empty: f64,
}

/// Builds every row's set and grades it against the labels.
pub fn evaluate_sets(
    p_balanced: ArrayView2<f64>,
    labels: &[usize],
    thresholds: &[f64],
) -> SetEvaluation {
    let c = p_balanced.ncols();
    let (mut hit, mut size, mut rows) = (vec![0usize; c], vec![0usize; c], vec![0usize; c]);
    let mut empty = 0usize;
    for (row, &y) in p_balanced.axis_iter(Axis(0)).zip(labels) {
        let set = prediction_set(row.as_slice().expect("standard layout"), thresholds);
        rows[y] += 1;
        size[y] += set.len();
        hit[y] += usize::from(set.contains(&y));
        empty += usize::from(set.is_empty());
    }
    let n = labels.len();
    let ratio = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    SetEvaluation {
        n,
        coverage: ratio(hit.iter().sum(), n),
        class_coverage: hit.iter().zip(&rows).map(|(&h, &r)| ratio(h, r)).collect(),
        mean_size: ratio(size.iter().sum(), n),
        class_mean_size: size.iter().zip(&rows).map(|(&s, &r)| ratio(s, r)).collect(),
        empty: ratio(empty, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn finite_sample_rank_matches_the_formula() {
        // ceil(101 * 0.9) = 91; ceil(10 * 0.9) = 9 exactly; n = 8 cannot give 0.9.
        assert_eq!(finite_sample_rank(100, 0.9), Some(91));
        assert_eq!(finite_sample_rank(9, 0.9), Some(9));
        assert_eq!(finite_sample_rank(8, 0.9), None);
        assert_eq!(scores_needed(0.9), 9);
        assert_eq!(scores_needed(0.95), 19);
        assert_eq!(scores_needed(0.8), 4);
    }

    #[test]
    fn class_thresholds_are_per_class_quantiles() {
        let scores = ConformalScores::new(vec![
            (1..=9).map(|i| i as f64 / 10.0).collect(),
            vec![0.05; 19],
        ])
        .unwrap();
        let t = scores.thresholds(SetKind::Class, 0.9, &labels(2)).unwrap();
        assert_eq!(t, vec![0.9, 0.05]);
        // The pooled 28 scores: k = ceil(29 * 0.9) = 27 -> the 27th smallest (the 8th of class 0).
        let m = scores
            .thresholds(SetKind::Marginal, 0.9, &labels(2))
            .unwrap();
        assert_eq!(m, vec![0.8, 0.8]);
    }

    #[test]
    fn too_fine_and_out_of_range_levels_are_refused() {
        let scores = ConformalScores::new(vec![vec![0.1; 9], vec![0.1; 100]]).unwrap();
        let err = scores
            .thresholds(SetKind::Class, 0.95, &labels(2))
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConformalError::TooFine {
                    needed: 19,
                    have: 9,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("\"c0\""), "{err}");
        assert!(scores
            .thresholds(SetKind::Marginal, 0.95, &labels(2))
            .is_ok());
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(matches!(
                scores.thresholds(SetKind::Marginal, bad, &labels(2)),
                Err(ConformalError::OutOfRange(_))
            ));
        }
    }

    #[test]
    fn unsorted_or_out_of_range_scores_are_refused() {
        assert!(ConformalScores::new(vec![vec![0.2, 0.1]]).is_err());
        assert!(ConformalScores::new(vec![vec![1.5]]).is_err());
        assert!(ConformalScores::new(vec![vec![f64::NAN]]).is_err());
    }

    #[test]
    fn sets_hold_the_classes_within_their_threshold() {
        let p = [0.6, 0.3, 0.1];
        assert_eq!(prediction_set(&p, &[0.5, 0.5, 0.5]), vec![0]);
        assert_eq!(prediction_set(&p, &[0.5, 0.7, 0.95]), vec![0, 1, 2]);
        assert_eq!(prediction_set(&p, &[0.1, 0.1, 0.1]), Vec::<usize>::new());
    }

    #[test]
    fn calibration_then_evaluation_covers_the_calibration_set() {
        // On its own calibration set a class-conditional set at level 1 - alpha covers at
        // least ceil((n+1)(1-alpha)) / n of each class, by construction.
        let p = array![
            [0.9, 0.1],
            [0.6, 0.4],
            [0.7, 0.3],
            [0.2, 0.8],
            [0.45, 0.55],
            [0.3, 0.7]
        ];
        let y = [0, 0, 0, 1, 1, 1];
        let scores = ConformalScores::calibrate(p.view(), &y);
        assert_eq!(scores.per_class()[0].len(), 3);
        let t = scores.thresholds(SetKind::Class, 0.7, &labels(2)).unwrap();
        let e = evaluate_sets(p.view(), &y, &t);
        assert!(e.class_coverage.iter().all(|&c| c >= 0.66), "{e:?}");
        assert_eq!(e.n, 6);
    }
}
