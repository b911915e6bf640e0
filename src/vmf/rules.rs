//! The four inference rules and the class model they read.
//!
//! Every rule produces *balanced* logits g (prior-free scores, N x C); the posterior for a target
//! prior q is then `softmax(g / T + ln q)` (see `posterior`). With p = dim, nu = p/2 - 1:
//!
//! * `linear`:   g = f, the encoder's linear head (trained with logit adjustment, hence balanced).
//! * `proco`:    g_y = h(kt_y) - h(k_y), h(x) = ln I_nu(x) - nu ln x,
//!   kt_y = |k_y mu_y + z / tau| = sqrt(k_y^2 + 2 k_y (mu_y.z) / tau + 1/tau^2):
//!   ln E_{z' ~ vMF(mu_y, k_y)} exp(z.z'/tau), the quantity ProCo trains with.
//! * `vmf`:      g_y = log C_p(k_y) + k_y mu_y.z, the class-conditional log-likelihood ln p(z|y).
//!   It is prior-free already: adding ln q gives the posterior under q, exactly as for the
//!   logit-adjusted rules (subtracting ln pi here would count the training prior twice).
//! * `ensemble`: g = f + alpha * proco (mirrors ProCo's logged training accuracy).
//!
//! The class-dependent constants (log C_p(k_y), h(k_y)) are computed once in
//! [`ClassModel::new`]; a batch then costs one N x p by p x C matrix product plus O(N C) scalar work.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, ArrayView2, Axis};

use super::distribution::{log_cp, log_inv_normaliser};

/// An inference rule; see the module documentation for the formulas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Linear,
    Proco,
    Vmf,
    Ensemble,
}

impl Rule {
    /// All rules, in the order reports list them.
    pub const ALL: [Rule; 4] = [Rule::Linear, Rule::Proco, Rule::Vmf, Rule::Ensemble];

    /// The lowercase name used in JSON, URLs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Linear => "linear",
            Rule::Proco => "proco",
            Rule::Vmf => "vmf",
            Rule::Ensemble => "ensemble",
        }
    }

    /// Whether the rule reads the encoder's linear-head logits (not just the unit feature z).
    pub fn needs_linear_head(self) -> bool {
        matches!(self, Rule::Linear | Rule::Ensemble)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Rule {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rule::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ModelError::UnknownRule(s.to_string()))
    }
}

/// Why a class model could not be built or a batch could not be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown rule {0:?}; valid rules are linear, proco, vmf, ensemble")]
    UnknownRule(String),
    #[error("a class model needs at least one class and a feature dimension >= 2 (got {classes} classes, dim {dim})")]
    Empty { classes: usize, dim: usize },
    #[error("{what} has length {got}, expected {expected}")]
    Length {
        what: String,
        expected: usize,
        got: usize,
    },
    #[error("mean direction of class {class} has norm {norm}, expected 1 (within 1e-6)")]
    NotUnit { class: usize, norm: f64 },
    #[error("kappa of class {class} is {value}; it must be > 0 and at most 1e6 (the range the Bessel functions are verified on)")]
    BadKappa { class: usize, value: f64 },
    #[error("count of class {class} is {value}; it must be finite and > 0")]
    BadCount { class: usize, value: f64 },
    #[error("{what} is {value}; it must be finite and {constraint}")]
    BadParameter {
        what: &'static str,
        value: f64,
        constraint: &'static str,
    },
    #[error("rule {0} needs the encoder's linear-head logits, which were not given")]
    MissingLinear(Rule),
    #[error("{what} has shape {got:?}, expected {expected:?}")]
    Shape {
        what: &'static str,
        expected: (usize, usize),
        got: (usize, usize),
    },
}

/// The learned vMF class distributions plus everything derived from them that inference needs.
#[derive(Clone, Debug)]
pub struct ClassModel {
    labels: Vec<String>,
    dim: usize,
    tau: f64,
    alpha: f64,
    /// Mean directions, C x p.
    mu: Array2<f64>,
    kappa: Vec<f64>,
    counts: Vec<f64>,
    /// log C_p(kappa_y).
    log_cp: Vec<f64>,
    /// h(kappa_y) = ln I_nu(kappa_y) - nu ln kappa_y.
    log_inv_norm: Vec<f64>,
    /// ln pi_y, pi_y = n_y / sum n.
    log_prior: Vec<f64>,
}

impl ClassModel {
    /// Validates and precomputes. `mu` holds one unit vector of length `dim` per class
    /// (norm within 1e-6 of 1); `kappa` in (0, 1e6]; `counts` finite and positive; `tau > 0`;
    /// `alpha` finite.
    pub fn new(
        labels: Vec<String>,
        dim: usize,
        tau: f64,
        alpha: f64,
        mu: Vec<Vec<f64>>,
        kappa: Vec<f64>,
        counts: Vec<f64>,
    ) -> Result<Self, ModelError> {
        let c = labels.len();
        if c == 0 || dim < 2 {
            return Err(ModelError::Empty { classes: c, dim });
        }
        for (what, got) in [
            ("mu", mu.len()),
            ("kappa", kappa.len()),
            ("counts", counts.len()),
        ] {
            if got != c {
                return Err(ModelError::Length {
                    what: what.to_string(),
                    expected: c,
                    got,
                });
            }
        }
        if !(tau.is_finite() && tau > 0.0) {
            return Err(ModelError::BadParameter {
                what: "tau",
                value: tau,
                constraint: "> 0",
            });
        }
        if !alpha.is_finite() {
            return Err(ModelError::BadParameter {
                what: "alpha",
                value: alpha,
                constraint: "finite",
            });
        }
        let mut flat = Vec::with_capacity(c * dim);
        for (y, row) in mu.iter().enumerate() {
            if row.len() != dim {
                return Err(ModelError::Length {
                    what: format!("mu[{y}]"),
                    expected: dim,
                    got: row.len(),
                });
            }
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm.is_nan() || (norm - 1.0).abs() > 1e-6 {
                return Err(ModelError::NotUnit { class: y, norm });
            }
            flat.extend_from_slice(row);
        }
        for (y, &k) in kappa.iter().enumerate() {
            if !(k > 0.0 && k <= 1e6) {
                return Err(ModelError::BadKappa { class: y, value: k });
            }
        }
        for (y, &n) in counts.iter().enumerate() {
            if !(n.is_finite() && n > 0.0) {
                return Err(ModelError::BadCount { class: y, value: n });
            }
        }
        let total: f64 = counts.iter().sum();
        let mu = Array2::from_shape_vec((c, dim), flat).expect("c * dim elements");
        Ok(Self {
            log_cp: kappa.iter().map(|&k| log_cp(dim, k)).collect(),
            log_inv_norm: kappa.iter().map(|&k| log_inv_normaliser(dim, k)).collect(),
            log_prior: counts.iter().map(|&n| (n / total).ln()).collect(),
            labels,
            dim,
            tau,
            alpha,
            mu,
            kappa,
            counts,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
    pub fn tau(&self) -> f64 {
        self.tau
    }
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    /// Mean directions, C x p.
    pub fn mu(&self) -> ArrayView2<'_, f64> {
        self.mu.view()
    }
    pub fn kappa(&self) -> &[f64] {
        &self.kappa
    }
    pub fn counts(&self) -> &[f64] {
        &self.counts
    }
    /// The training prior pi_y = n_y / sum n.
    pub fn train_prior(&self) -> Vec<f64> {
        let total: f64 = self.counts.iter().sum();
        self.counts.iter().map(|n| n / total).collect()
    }
    /// ln pi_y.
    pub fn log_train_prior(&self) -> &[f64] {
        &self.log_prior
    }

    /// Balanced logits g (N x C, f64) of `rule` for a batch of unit features z (N x p, the encoder's
    /// `feature` output) and, for `linear` and `ensemble`, the linear-head logits (N x C).
    ///
    /// The feature-prototype dot products come from one N x p by p x C product in f64 (ndarray's
    /// cache-blocked GEMM), not a loop over classes: at C = 8142, p = 1024 the prototype matrix is
    /// 67 MB, so it must be streamed once per batch, not once per image.
    pub fn balanced_logits(
        &self,
        rule: Rule,
        features: ArrayView2<f32>,
        linear: Option<ArrayView2<f32>>,
    ) -> Result<Array2<f64>, ModelError> {
        let linear = linear.map(|f| f.mapv(f64::from));
        self.balanced_logits_f64(
            rule,
            features.mapv(f64::from).view(),
            linear.as_ref().map(|f| f.view()),
        )
    }

    /// [`ClassModel::balanced_logits`] for f64 inputs (used by the tests against 50-digit goldens,
    /// which an f32 feature could not meet: rounding z to f32 moves kappa mu.z by ~6e-8 kappa).
    pub fn balanced_logits_f64(
        &self,
        rule: Rule,
        z: ArrayView2<f64>,
        linear: Option<ArrayView2<f64>>,
    ) -> Result<Array2<f64>, ModelError> {
        let (n, c) = (z.nrows(), self.num_classes());
        if z.ncols() != self.dim {
            return Err(ModelError::Shape {
                what: "features",
                expected: (n, self.dim),
                got: z.dim(),
            });
        }
        let linear = if rule.needs_linear_head() {
            let f = linear.ok_or(ModelError::MissingLinear(rule))?;
            if f.dim() != (n, c) {
                return Err(ModelError::Shape {
                    what: "linear logits",
                    expected: (n, c),
                    got: f.dim(),
                });
            }
            Some(f)
        } else {
            None
        };
        if rule == Rule::Linear {
            return Ok(linear.expect("checked above").to_owned());
        }
        let mut g = self.cosines(z);
        match rule {
            Rule::Vmf => {
                for mut row in g.axis_iter_mut(Axis(0)) {
                    for (y, v) in row.iter_mut().enumerate() {
                        *v = self.log_cp[y] + self.kappa[y] * *v;
                    }
                }
            }
            Rule::Proco | Rule::Ensemble => {
                let inv_tau = 1.0 / self.tau;
                for (i, mut row) in g.axis_iter_mut(Axis(0)).enumerate() {
                    for (y, v) in row.iter_mut().enumerate() {
                        let k = self.kappa[y];
                        let kt2 = k * k + 2.0 * k * *v * inv_tau + inv_tau * inv_tau;
                        let kt = if kt2 < 1e-6 * k * k {
                            // z/tau nearly cancels k mu: the expanded square has lost its digits,
                            // so take the norm of the vector itself.
                            self.mu
                                .row(y)
                                .iter()
                                .zip(z.row(i))
                                .map(|(m, zi)| (k * m + zi * inv_tau).powi(2))
                                .sum::<f64>()
                                .sqrt()
                        } else {
                            kt2.sqrt()
                        };
                        *v = log_inv_normaliser(self.dim, kt) - self.log_inv_norm[y];
                    }
                }
                if let Some(f) = linear {
                    g *= self.alpha;
                    g += &f;
                }
            }
            Rule::Linear => unreachable!("returned above"),
        }
        Ok(g)
    }
}

/// Up to this many images, [`ClassModel::cosines`] multiplies in the order mu z^T. matrixmultiply
/// packs the right-hand operand in wide panels; packing the whole C x p prototype matrix that way
/// costs more than the product itself when N is tiny (measured at C = 8142, p = 1024: 17 ms for
/// z mu^T at N = 1..8 against 10-14 ms for mu z^T, which is at the memory-bandwidth floor), while for
/// larger N the z mu^T order is faster (54 against 69 ms at N = 64). A single image goes through
/// ndarray's matrix-vector product, which needs no packing at all (27 against 68 us at C = 1000).
const SMALL_BATCH: usize = 8;

impl ClassModel {
    /// N x C matrix of mu_y.z_i: the one matrix product with the prototype matrix per batch.
    fn cosines(&self, z: ArrayView2<f64>) -> Array2<f64> {
        match z.nrows() {
            1 => self.mu.dot(&z.row(0)).insert_axis(Axis(0)),
            n if n <= SMALL_BATCH => self
                .mu
                .dot(&z.t())
                .reversed_axes()
                .as_standard_layout()
                .into_owned(),
            _ => z.dot(&self.mu.t()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_round_trip() {
        for r in Rule::ALL {
            assert_eq!(r.to_string().parse::<Rule>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        let err = "softmax".parse::<Rule>().unwrap_err().to_string();
        assert!(err.contains("linear, proco, vmf, ensemble"), "{err}");
        assert!(Rule::Ensemble.needs_linear_head() && !Rule::Proco.needs_linear_head());
    }

    #[test]
    fn validation() {
        let ok = |mu: Vec<Vec<f64>>, kappa: Vec<f64>, counts: Vec<f64>| {
            ClassModel::new(vec!["a".into(), "b".into()], 2, 0.1, 1.0, mu, kappa, counts)
        };
        let mu = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        assert!(ok(mu.clone(), vec![1.0, 2.0], vec![3.0, 1.0]).is_ok());
        assert!(matches!(
            ok(
                vec![vec![1.0, 0.1], vec![0.0, 1.0]],
                vec![1.0, 2.0],
                vec![3.0, 1.0]
            ),
            Err(ModelError::NotUnit { class: 0, .. })
        ));
        assert!(matches!(
            ok(mu.clone(), vec![1.0, 0.0], vec![3.0, 1.0]),
            Err(ModelError::BadKappa { class: 1, .. })
        ));
        assert!(matches!(
            ok(mu.clone(), vec![1.0, f64::INFINITY], vec![3.0, 1.0]),
            Err(ModelError::BadKappa { .. })
        ));
        // Finite but beyond the verified range: kappa^2 would overflow into NaN answers.
        assert!(matches!(
            ok(mu.clone(), vec![1.0, 1e200], vec![3.0, 1.0]),
            Err(ModelError::BadKappa { class: 1, .. })
        ));
        assert!(matches!(
            ok(mu.clone(), vec![1.0, 2.0], vec![3.0, 0.0]),
            Err(ModelError::BadCount { class: 1, .. })
        ));
        assert!(matches!(
            ok(mu, vec![1.0], vec![3.0, 1.0]),
            Err(ModelError::Length { .. })
        ));
    }
}
