//! Synthetic class models for the property tests and the benchmarks (`benches/vmf.rs` includes
//! this file by path): a deterministic generator, so neither needs `rand`.

use proco_serve::vmf::ClassModel;

/// Knuth's MMIX LCG; the top 53 bits as a uniform in [0, 1).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A uniformly random unit vector of dimension p.
    pub fn unit(&mut self, p: usize) -> Vec<f64> {
        let v: Vec<f64> = (0..p).map(|_| self.normal()).collect();
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }
}

/// C random unit prototypes of dimension p; kappa from 10 to 1e5 (ProCo's clamp); counts
/// long-tailed with imbalance 100.
pub fn random_model(rng: &mut Lcg, c: usize, p: usize) -> ClassModel {
    let labels = (0..c).map(|i| format!("class{i}")).collect();
    let mu = (0..c).map(|_| rng.unit(p)).collect();
    let kappa = (0..c)
        .map(|i| 10f64.powf(1.0 + 4.0 * i as f64 / c as f64))
        .collect();
    let counts = (0..c)
        .map(|i| (5000.0 * 0.01f64.powf(i as f64 / (c - 1) as f64)).floor())
        .collect();
    ClassModel::new(labels, p, 0.1, 1.0, mu, kappa, counts).expect("valid synthetic model")
}
