//! The vMF math against `tests/data/golden_bessel.json`, written by `tools/golden_bessel.py`
//! (the project's reference generator: mpmath at 70 digits, checked against 50 digits).
//!
//! Tolerances are those of the numerics notes and are not to be loosened: a miss means the
//! algorithm is wrong. Every test checks every golden row and reports all failures at once.
//! Checks are written `!(err <= tol)` on purpose, so that a NaN fails them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod report;

use std::sync::OnceLock;

use ndarray::Array2;
use proco_serve::vmf::{
    self, em_label_shift, evaluate, kappa_mle, kappa_official, log_bessel_ratio, log_cp, log_iv,
    mean_resultant_ratio, posterior, ClassModel, Rule,
};
use serde_json::Value;

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden_bessel.json");
        let text = std::fs::read_to_string(path)
            .expect("tests/data/golden_bessel.json (run tools/golden_bessel.py)");
        serde_json::from_str(&text).expect("valid golden JSON")
    })
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn vec_f(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(f).collect()
}

fn matrix(v: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = v
        .as_array()
        .expect("array of rows")
        .iter()
        .map(vec_f)
        .collect();
    let cols = rows[0].len();
    Array2::from_shape_vec((rows.len(), cols), rows.concat()).expect("rectangular")
}

/// Panics listing every failure (up to 20) if there are any, or if nothing was checked.
fn report(what: &str, checked: usize, failures: Vec<String>) {
    assert!(checked > 0, "{what}: nothing checked");
    report::assert_none(&format!("{what} ({checked} checked)"), &failures);
}

#[test]
fn log_iv_matches_mpmath_on_all_949_points() {
    let points = golden()["points"].as_array().unwrap();
    assert_eq!(points.len(), 949, "the golden grid has 949 points");
    let (mut failures, mut worst) = (Vec::new(), 0.0f64);
    for p in points {
        let (nu, x, truth) = (f(&p["nu"]), f(&p["x"]), f(&p["log_iv"]));
        let got = log_iv(nu, x);
        let err = (got - truth).abs() / truth.abs().max(1.0);
        worst = worst.max(err);
        if !(err <= 1e-14) {
            failures.push(format!(
                "nu={nu} x={x:e}: got {got:e}, truth {truth:e}, err {err:.2e}"
            ));
        }
    }
    eprintln!("ln I: worst |err| / max(1, |ln I|) = {worst:.2e}");
    report("ln I_nu(x)", points.len(), failures);
}

#[test]
fn bessel_ratio_matches_mpmath_on_all_949_points() {
    let points = golden()["points"].as_array().unwrap();
    let (mut failures, mut worst) = (Vec::new(), 0.0f64);
    for p in points {
        let (nu, x, truth) = (f(&p["nu"]), f(&p["x"]), f(&p["log_ratio"]));
        let got = log_bessel_ratio(nu, x);
        let rel = (got - truth).exp_m1().abs(); // relative error of the ratio itself
        worst = worst.max(rel);
        if !(rel <= 1e-13) {
            failures.push(format!(
                "nu={nu} x={x:e}: ln ratio {got:e}, truth {truth:e}, rel err of A {rel:.2e}"
            ));
        }
    }
    eprintln!("A: worst relative error = {worst:.2e}");
    report("I_{nu+1}/I_nu", points.len(), failures);
}

#[test]
fn vmf_normaliser_and_mean_resultant_length() {
    let rows = golden()["vmf"].as_array().unwrap();
    let mut failures = Vec::new();
    for r in rows {
        let p = r["p"].as_u64().unwrap() as usize;
        let kappa = f(&r["kappa"]);
        let (lc, a) = (f(&r["log_c"]), f(&r["A_p"]));
        let got_lc = log_cp(p, kappa);
        if !((got_lc - lc).abs() <= 1e-14 * lc.abs().max(1.0)) {
            failures.push(format!("log C_{p}({kappa:e}) = {got_lc:e}, truth {lc:e}"));
        }
        let got_a = mean_resultant_ratio(p, kappa);
        if !((got_a - a).abs() <= 1e-13 * a) {
            failures.push(format!("A_{p}({kappa:e}) = {got_a:e}, truth {a:e}"));
        }
    }
    report("vMF rows", rows.len(), failures);
}

#[test]
fn kappa_estimates() {
    let rows = golden()["kappa_mle"].as_array().unwrap();
    let mut failures = Vec::new();
    for r in rows {
        let p = r["p"].as_u64().unwrap() as usize;
        let rbar = f(&r["rbar"]);
        let exact = f(&r["kappa_exact"]);
        let got = kappa_mle(p, rbar);
        // The notes measure 1.4e-12 for Banerjee + 2 Newton steps over this grid.
        if !((got - exact).abs() <= 1e-11 * exact) {
            failures.push(format!("kappa_mle({p}, {rbar}) = {got}, exact {exact}"));
        }
        let official = f(&r["kappa_proco_code"]).min(vmf::distribution::KAPPA_MAX);
        if !((kappa_official(p, rbar) - official).abs() <= 1e-12 * official) {
            failures.push(format!(
                "kappa_official({p}, {rbar}) = {}, expected {official}",
                kappa_official(p, rbar)
            ));
        }
    }
    report("kappa estimates", rows.len(), failures);
}

/// The p = 128, C = 4 example: rule logits and posteriors against 50-digit values.
#[test]
fn proco_example_logits_and_posteriors() {
    let ex = &golden()["proco_example"];
    let p = ex["p"].as_u64().unwrap() as usize;
    let mu: Vec<Vec<f64>> = ex["mu"].as_array().unwrap().iter().map(vec_f).collect();
    let kappa = vec_f(&ex["kappa"]);
    let kappa_tilde = vec_f(&ex["kappa_tilde"]);
    let counts = vec_f(&ex["n"]);
    let c = kappa.len();
    let labels = (0..c).map(|i| format!("class{i}")).collect();
    let model = ClassModel::new(labels, p, f(&ex["tau"]), 1.0, mu, kappa.clone(), counts).unwrap();
    let z = Array2::from_shape_vec((1, p), vec_f(&ex["z"])).unwrap();
    let mut failures = Vec::new();

    let log_prior = vec_f(&ex["log_prior_train"]);
    for (y, (&got, &want)) in model.log_train_prior().iter().zip(&log_prior).enumerate() {
        if !((got - want).abs() <= 1e-15 * want.abs().max(1.0)) {
            failures.push(format!("ln pi[{y}] = {got}, truth {want}"));
        }
    }

    let proco = model
        .balanced_logits_f64(Rule::Proco, z.view(), None)
        .unwrap();
    for (y, &want) in vec_f(&ex["proco_logit"]).iter().enumerate() {
        let got = proco[[0, y]];
        let tol = 1e-12 + 1e-15 * kappa[y].max(kappa_tilde[y]);
        if !((got - want).abs() <= tol) {
            failures.push(format!(
                "proco[{y}] = {got:e}, truth {want:e}, |diff| {:.2e} > {tol:.2e}",
                (got - want).abs()
            ));
        }
    }
    // The vmf rule is the class-conditional log-likelihood itself (prior-free).
    let vmf_g = model
        .balanced_logits_f64(Rule::Vmf, z.view(), None)
        .unwrap();
    let loglik = vec_f(&ex["vmf_loglik"]);
    for (y, &want) in loglik.iter().enumerate() {
        let got = vmf_g[[0, y]];
        if !((got - want).abs() <= 1e-14 * want.abs().max(1.0)) {
            failures.push(format!("vmf loglik[{y}] = {got:e}, truth {want:e}"));
        }
    }

    // Posteriors: golden softmax of exact logits. Entries as small as 1e-188 are compared relatively
    // (an absolute error delta in a logit is a relative error delta in the probability).
    let close = |got: f64, want: f64, rel: f64| (got - want).abs() <= 1e-15 + rel * want;
    let unif = vec![-(c as f64).ln(); c];
    let cases = [
        (
            "post_proco_uniform",
            posterior(proco.view(), 1.0, &unif),
            1e-10,
        ),
        (
            "post_proco_train_prior",
            posterior(proco.view(), 1.0, &log_prior),
            1e-10,
        ),
        // softmax(loglik + ln q): the generative posterior under the class prior q.
        (
            "post_vmf_uniform",
            posterior(vmf_g.view(), 1.0, &unif),
            1e-9,
        ),
        (
            "post_vmf_train_prior",
            posterior(vmf_g.view(), 1.0, &log_prior),
            1e-9,
        ),
    ];
    for (key, got, rel) in cases {
        for (y, &want) in vec_f(&ex[key]).iter().enumerate() {
            if !close(got[[0, y]], want, rel) {
                failures.push(format!("{key}[{y}] = {:e}, truth {want:e}", got[[0, y]]));
            }
        }
    }
    report("proco example", 4 * c, failures);
}

#[test]
fn calibration_metrics_and_em() {
    let ex = &golden()["calibration_example"];
    let g = matrix(&ex["balanced_logits"]);
    let labels: Vec<usize> = ex["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let pi = vec_f(&ex["pi_train"]);
    let k = pi.len();
    let log_pi: Vec<f64> = pi.iter().map(|v| v.ln()).collect();
    let counts: Vec<f64> = pi.iter().map(|v| v * 1000.0).collect();
    let bins = ex["bins"].as_u64().unwrap() as usize;
    let mut failures = Vec::new();
    let mut check = |what: String, got: f64, want: f64, tol: f64| {
        if !((got - want).abs() <= tol) {
            failures.push(format!("{what}: got {got:.17e}, golden {want:.17e}"));
        }
    };
    for (key, log_q) in [
        ("uniform_prior", vec![-(k as f64).ln(); k]),
        ("train_prior", log_pi.clone()),
    ] {
        let want = &ex[key];
        let m = evaluate(g.view(), 1.0, &log_q, &labels, &counts);
        let probs = posterior(g.view(), 1.0, &log_q);
        assert_eq!(m.n, labels.len());
        check(
            format!("{key} accuracy"),
            m.top1,
            f(&want["accuracy"]),
            1e-15,
        );
        check(format!("{key} ECE"), m.ece, f(&want["ece"]), 1e-13);
        check(
            format!("{key} classwise ECE"),
            m.classwise_ece,
            f(&want["classwise_ece"]),
            1e-13,
        );
        check(format!("{key} NLL"), m.nll, f(&want["nll"]), 1e-13);
        check(format!("{key} Brier"), m.brier, f(&want["brier"]), 1e-13);
        let aece = vmf::metrics::adaptive_ece(probs.view(), &labels, bins);
        check(
            format!("{key} adaptive ECE"),
            aece,
            f(&want["adaptive_ece"]),
            1e-13,
        );
    }
    let em = &ex["em"];
    let tol = f(&em["tol_max_abs_change"]);
    let (q, iterations) = em_label_shift(g.view(), &pi, 10_000, tol);
    for (i, (&got, want)) in q.iter().zip(vec_f(&em["q_hat"])).enumerate() {
        check(format!("EM q_hat[{i}]"), got, want, 1e-12);
    }
    check(
        "EM iterations".into(),
        iterations as f64,
        f(&em["iterations"]),
        0.0,
    );
    let log_q: Vec<f64> = q.iter().map(|v| v.ln()).collect();
    let after = evaluate(g.view(), 1.0, &log_q, &labels, &counts);
    check(
        "NLL after EM".into(),
        after.nll,
        f(&em["nll_after_em"]),
        1e-12,
    );
    report("calibration example", 20, failures);
}
