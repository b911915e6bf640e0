//! The state every handler shares: the configuration, the metrics, and the model repository
//! ([`Repository`]) with its loaded models ([`Serving`]). Its own module so that the wiring
//! (`app`), the handlers (`http`) and the reloader import downwards only.

use std::sync::Arc;

use crate::batcher::Readiness;
use crate::config::Config;
use crate::keys::{ApiKeys, KeyError};
use crate::telemetry::Metrics;

pub use crate::repository::{IndexEntry, ModelState, Repository, RepositoryError};
pub use crate::serving::{ProviderReport, Serving};

/// Shared by every handler.
pub struct AppState {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Every model: the default one and the others of the repository.
    pub models: Repository,
    /// Set on SIGTERM / Ctrl-C: readiness turns 503 so that load balancers stop sending.
    pub draining: std::sync::atomic::AtomicBool,
    /// The keys inference and feedback need (`api_keys_file`); `None`: none needed.
    pub api_keys: Option<Arc<ApiKeys>>,
}

/// Why a request may not change what is served (the admin endpoints, model loads).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin endpoints are disabled: set admin_token (PROCO_ADMIN_TOKEN)")]
    Disabled,
    #[error("missing or wrong bearer token")]
    Wrong,
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
    /// Fails when `api_keys_file` is set and cannot be read. `shared_store`: the connected
    /// store `prototype_store` names, if any.
    pub fn new(
        config: Config,
        shared_store: Option<Arc<crate::pgstore::SharedStore>>,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let api_keys = match config.api_keys_file.trim() {
            "" => None,
            path => Some(Arc::new(ApiKeys::open(std::path::Path::new(path))?)),
        };
        Ok(AppState {
            models: Repository::new(config.clone(), metrics.clone(), shared_store),
            config,
            metrics,
            draining: std::sync::atomic::AtomicBool::new(false),
            api_keys,
        })
    }

    /// The name of the API key an inference or feedback request presents (`Authorization`
    /// value), or `None` when no keys are configured.
    pub fn check_api_key(&self, authorization: Option<&str>) -> Result<Option<String>, KeyError> {
        match &self.api_keys {
            None => Ok(None),
            Some(keys) => keys.check(authorization).map(Some),
        }
    }

    /// The default model, once it is loaded.
    pub fn serving(&self) -> Option<Arc<Serving>> {
        self.models.default_model()
    }

    /// The model a route names (`None`: the default one), if it is ready.
    pub fn model(&self, name: Option<&str>) -> Result<Arc<Serving>, RepositoryError> {
        match name {
            Some(name) => self.models.get(name),
            None => self
                .serving()
                .ok_or_else(|| RepositoryError::Loading("the model is still loading".into())),
        }
    }

    /// Checks an `Authorization` value against the admin token: `Bearer <token>`, compared in
    /// constant time; the token is never logged.
    pub fn check_admin_token(&self, authorization: Option<&str>) -> Result<(), TokenError> {
        let token = self.config.admin_token().ok_or(TokenError::Disabled)?;
        let given = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant time in the token's content (its length is no secret worth the trouble).
        let same = given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0;
        if same {
            Ok(())
        } else {
            Err(TokenError::Wrong)
        }
    }

    /// The default model if it can answer requests now (and the models `load_models` asks for
    /// have loaded or failed); also sets `proco_ready`.
    pub fn readiness(&self) -> Result<Arc<Serving>, NotReady> {
        let draining = self.draining.load(std::sync::atomic::Ordering::Acquire);
        let verdict = match self.serving() {
            _ if draining => Err(NotReady::Draining),
            // Ready once every model asked for at start has loaded (or failed), not before.
            _ if !self.models.started() => Err(NotReady::Loading),
            None => Err(NotReady::Loading),
            Some(s) => match s.readiness() {
                Readiness::Ready => Ok(s),
                other => Err(NotReady::Inference(other)),
            },
        };
        self.metrics.ready.set(verdict.is_ok() as i64);
        verdict
    }
}
