//! The state every handler shares: the configuration, the metrics, and, once the model has
//! loaded, the [`Serving`] parts. Its own module so that the wiring (`app`), the handlers
//! (`http`) and the reloader import downwards only.

use std::sync::{Arc, OnceLock};

use crate::batcher::Readiness;
use crate::config::Config;
use crate::engine::{Engine, PriorName};
use crate::feedback::FeedbackStore;
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
    /// Set on SIGTERM / Ctrl-C: readiness turns 503 so that load balancers stop sending.
    pub draining: std::sync::atomic::AtomicBool,
    /// Answers waiting for their true label, and the window of labelled ones.
    pub feedback: FeedbackStore,
}

/// Why `/health/ready` is not 200.
#[derive(Clone, Debug, PartialEq)]
pub enum NotReady {
    Loading,
    /// Shutting down: finishing the requests already admitted.
    Draining,
    /// The model loaded, but the inference thread stopped or its recent batches failed.
    Inference(Readiness),
}

impl AppState {
    pub fn new(config: Config) -> Self {
        AppState {
            feedback: FeedbackStore::new(config.feedback_capacity, config.feedback_window),
            config,
            metrics: Arc::new(Metrics::new()),
            serving: OnceLock::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The loaded model, if loading has finished.
    pub fn serving(&self) -> Option<&Arc<Serving>> {
        self.serving.get()
    }

    /// The loaded model if it can answer requests now; also sets `proco_ready`.
    pub fn readiness(&self) -> Result<&Arc<Serving>, NotReady> {
        let draining = self.draining.load(std::sync::atomic::Ordering::Acquire);
        let verdict = match self.serving() {
            _ if draining => Err(NotReady::Draining),
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
