//! One loaded model, and how a model folder becomes one: the manifest, the encoder (with a
//! warm-up batch), the prototypes, the engine, and the batcher thread behind the front layer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use anyhow::Context;

use crate::batcher::{BatchConfig, Batcher, Readiness};
use crate::config::Config;
use crate::encoder::{Encoder, Threads};
use crate::engine::{Engine, PriorName};
use crate::feedback::FeedbackStore;
use crate::infer::{Defaults, Infer, Parts};
use crate::manifest::ModelManifest;
use crate::pgstore::SharedStore;
use crate::preprocess::DecodeLimits;
use crate::prototypes::{EncoderShape, PrototypeStore, Prototypes};
use crate::reload::{Reloader, Shared};
use crate::telemetry::{Metrics, ModelMetrics};
use crate::vmf::AdaptivePriorConfig;

/// Which execution provider runs the encoder, and why when it is not the one asked for.
#[derive(Clone, Debug)]
pub struct ProviderReport {
    /// "cuda" or "cpu": what actually runs the encoder.
    pub active: String,
    pub requested: String,
    pub fallback_reason: Option<String>,
}

/// One loaded model: everything that serves it, its own from the encoder session to the
/// feedback window, so that nothing leaks between models.
pub struct Serving {
    /// The model folder it was loaded from.
    pub dir: PathBuf,
    pub manifest: Arc<ModelManifest>,
    pub store: Arc<PrototypeStore>,
    pub engine: Arc<Engine>,
    pub infer: Infer,
    pub reloader: Arc<Reloader>,
    pub provider: ProviderReport,
    pub feature_dim: usize,
    pub num_classes: usize,
    pub default_prior: PriorName,
    /// Answers waiting for their true label, and the window of labelled ones.
    pub feedback: FeedbackStore,
    /// Its series of every per-model metric family (`model` label).
    pub metrics: Arc<ModelMetrics>,
}

impl Serving {
    /// Whether its inference thread runs and its batches succeed.
    pub fn readiness(&self) -> Readiness {
        self.infer.readiness()
    }
}

/// Loads the manifest, the encoder (with warm-up), the prototypes (the shared store's version,
/// with one), and starts the batcher. Blocking: call from a blocking thread of the runtime.
pub fn load(
    config: &Config,
    model_dir: &Path,
    metrics: Arc<Metrics>,
    admission: Arc<Semaphore>,
    shared_store: Option<Arc<SharedStore>>,
) -> anyhow::Result<Serving> {
    let manifest = Arc::new(ModelManifest::load_variant(
        model_dir,
        config.encoder_variant,
    )?);
    let encoders = load_encoders(config, &manifest, model_dir)?;
    let encoder = &encoders[0];
    tracing::info!(
        "encoder variant {} ({}), temperatures from {}",
        manifest.variant,
        manifest.encoder_path.display(),
        if manifest.temperatures.is_some() {
            "model.toml"
        } else {
            "the prototypes file"
        }
    );
    let provider = ProviderReport {
        active: encoder.provider().to_string(),
        requested: config.execution_provider.to_string(),
        fallback_reason: encoder.fallback_reason().map(str::to_string),
    };
    let shape = EncoderShape {
        model: manifest.name.clone(),
        feature_dim: encoder.feature_dim(),
        num_classes: encoder.num_classes(),
    };
    let store = Arc::new(
        PrototypeStore::open(&manifest.prototypes_path, shape.clone())
            .with_context(|| format!("cannot use {}", manifest.prototypes_path.display()))?,
    );
    let shared = shared_store.map(|s| Shared::new(s, &manifest.name));
    if let Some(shared) = &shared {
        let bytes = std::fs::read(&manifest.prototypes_path)
            .with_context(|| format!("cannot read {}", manifest.prototypes_path.display()))?;
        shared.open(&store, &bytes)?;
    }
    let snapshot = store.snapshot();
    log_provider(&provider, &manifest.name);
    tracing::info!(
        "prototypes version {} ({} classes, feature dim {}), default rule {}",
        snapshot.version,
        shape.num_classes,
        shape.feature_dim,
        config.default_rule
    );
    // The model's own series: every per-model family with its `model` label.
    let metrics = Arc::new(metrics.model(&manifest.name));
    publish_model_metrics(&metrics, &provider, &manifest, &shape, &snapshot);

    let (engine, infer) =
        start_inference(config, &manifest, encoders, &store, &metrics, admission)?;
    Ok(Serving {
        dir: model_dir.to_path_buf(),
        feedback: FeedbackStore::new(config.feedback_capacity, config.feedback_window),
        manifest,
        reloader: Arc::new(Reloader::new(
            store.clone(),
            metrics.clone(),
            config.prototype_history,
            config.max_classes,
            shared,
        )),
        store,
        engine,
        infer,
        provider,
        feature_dim: shape.feature_dim,
        num_classes: shape.num_classes,
        default_prior: config.default_prior,
        metrics,
    })
}

/// The engine, and the batcher threads that own the encoder instances, behind the front layer.
fn start_inference(
    config: &Config,
    manifest: &Arc<ModelManifest>,
    encoders: Vec<Encoder>,
    store: &Arc<PrototypeStore>,
    metrics: &Arc<ModelMetrics>,
    admission: Arc<Semaphore>,
) -> anyhow::Result<(Arc<Engine>, Infer)> {
    let engine = Arc::new(
        Engine::new(
            AdaptivePriorConfig {
                window: config.adaptive_window,
                min_samples: config.adaptive_min_samples,
                floor: config.adaptive_floor,
                refresh_every: config.adaptive_refresh_every,
                ..AdaptivePriorConfig::default()
            },
            config.default_rule,
            config.drift_warn,
        )
        .with_temperatures(manifest.temperatures.clone()),
    );
    let input_size = (
        manifest.input.height as usize,
        manifest.input.width as usize,
    );
    let batcher = Batcher::spawn(
        encoders,
        input_size,
        store.clone(),
        engine.clone(),
        metrics.clone(),
        BatchConfig {
            max_batch_size: config.max_batch_size,
            max_queue_delay: Duration::from_millis(config.max_queue_delay_ms),
            queue_capacity: config.queue_capacity,
        },
        admission,
    )?;
    let infer = Infer::new(Parts {
        batcher,
        manifest: manifest.clone(),
        store: store.clone(),
        engine: engine.clone(),
        defaults: Defaults {
            rule: config.default_rule,
            prior: config.default_prior,
            timeout: (config.request_timeout_ms > 0)
                .then(|| Duration::from_millis(config.request_timeout_ms)),
        },
        limits: DecodeLimits::from_max_pixels(config.max_pixels),
        metrics: metrics.clone(),
        queue_capacity: config.queue_capacity,
    });
    Ok((engine, infer))
}

/// The model's encoder sessions, `encoder_instances` of them (Triton's instance_group), each
/// warmed up; the batcher gives each its own inference thread.
fn load_encoders(
    config: &Config,
    manifest: &ModelManifest,
    model_dir: &Path,
) -> anyhow::Result<Vec<Encoder>> {
    let lib = crate::encoder::init_runtime()?;
    tracing::info!("ONNX Runtime loaded from {}", lib.display());
    let threads = Threads {
        intra: config.intra_threads,
        inter: config.inter_threads,
        spin: config.ort_spinning,
    };
    (0..config.encoder_instances.max(1))
        .map(|_| {
            Encoder::load(manifest, config.execution_provider, threads)
                .with_context(|| format!("cannot load the encoder of {}", model_dir.display()))
        })
        .collect()
}

/// Which provider runs the model, in words (a CUDA request that fell back is a warning).
fn log_provider(provider: &ProviderReport, model: &str) {
    match &provider.fallback_reason {
        Some(reason) => tracing::warn!(
            "serving model {} on CPU: CUDA not available ({reason})",
            model
        ),
        None => tracing::info!(
            "serving model {} on {} (requested: {})",
            model,
            provider.active.to_uppercase(),
            provider.requested
        ),
    }
}

/// The `_info` gauges and the adaptive prior's starting point (the training prior).
fn publish_model_metrics(
    metrics: &ModelMetrics,
    provider: &ProviderReport,
    manifest: &ModelManifest,
    shape: &EncoderShape,
    protos: &Prototypes,
) {
    metrics
        .execution_provider_info
        .with_label_values(&[provider.active.as_str(), provider.requested.as_str()])
        .set(1.0);
    metrics
        .model_info
        .with_label_values(&[
            manifest.variant.as_str(),
            &shape.feature_dim.to_string(),
            &shape.num_classes.to_string(),
        ])
        .set(1.0);
    metrics.set_prototypes_version(None, &protos.version);
    metrics.classes.set(protos.classes.num_classes() as i64);
    if protos.version != protos.stated_version {
        metrics.prototype_version_mismatches.inc();
        tracing::warn!(
            "the prototypes file states version {} but its content is version {}: serving it as {}",
            protos.stated_version,
            protos.version,
            protos.version
        );
    }
    for (label, q) in protos
        .classes
        .labels()
        .iter()
        .zip(protos.classes.train_prior())
    {
        metrics
            .adaptive_prior
            .with_label_values(&[label.as_str()])
            .set(q);
    }
}
