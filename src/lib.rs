//! proco-serve: serve a ProCo encoder with calibrated, prior-adjusted class probabilities.
//!
//! Data flows one way: HTTP -> decode/preprocess -> batcher -> encoder (ONNX Runtime)
//! -> vMF engine -> response. `vmf` is the pure math (no I/O); everything else is plumbing.

pub mod app;
pub mod batcher;
pub mod config;
pub mod encoder;
pub mod engine;
pub mod eval;
pub mod http;
pub mod manifest;
pub mod preprocess;
pub mod prototypes;
pub mod reload;
pub mod telemetry;
pub mod vmf;
