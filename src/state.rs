//! The state every handler shares: the configuration, the metrics, and, once the model has
//! loaded, the [`Serving`] parts. Its own module so that the wiring (`app`), the handlers
//! (`http`) and the reloader import downwards only.

use std::sync::{Arc, OnceLock};

use crate::batcher::Readiness;
use crate::config::Config;
use crate::engine::{Engine, PriorName};
use crate::infer::Infer;
use crate::manifest::ModelManifest;
use crate::prototypes::PrototypeStore;
use crate::reload::Reloader;
use crate::telemetry::Metrics;

/// Which execution provider runs the encoder, and why when it is not the one asked for.
#[derive(Clone, Debug)]
pub struct ProviderReport {
    /// "cuda" or "cpu": what actually runs the encoder.
    pub active: String,
    pub requested: String,
    pub fallback_reason: Option<String>,
}

/// Everything that exists once the model is loaded.
pub struct Serving {
    pub manifest: Arc<ModelManifest>,
    pub store: Arc<PrototypeStore>,
    pub engine: Arc<Engine>,
    pub infer: Infer,
    pub reloader: Arc<Reloader>,
    pub provider: ProviderReport,
    pub feature_dim: usize,
    pub num_classes: usize,
    pub default_prior: PriorName,
}

/// Shared by every handler.
pub struct AppState {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub serving: OnceLock<Arc<Serving>>,
}

/// Why `/health/ready` is not 200.
#[derive(Clone, Debug, PartialEq)]
pub enum NotReady {
    Loading,
    /// The model loaded, but the inference thread stopped or its recent batches failed.
    Inference(Readiness),
}

impl AppState {
    pub fn new(config: Config) -> Self {
        AppState {
            config,
            metrics: Arc::new(Metrics::new()),
            serving: OnceLock::new(),
        }
    }

    /// The loaded model, if loading has finished.
    pub fn serving(&self) -> Option<&Arc<Serving>> {
        self.serving.get()
    }

    /// The loaded model if it can answer requests now; also sets `proco_ready`.
    pub fn readiness(&self) -> Result<&Arc<Serving>, NotReady> {
        let verdict = match self.serving() {
            None => Err(NotReady::Loading),
            Some(s) => match s.infer.readiness() {
                Readiness::Ready => Ok(s),
                other => Err(NotReady::Inference(other)),
            },
        };
        self.metrics.ready.set(verdict.is_ok() as i64);
        verdict
    }
}
