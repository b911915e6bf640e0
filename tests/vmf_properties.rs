//! Identities the vMF math must satisfy everywhere, checked on dense deterministic grids (including
//! the dispatch boundaries of `log_iv`: nu = 20, x = 12) rather than at golden points only.
//! Checks are written `!(err <= tol)` on purpose, so that a NaN fails them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod report;
mod synthetic;
use ndarray::Array2;
use proco_serve::vmf::{
    em_label_shift, fit_temperature, kappa_mle, log_bessel_ratio, log_cp, log_iv,
    mean_resultant_ratio, posterior, ClassModel, Rule,
};
use synthetic::{random_model, Lcg};

/// Orders crossing every branch: power series / ratio recurrence below 20, Debye from 20 on.
const NUS: [f64; 14] = [
    1.0, 1.5, 2.0, 7.5, 18.5, 19.0, 19.5, 20.0, 20.5, 21.0, 63.0, 63.5, 255.0, 1022.0,
];

/// 1e-6 .. 1e6, 10 points a decade, plus the series/recurrence switch at x = 12.
fn xs() -> Vec<f64> {
    let mut v: Vec<f64> = (0..=120)
        .map(|i| 10f64.powf(-6.0 + i as f64 / 10.0))
        .collect();
    v.extend([11.999999, 12.0, 12.000001]);
    v
}

fn ln_add_exp(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// I_{nu-1}(x) = (2 nu / x) I_nu(x) + I_{nu+1}(x), in logs. All three terms are positive, so the
/// identity is well conditioned in this form; each side may carry a few ulps of max(1, |ln I|).
#[test]
fn three_term_recurrence_holds_in_log_form() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for &nu in &NUS {
        for x in xs() {
            let (lm, l0, lp) = (log_iv(nu - 1.0, x), log_iv(nu, x), log_iv(nu + 1.0, x));
            let rhs = ln_add_exp((2.0 * nu / x).ln() + l0, lp);
            let scale = lm.abs().max(l0.abs()).max(lp.abs()).max(1.0);
            let err = (lm - rhs).abs() / scale;
            checked += 1;
            if !(err <= 2e-14) {
                failures.push(format!(
                    "nu={nu} x={x:e}: ln I_(nu-1)={lm:e}, rhs={rhs:e}, err {err:.2e}"
                ));
            }
        }
    }
    report::assert_none(
        &format!("three_term_recurrence_holds_in_log_form ({checked} checked)"),
        &failures,
    );
}

/// ln I_nu(x) is increasing in x and decreasing in nu; A_p(kappa) is increasing in kappa, in (0, 1).
#[test]
fn monotonicity() {
    let mut failures = Vec::new();
    for &nu in NUS.iter().chain(&[0.0, 0.5]) {
        let mut prev = f64::NEG_INFINITY;
        let mut prev_ratio = 0.0;
        // Steps of 0.1% in x: the increase of ln I is at least ~1e-3 * x * A, far above rounding.
        let mut x = 1e-6;
        while x < 1e6 {
            let v = log_iv(nu, x);
            if !(v > prev) {
                failures.push(format!(
                    "ln I_{nu}({x:e}) = {v:e} is not above the previous {prev:e}"
                ));
            }
            if nu > 0.0 && !(log_iv(nu, x) < log_iv(nu - 0.5, x)) {
                failures.push(format!(
                    "ln I_nu({x:e}) does not decrease from nu={} to {nu}",
                    nu - 0.5
                ));
            }
            let a = log_bessel_ratio(nu, x).exp();
            if !(a >= prev_ratio && a < 1.0) {
                failures.push(format!(
                    "I_(nu+1)/I_nu at nu={nu} x={x:e} = {a:e}, previous {prev_ratio:e}"
                ));
            }
            prev = v;
            prev_ratio = a;
            x *= 1.001;
        }
    }
    report::assert_none("monotonicity", &failures);
}

/// kappa_mle inverts A_p: A_p(kappa_mle(p, R)) = R.
#[test]
fn kappa_mle_round_trip() {
    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    for p in [16usize, 64, 128, 256, 512, 1024, 2048] {
        for i in 1..=199 {
            let r = i as f64 / 200.0; // 0.005 .. 0.995
            let k = kappa_mle(p, r);
            let back = mean_resultant_ratio(p, k);
            let rel = (back - r).abs() / r;
            worst = worst.max(rel);
            if !(rel <= 1e-12) {
                failures.push(format!(
                    "p={p} R={r}: kappa={k:e}, A_p(kappa)={back:.17}, rel err {rel:.2e}"
                ));
            }
        }
    }
    eprintln!("kappa_mle round trip: worst relative error {worst:.2e}");
    report::assert_none("kappa_mle_round_trip", &failures);
}

/// log C_p integrates the density to 1: for p = 3, C_3(k) = k / (4 pi sinh k) in closed form.
#[test]
fn log_cp_closed_form_for_p3() {
    for &k in &[1e-6f64, 1e-3, 0.5, 3.0, 40.0, 700.0, 1e4] {
        // ln(k / (4 pi sinh k)) with sinh written stably for large k.
        let ln_sinh = k + (-(-2.0 * k).exp_m1()).ln() - std::f64::consts::LN_2;
        let want = k.ln() - (4.0 * std::f64::consts::PI).ln() - ln_sinh;
        let got = log_cp(3, k);
        assert!(
            (got - want).abs() <= 1e-14 * want.abs().max(1.0),
            "kappa={k}: {got} vs {want}"
        );
    }
}

/// The batched rules equal a per-image, per-class evaluation of the formulas.
#[test]
fn batched_rules_equal_the_per_class_formulas() {
    let mut rng = Lcg(7);
    let (c, p, n) = (12, 32, 9);
    let model = random_model(&mut rng, c, p);
    let z: Vec<f64> = (0..n).flat_map(|_| rng.unit(p)).collect();
    let z = Array2::from_shape_vec((n, p), z).unwrap();
    let f = Array2::from_shape_fn((n, c), |(i, y)| (i as f64 - y as f64) * 0.7);
    let nu = p as f64 / 2.0 - 1.0;
    let h = |x: f64| log_iv(nu, x) - nu * x.ln();
    for rule in Rule::ALL {
        let g = model
            .balanced_logits_f64(rule, z.view(), Some(f.view()))
            .unwrap();
        for i in 0..n {
            for y in 0..c {
                let k = model.kappa()[y];
                let cos: f64 = model
                    .mu()
                    .row(y)
                    .iter()
                    .zip(z.row(i))
                    .map(|(a, b)| a * b)
                    .sum();
                let kt = (k * k + 2.0 * k * cos / 0.1 + 100.0).sqrt();
                let proco = h(kt) - h(k);
                let want = match rule {
                    Rule::Linear => f[[i, y]],
                    Rule::Proco => proco,
                    Rule::Vmf => log_cp(p, k) + k * cos,
                    Rule::Ensemble => f[[i, y]] + proco,
                };
                let tol = 1e-12 * want.abs().max(1.0) + 1e-15 * kt.max(k);
                assert!(
                    (g[[i, y]] - want).abs() <= tol,
                    "{rule} [{i},{y}]: {} vs {want}",
                    g[[i, y]]
                );
            }
        }
    }
    // One image takes the matrix-vector product, batches of up to 8 mu z^T, larger ones z mu^T:
    // all three must agree row by row (here: 9 rows, 1 row, and rows 0..3).
    for rule in Rule::ALL {
        let whole = model
            .balanced_logits_f64(rule, z.view(), Some(f.view()))
            .unwrap();
        for i in 0..n {
            let one = model
                .balanced_logits_f64(
                    rule,
                    z.slice(ndarray::s![i..i + 1, ..]),
                    Some(f.slice(ndarray::s![i..i + 1, ..])),
                )
                .unwrap();
            for y in 0..c {
                let (a, b) = (whole[[i, y]], one[[0, y]]);
                assert!(
                    (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                    "{rule} [{i},{y}]: batch {a} vs single {b}"
                );
            }
        }
        let three = model
            .balanced_logits_f64(
                rule,
                z.slice(ndarray::s![0..3, ..]),
                Some(f.slice(ndarray::s![0..3, ..])),
            )
            .unwrap();
        for ((i, y), &b) in three.indexed_iter() {
            let a = whole[[i, y]];
            assert!(
                (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                "{rule} [{i},{y}]: batch of 9 {a} vs of 3 {b}"
            );
        }
    }
    // Linear and ensemble need the linear head; a wrong shape is an error, not a panic.
    assert!(model
        .balanced_logits_f64(Rule::Ensemble, z.view(), None)
        .is_err());
    assert!(model.balanced_logits_f64(Rule::Vmf, z.view(), None).is_ok());
    let wrong = Array2::<f64>::zeros((n, c + 1));
    assert!(model
        .balanced_logits_f64(Rule::Linear, z.view(), Some(wrong.view()))
        .is_err());
}

/// ProCo logit where z/tau cancels kappa mu exactly: kappa-tilde = 0, taken as the vector norm.
#[test]
fn proco_logit_at_kappa_tilde_zero() {
    let p = 8;
    let mu = vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let model = ClassModel::new(
        vec!["a".into()],
        p,
        0.1,
        1.0,
        vec![mu],
        vec![10.0],
        vec![1.0],
    )
    .unwrap();
    let z = Array2::from_shape_vec((1, p), vec![-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
    let g = model
        .balanced_logits_f64(Rule::Proco, z.view(), None)
        .unwrap()[[0, 0]];
    let nu = p as f64 / 2.0 - 1.0; // 3: ln I_3(x) - 3 ln x -> -ln(2^3 3!) as x -> 0
    let want = -(48.0f64).ln() - (log_iv(nu, 10.0) - nu * 10f64.ln());
    assert!((g - want).abs() <= 1e-13, "{g} vs {want}");
}

/// Temperature fitting recovers a known T, and EM recovers a known label shift, on synthetic data
/// drawn from the model itself.
#[test]
fn temperature_and_em_recover_known_values() {
    let mut rng = Lcg(11);
    let (c, n) = (4, 20_000);
    // y ~ q, then x ~ N(a e_y, sigma^2 I) in R^C. With g = x, ln p(x | k) = a x_k / sigma^2 + const,
    // so softmax(g / T + ln q) with T = sigma^2 / a is the exact posterior.
    let (a, sigma) = (2.0, 1.5);
    let t_true = sigma * sigma / a;
    let q_true: [f64; 4] = [0.55, 0.25, 0.15, 0.05];
    let mut g = Array2::zeros((n, c));
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let mut u = rng.uniform();
        let mut label = c - 1;
        for (y, qy) in q_true.iter().enumerate() {
            if u < *qy {
                label = y;
                break;
            }
            u -= qy;
        }
        for y in 0..c {
            g[[i, y]] = a * f64::from(u8::from(y == label)) + sigma * rng.normal();
        }
        labels.push(label);
    }
    let log_q: Vec<f64> = q_true.iter().map(|v: &f64| v.ln()).collect();
    let t = fit_temperature(g.view(), &labels, &log_q);
    assert!(
        (t - t_true).abs() < 0.03 * t_true,
        "fitted T {t}, true {t_true}"
    );
    let calibrated = g.mapv(|v| v / t_true);
    let (q, iters) = em_label_shift(calibrated.view(), &[0.25; 4], 1000, 1e-10);
    for (a, b) in q.iter().zip(q_true) {
        assert!(
            (a - b).abs() < 0.02,
            "EM q {q:?} vs {q_true:?} after {iters} iterations"
        );
    }
    let post = posterior(calibrated.view(), 1.0, &log_q);
    for row in post.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-12);
    }
}
