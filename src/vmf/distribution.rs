//! The von Mises-Fisher distribution on the unit sphere S^{p-1}: its normaliser, mean resultant
//! length, concentration estimates, and the running class means ProCo keeps during training.

use super::bessel::{log_bessel_ratio, log_iv_minus_nu_log_x};

/// `(p/2) ln(2 pi)`.
fn half_p_log_two_pi(p: usize) -> f64 {
    0.5 * p as f64 * std::f64::consts::TAU.ln()
}

/// `ln I_nu(kappa) - nu ln kappa` with nu = p/2 - 1: ProCo's `logc` (the *inverse* normaliser up to
/// `(p/2) ln 2 pi`). Shared by [`log_cp`] and the ProCo logit so both use the cancellation-free form.
pub(crate) fn log_inv_normaliser(p: usize, kappa: f64) -> f64 {
    log_iv_minus_nu_log_x(0.5 * p as f64 - 1.0, kappa)
}

/// vMF log normaliser `log C_p(kappa) = nu ln kappa - (p/2) ln(2 pi) - ln I_nu(kappa)`, nu = p/2 - 1,
/// so that the density is `C_p(kappa) exp(kappa mu.z)`. Requires p >= 2 and kappa >= 0
/// (`kappa = 0` gives the uniform density's `-ln |S^{p-1}|`).
pub fn log_cp(p: usize, kappa: f64) -> f64 {
    -log_inv_normaliser(p, kappa) - half_p_log_two_pi(p)
}

/// Mean resultant length `A_p(kappa) = I_{p/2}(kappa) / I_{p/2-1}(kappa)` = E[mu.z] under vMF(mu, kappa).
pub fn mean_resultant_ratio(p: usize, kappa: f64) -> f64 {
    log_bessel_ratio(0.5 * p as f64 - 1.0, kappa).exp()
}

/// The largest concentration ProCo allows (`update_kappa` clamps to it).
pub const KAPPA_MAX: f64 = 1e5;

/// ProCo's concentration formula `kappa = p R / (1 - R^2)` (proco.py `update_kappa`), reproduced
/// exactly: values above 1e5, negative values (R > 1) and NaN become 1e5. It is not the MLE: it is
/// larger than Banerjee's estimate by p / (p - R^2), see [`kappa_mle`].
pub fn kappa_official(p: usize, r: f64) -> f64 {
    let k = p as f64 * r / (1.0 - r * r);
    if (0.0..=KAPPA_MAX).contains(&k) {
        k
    } else {
        KAPPA_MAX
    }
}

/// Maximum-likelihood concentration: solves `A_p(kappa) = r` for r in (0, 1).
///
/// Banerjee et al. (2005) start `r (p - r^2) / (1 - r^2)` (1 - r^2 formed as (1-r)(1+r) so it keeps
/// its digits near r = 1), then Newton steps (Sra 2012) with `A'(kappa) = 1 - A^2 - (p-1) A / kappa`.
/// Two steps reach ~1e-12 relative error for p >= 128 (the Banerjee start alone is off by up to
/// 1e-3); at small p the start is worse (2e-9 after two steps at p = 16), so Newton continues until
/// the step is below a few ulps, at most 8 steps.
pub fn kappa_mle(p: usize, r: f64) -> f64 {
    let pf = p as f64;
    let mut k = r * (pf - r * r) / ((1.0 - r) * (1.0 + r));
    for _ in 0..8 {
        let a = mean_resultant_ratio(p, k);
        let step = (a - r) / (1.0 - a * a - (pf - 1.0) / k * a);
        k -= step;
        if step.is_nan() || step.abs() <= 4.0 * f64::EPSILON * k {
            break;
        }
    }
    k
}

/// Per-class running sums of unit features, from which mean directions and resultant lengths follow.
///
/// ProCo's `EstimatorCV` keeps an exact running mean with weights n_batch / (n_batch + n_seen); the
/// sum divided by the count is the same mean without the rounding of the reweighting, and two
/// estimators merge by adding their sums (e.g. one per worker).
#[derive(Clone, Debug)]
pub struct VmfEstimator {
    dim: usize,
    sums: Vec<Vec<f64>>,
    counts: Vec<u64>,
}

impl VmfEstimator {
    /// An empty estimator for `num_classes` classes of `dim`-dimensional features.
    pub fn new(num_classes: usize, dim: usize) -> Self {
        Self {
            dim,
            sums: vec![vec![0.0; dim]; num_classes],
            counts: vec![0; num_classes],
        }
    }

    /// Adds one feature of class `label`. Panics if `label` or the feature length is out of range.
    pub fn add(&mut self, label: usize, feature: &[f32]) {
        assert_eq!(feature.len(), self.dim, "feature length");
        for (s, &v) in self.sums[label].iter_mut().zip(feature) {
            *s += f64::from(v);
        }
        self.counts[label] += 1;
    }

    /// Adds everything `other` has seen. Panics if the shapes differ.
    pub fn merge(&mut self, other: &VmfEstimator) {
        assert_eq!(
            (self.dim, self.counts.len()),
            (other.dim, other.counts.len()),
            "estimator shapes"
        );
        for (mine, theirs) in self.sums.iter_mut().zip(&other.sums) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Number of features seen for class `y`.
    pub fn count(&self, y: usize) -> u64 {
        self.counts[y]
    }

    /// Mean resultant length R_y = |mean of class y's features| (0 for an unseen class).
    pub fn resultant_length(&self, y: usize) -> f64 {
        if self.counts[y] == 0 {
            return 0.0;
        }
        norm(&self.sums[y]) / self.counts[y] as f64
    }

    /// Unit mean direction mu_y, or `None` for an unseen class or a zero mean.
    pub fn mean_direction(&self, y: usize) -> Option<Vec<f64>> {
        let n = norm(&self.sums[y]);
        if self.counts[y] == 0 || n == 0.0 {
            return None;
        }
        Some(self.sums[y].iter().map(|v| v / n).collect())
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimator_mean_and_merge() {
        let mut a = VmfEstimator::new(2, 2);
        a.add(0, &[1.0, 0.0]);
        let mut b = VmfEstimator::new(2, 2);
        b.add(0, &[0.0, 1.0]);
        a.merge(&b);
        assert_eq!(a.count(0), 2);
        assert_eq!(a.count(1), 0);
        assert!((a.resultant_length(0) - 0.5f64.sqrt()).abs() < 1e-15);
        let mu = a.mean_direction(0).unwrap();
        assert!((mu[0] - 0.5f64.sqrt()).abs() < 1e-15 && (mu[1] - 0.5f64.sqrt()).abs() < 1e-15);
        assert!(a.mean_direction(1).is_none());
    }

    #[test]
    fn official_kappa_clamps_like_proco() {
        assert!((kappa_official(128, 0.9) - 128.0 * 0.9 / 0.19).abs() < 1e-9);
        assert_eq!(kappa_official(128, 0.99999), KAPPA_MAX);
        assert_eq!(kappa_official(128, 1.0), KAPPA_MAX);
        assert_eq!(kappa_official(128, 1.5), KAPPA_MAX);
        assert_eq!(kappa_official(128, f64::NAN), KAPPA_MAX);
    }
}
