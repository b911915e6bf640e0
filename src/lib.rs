//! proco-serve: serve a ProCo encoder with calibrated, prior-adjusted class probabilities.
//!
//! Data flows one way, and each module imports only the ones below it:
//!
//! ```text
//! main -> app (wiring) -> http (/v1, admin, /v2 REST) and grpc: the protocol adapters, which
//!   read their wire and write the answer back; the OIP v2 ones through oip (the protocol's
//!   tensors and outputs, wire-neutral, with its binary codec)
//! -> state (what handlers share: the repository of models, each a serving) -> infer (the front layer: options resolved against one
//!   prototypes snapshot, admission, decode, one typed error) -> batcher -> encoder (ONNX
//!   Runtime) / engine (rules, temperatures, priors, sets) -> vmf (pure math)
//! ```
//!
//! Beside the path: `config` (settings), `reload` (every change to the prototypes: hot reload,
//! learning, removal, rollback), `prototypes` (the class distributions and their store),
//! `preprocess` (bytes to tensor), `manifest` (model.toml), `telemetry` (metrics and logs),
//! `pgstore` (the prototypes' versions shared by replicas through PostgreSQL),
//! `feedback` (answers awaiting their true label, and the metrics of those labelled), `eval` (the
//! offline command), and `fuzzing` (the parsers of untrusted bytes behind one entry each, for the
//! fuzz targets).

pub mod app;
pub mod batcher;
pub mod config;
pub mod encoder;
pub mod engine;
pub mod eval;
pub mod feedback;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod keys;
pub mod manifest;
pub mod oip;
pub mod pgstore;
pub mod preprocess;
pub mod prototypes;
pub mod reload;
pub mod repository;
pub mod serving;
pub mod state;
pub mod telemetry;
pub mod vmf;
