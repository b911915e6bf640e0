//! Temperature scaling (Guo et al. 2017) for balanced logits under a known label distribution.

use ndarray::{ArrayView2, Axis};

/// Smallest and largest inverse temperature searched: T in [1e-4, 1e8]. The vMF log-likelihood
/// spans about +-kappa (1e2..1e5 nats), so its T is far above 1.
const BETA_MIN: f64 = 1e-8;
const BETA_MAX: f64 = 1e4;

/// Mean NLL of `softmax(beta g + log_q)` and its first two derivatives in beta.
/// d/dbeta = mean_i (E_p[g_i] - g_iy), d2 = mean_i Var_p[g_i] >= 0, so the NLL is convex in beta = 1/T.
fn nll_and_derivatives(
    g: ArrayView2<f64>,
    labels: &[usize],
    log_q: &[f64],
    beta: f64,
) -> (f64, f64, f64) {
    let (mut f, mut d1, mut d2) = (0.0, 0.0, 0.0);
    let mut buf = vec![0.0; g.ncols()];
    for (row, &y) in g.axis_iter(Axis(0)).zip(labels) {
        for ((b, &v), &lq) in buf.iter_mut().zip(row.iter()).zip(log_q) {
            *b = beta * v + lq;
        }
        let max = buf.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut z, mut m1) = (0.0, 0.0);
        for (b, &v) in buf.iter_mut().zip(row.iter()) {
            *b = (*b - max).exp();
            z += *b;
            m1 += *b * v;
        }
        let mean = m1 / z;
        let var = buf
            .iter()
            .zip(row.iter())
            .map(|(e, &v)| e * (v - mean) * (v - mean))
            .sum::<f64>()
            / z;
        f += max + z.ln() - beta * row[y] - log_q[y];
        d1 += mean - row[y];
        d2 += var;
    }
    let n = labels.len() as f64;
    (f / n, d1 / n, d2 / n)
}

/// The temperature T minimising the mean NLL of `softmax(g / T + log_q)` on labelled rows of
/// balanced logits `g` (N x C); `log_q` is the log label distribution of that data (for a held-out
/// split of the training distribution, ln pi).
///
/// The NLL is convex in beta = 1/T, so this runs Newton on beta inside a bracket that the sign of the
/// derivative keeps shrinking, falling back to a geometric bisection whenever a Newton step would leave
/// it. Returns a T in [1e-4, 1e8]; the bound is returned when the optimum lies beyond it (e.g. perfectly
/// separated data). Returns 1.0 for empty input.
pub fn fit_temperature(g: ArrayView2<f64>, labels: &[usize], log_q: &[f64]) -> f64 {
    assert_eq!(g.nrows(), labels.len(), "one label per row");
    assert_eq!(
        g.ncols(),
        log_q.len(),
        "log_q length must equal the number of classes"
    );
    if labels.is_empty() {
        return 1.0;
    }
    let deriv = |beta: f64| nll_and_derivatives(g, labels, log_q, beta);
    let (mut lo, mut hi) = (BETA_MIN, BETA_MAX);
    if deriv(lo).1 >= 0.0 {
        return 1.0 / lo;
    }
    if deriv(hi).1 <= 0.0 {
        return 1.0 / hi;
    }
    let mut beta = 1.0;
    for _ in 0..200 {
        let (_, d1, d2) = deriv(beta);
        if d1 > 0.0 {
            hi = beta;
        } else {
            lo = beta;
        }
        let newton = beta - d1 / d2;
        let next = if d2 > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            (lo * hi).sqrt()
        };
        let done = (next - beta).abs() <= 1e-12 * beta || hi / lo - 1.0 <= 1e-12;
        beta = next;
        if done {
            break;
        }
    }
    1.0 / beta
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Rows drawn from softmax(g / T0) should give back roughly T0 (here: labels chosen so the
    /// empirical frequencies equal the model's probabilities, which makes T0 the exact optimum).
    #[test]
    fn recovers_the_temperature_of_exactly_calibrated_data() {
        let t0 = 3.0;
        // Two rows, each repeated with label counts proportional to softmax(g / t0).
        let base: [[f64; 3]; 2] = [[2.0, 0.0, -1.0], [0.5, 1.5, -0.5]];
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for r in base {
            let e: Vec<f64> = r.iter().map(|v| (v / t0).exp()).collect();
            let s: f64 = e.iter().sum();
            for (k, ek) in e.iter().enumerate() {
                let reps = (ek / s * 1e4).round() as usize;
                for _ in 0..reps {
                    rows.extend_from_slice(&r);
                    labels.push(k);
                }
            }
        }
        let g = Array2::from_shape_vec((labels.len(), 3), rows).unwrap();
        let t = fit_temperature(g.view(), &labels, &[0.0; 3]);
        assert!((t - t0).abs() < 1e-3, "{t}");
        // The fitted T is a stationary point of the NLL.
        let (_, d1, _) = nll_and_derivatives(g.view(), &labels, &[0.0; 3], 1.0 / t);
        assert!(d1.abs() < 1e-10, "{d1}");
    }
}
