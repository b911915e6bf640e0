//! The vMF inference math of ProCo, as a pure module: no I/O, no ONNX Runtime, no async.
//!
//! * [`bessel`]: stable `ln I_nu(x)` and Bessel ratios (nothing in the Rust ecosystem covers
//!   small x at large nu);
//! * [`distribution`]: the vMF normaliser, A_p, concentration estimates, running class means;
//! * [`rules`]: the four inference rules, producing balanced logits for a batch;
//! * [`posterior`]: softmax under a target prior, and EM estimation of an unknown prior;
//! * [`calibration`]: temperature fitting; [`metrics`]: accuracy and calibration metrics;
//! * [`conformal`]: split-conformal prediction sets, marginal and class-conditional.
//!
//! Numerics, tolerances and the reasons for each choice are in the module docs; the golden values
//! come from `tools/golden_bessel.py` (mpmath at 70 digits) and are checked by `tests/vmf_golden.rs`.

pub mod bessel;
pub mod calibration;
pub mod conformal;
pub mod distribution;
pub mod metrics;
pub mod posterior;
pub mod rules;

pub use bessel::{log_bessel_ratio, log_iv};
pub use calibration::fit_temperature;
pub use conformal::{ConformalError, ConformalScores, SetKind};
pub use distribution::{kappa_mle, kappa_official, log_cp, mean_resultant_ratio, VmfEstimator};
pub use metrics::{evaluate, reliability_bins, Evaluation};
pub use posterior::{
    em_label_shift, log_softmax_row, posterior, AdaptivePrior, AdaptivePriorConfig,
};
pub use rules::{ClassModel, ModelError, Rule};
