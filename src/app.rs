//! Wiring: bind the listener, load the model in the background, start the batcher, the
//! prototype watcher and the HTTP server, and shut down cleanly on Ctrl-C / SIGTERM.
//!
//! The listener is bound first so that `/health/live` answers while the model loads;
//! `/health/ready` turns 200 only once the encoder is loaded and a warm-up batch ran.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;

use crate::batcher::{BatchConfig, Batcher};
use crate::config::{Config, DefaultPrior};
use crate::encoder::{Encoder, Threads};
use crate::engine::{Engine, PriorSpec};
use crate::manifest::ModelManifest;
use crate::preprocess::DecodeLimits;
use crate::prototypes::PrototypeStore;
use crate::telemetry::Metrics;
use crate::vmf::AdaptivePriorConfig;

/// Everything that exists once the model is loaded.
pub struct Serving {
    pub manifest: ModelManifest,
    pub store: Arc<PrototypeStore>,
    pub engine: Arc<Engine>,
    pub batcher: Batcher,
    /// "cuda" or "cpu": what actually runs the encoder.
    pub provider: String,
    pub requested_provider: String,
    pub fallback_reason: Option<String>,
    pub feature_dim: usize,
    pub num_classes: usize,
    pub limits: DecodeLimits,
    pub default_prior: PriorSpec,
}

/// Shared by every handler.
pub struct AppState {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub serving: OnceLock<Arc<Serving>>,
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
}

/// Loads the manifest, the encoder (with warm-up), the prototypes, and starts the batcher.
/// Blocking: call from a blocking thread.
pub fn load(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Serving> {
    let manifest = ModelManifest::load(&config.model_dir)?;
    let lib = crate::encoder::init_runtime()?;
    tracing::info!("ONNX Runtime loaded from {}", lib.display());
    let encoder = Encoder::load(
        &manifest,
        &config.model_dir,
        config.execution_provider,
        Threads {
            intra: config.intra_threads,
            inter: config.inter_threads,
        },
    )
    .with_context(|| format!("cannot load the encoder of {}", config.model_dir.display()))?;
    let provider = encoder.provider().to_string();
    let fallback_reason = encoder.fallback_reason().map(str::to_string);
    let feature_dim = encoder.feature_dim();
    let num_classes = encoder.num_classes();
    let store = Arc::new(
        PrototypeStore::open(&manifest.prototypes_path, feature_dim, num_classes)
            .with_context(|| format!("cannot use {}", manifest.prototypes_path.display()))?,
    );
    let snapshot = store.snapshot();
    match (&fallback_reason, config.execution_provider) {
        (Some(reason), _) => tracing::warn!(
            "serving model {} on CPU: CUDA not available ({reason})",
            manifest.name
        ),
        (None, _) => tracing::info!(
            "serving model {} on {} (requested: {})",
            manifest.name,
            provider.to_uppercase(),
            config.execution_provider
        ),
    }
    tracing::info!(
        "prototypes version {} ({} classes, feature dim {feature_dim}), default rule {}",
        snapshot.version,
        num_classes,
        config.default_rule
    );

    metrics
        .execution_provider_info
        .with_label_values(&[provider.as_str(), &config.execution_provider.to_string()])
        .set(1.0);
    metrics
        .model_info
        .with_label_values(&[
            manifest.name.as_str(),
            &feature_dim.to_string(),
            &num_classes.to_string(),
        ])
        .set(1.0);
    metrics.set_prototypes_version(None, &snapshot.version);
    for (label, q) in snapshot
        .classes
        .labels()
        .iter()
        .zip(snapshot.classes.train_prior())
    {
        metrics
            .adaptive_prior
            .with_label_values(&[label.as_str()])
            .set(q);
    }

    let engine = Arc::new(Engine::new(
        AdaptivePriorConfig {
            window: config.adaptive_window,
            min_samples: config.adaptive_min_samples,
            floor: config.adaptive_floor,
            refresh_every: config.adaptive_refresh_every,
            ..AdaptivePriorConfig::default()
        },
        config.default_rule,
    ));
    let batcher = Batcher::spawn(
        encoder,
        store.clone(),
        engine.clone(),
        metrics.clone(),
        BatchConfig {
            max_batch_size: config.max_batch_size,
            max_queue_delay: Duration::from_millis(config.max_queue_delay_ms),
            queue_capacity: config.queue_capacity,
        },
    )?;
    Ok(Serving {
        manifest,
        store,
        engine,
        batcher,
        provider,
        requested_provider: config.execution_provider.to_string(),
        fallback_reason,
        feature_dim,
        num_classes,
        limits: DecodeLimits::from_max_pixels(config.max_pixels),
        default_prior: match config.default_prior {
            DefaultPrior::Uniform => PriorSpec::Uniform,
            DefaultPrior::Train => PriorSpec::Train,
            DefaultPrior::Adaptive => PriorSpec::Adaptive,
        },
    })
}

/// Runs the server until Ctrl-C or SIGTERM. Prints `proco-serve listening on <addr>` on
/// stdout once bound (tests read it to find an ephemeral port). A model that cannot be
/// loaded ends the process with an error.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let state = Arc::new(AppState::new(config));
    let app = crate::http::router(state.clone());
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "proco-serve listening on {addr}");
        let _ = out.flush();
    }
    tracing::info!("listening on http://{addr}");

    let hangup = crate::reload::listen_for_hangup();
    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    let loader_state = state.clone();
    tokio::spawn(async move {
        let config = loader_state.config.clone();
        let metrics = loader_state.metrics.clone();
        match tokio::task::spawn_blocking(move || load(&config, metrics)).await {
            Ok(Ok(serving)) => {
                let serving = Arc::new(serving);
                let _ = loader_state.serving.set(serving.clone());
                tracing::info!("ready");
                crate::reload::spawn_watchers(loader_state.clone(), serving, hangup);
            }
            Ok(Err(e)) => {
                let _ = fail_tx.send(e).await;
            }
            Err(join) => {
                let _ = fail_tx
                    .send(anyhow::anyhow!("model loading panicked: {join}"))
                    .await;
            }
        }
    });

    // TCP_NODELAY on every connection: without it, Nagle + delayed ACK add ~40 ms to
    // small keep-alive responses.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    tokio::select! {
        r = server => r.context("HTTP server failed")?,
        Some(e) = fail_rx.recv() => return Err(e),
    }
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
