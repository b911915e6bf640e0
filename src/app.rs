//! Wiring: bind the listeners, load the model in the background, start the batcher, the
//! prototype watchers and the HTTP and gRPC servers, and shut down cleanly when told
//! (the binary: on Ctrl-C / SIGTERM).
//!
//! The listener is bound first so that `/health/live` answers while the model loads;
//! `/health/ready` turns 200 only once the encoder is loaded and a warm-up batch ran.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::batcher::{BatchConfig, Batcher};
use crate::config::Config;
use crate::encoder::{Encoder, Threads};
use crate::engine::Engine;
use crate::infer::{Defaults, Infer, Parts};
use crate::manifest::ModelManifest;
use crate::preprocess::DecodeLimits;
use crate::prototypes::{EncoderShape, PrototypeStore, Prototypes};
use crate::reload::Reloader;
use crate::state::{AppState, ProviderReport, Serving};
use crate::telemetry::Metrics;
use crate::vmf::AdaptivePriorConfig;

/// Loads the manifest, the encoder (with warm-up), the prototypes, and starts the batcher.
/// Blocking: call from a blocking thread.
pub fn load(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Serving> {
    let manifest = Arc::new(ModelManifest::load_variant(
        &config.model_dir,
        config.encoder_variant,
    )?);
    let lib = crate::encoder::init_runtime()?;
    tracing::info!("ONNX Runtime loaded from {}", lib.display());
    let threads = Threads {
        intra: config.intra_threads,
        inter: config.inter_threads,
    };
    let encoder = Encoder::load(&manifest, config.execution_provider, threads)
        .with_context(|| format!("cannot load the encoder of {}", config.model_dir.display()))?;
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
    let snapshot = store.snapshot();
    match &provider.fallback_reason {
        Some(reason) => tracing::warn!(
            "serving model {} on CPU: CUDA not available ({reason})",
            manifest.name
        ),
        None => tracing::info!(
            "serving model {} on {} (requested: {})",
            manifest.name,
            provider.active.to_uppercase(),
            provider.requested
        ),
    }
    tracing::info!(
        "prototypes version {} ({} classes, feature dim {}), default rule {}",
        snapshot.version,
        shape.num_classes,
        shape.feature_dim,
        config.default_rule
    );
    publish_model_metrics(&metrics, &provider, &manifest, &shape, &snapshot);

    let (engine, infer) = start_inference(config, &manifest, encoder, &store, &metrics)?;
    Ok(Serving {
        manifest,
        reloader: Arc::new(Reloader::new(
            store.clone(),
            metrics,
            config.prototype_history,
            config.max_classes,
        )),
        store,
        engine,
        infer,
        provider,
        feature_dim: shape.feature_dim,
        num_classes: shape.num_classes,
        default_prior: config.default_prior,
    })
}

/// The engine, and the batcher thread that owns the encoder, behind the front layer.
fn start_inference(
    config: &Config,
    manifest: &Arc<ModelManifest>,
    encoder: Encoder,
    store: &Arc<PrototypeStore>,
    metrics: &Arc<Metrics>,
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
        encoder,
        input_size,
        store.clone(),
        engine.clone(),
        metrics.clone(),
        BatchConfig {
            max_batch_size: config.max_batch_size,
            max_queue_delay: Duration::from_millis(config.max_queue_delay_ms),
            queue_capacity: config.queue_capacity,
        },
    )?;
    let infer = Infer::new(Parts {
        batcher,
        manifest: manifest.clone(),
        store: store.clone(),
        engine: engine.clone(),
        defaults: Defaults {
            rule: config.default_rule,
            prior: config.default_prior,
        },
        limits: DecodeLimits::from_max_pixels(config.max_pixels),
        metrics: metrics.clone(),
        queue_capacity: config.queue_capacity,
    });
    Ok((engine, infer))
}

/// The `_info` gauges and the adaptive prior's starting point (the training prior).
fn publish_model_metrics(
    metrics: &Metrics,
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
            shape.model.as_str(),
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

/// The server's sockets, bound before the model loads so that `/health/live` answers at once.
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    /// `None` when `grpc_listen` is "off".
    pub grpc: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// Binds `listen` and `grpc_listen`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let http = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let grpc = match config.grpc_addr()? {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen for gRPC on {a}"))?,
            ),
            None => None,
        };
        Ok(Listeners { http, grpc })
    }

    /// Prints `proco-serve listening on <addr>` (and the gRPC line) on stdout: tests read it to
    /// find an ephemeral port.
    pub fn announce(&self) -> anyhow::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "proco-serve listening on {}", self.http.local_addr()?)?;
        if let Some(g) = &self.grpc {
            writeln!(out, "proco-serve grpc listening on {}", g.local_addr()?)?;
        }
        out.flush()?;
        Ok(())
    }
}

/// Serves on `listeners` until `shutdown` resolves (the binary passes [`shutdown_signal`]:
/// Ctrl-C or SIGTERM), then drains: readiness turns 503, the listeners close after
/// `drain_delay_ms`, admitted requests are answered, and the inference thread is joined. A
/// model that cannot be loaded ends it with an error.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listeners.http.local_addr()?;
    let state = Arc::new(AppState::new(config));
    let app = crate::http::router(state.clone());
    let stop = drain_on(shutdown, state.clone());
    tracing::info!("listening on http://{addr}");
    if let Some(g) = listeners.grpc {
        spawn_grpc(g, state.clone(), stop.clone())?;
    }
    let mut failed = spawn_loader(state.clone());

    let limits = crate::http::listener::Limits {
        max_connections: state.config.max_connections,
        header_read_timeout: Duration::from_millis(state.config.header_read_timeout_ms),
    };
    let server = crate::http::listener::serve(
        listeners.http,
        app,
        limits,
        state.metrics.clone(),
        stopped(stop.clone()),
    );
    let grace = Duration::from_millis(state.config.shutdown_timeout_ms);
    let deadline = async move {
        stopped(stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = server => {}
        Some(e) = failed.recv() => return Err(e),
        _ = deadline => {
            tracing::warn!(
                "requests were still running {} ms after the listener closed (shutdown_timeout_ms); exiting without them",
                grace.as_millis()
            );
            return Ok(());
        }
    }
    if let Some(serving) = state.serving().cloned() {
        // Every admitted request has its answer: close the queue and wait for the thread.
        tokio::task::spawn_blocking(move || serving.infer.shutdown()).await?;
    }
    tracing::info!("shut down: every admitted request was answered");
    Ok(())
}

/// Loads the model on a blocking thread; once it is ready, starts the prototype watchers. A
/// load that fails is sent on the returned channel.
fn spawn_loader(state: Arc<AppState>) -> tokio::sync::mpsc::Receiver<anyhow::Error> {
    let hangup = crate::reload::listen_for_hangup();
    let (fail_tx, fail_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    tokio::spawn(async move {
        let config = state.config.clone();
        let metrics = state.metrics.clone();
        let failure = match tokio::task::spawn_blocking(move || load(&config, metrics)).await {
            Ok(Ok(serving)) => {
                let reloader = serving.reloader.clone();
                let _ = state.serving.set(Arc::new(serving));
                state.metrics.ready.set(1);
                tracing::info!("ready");
                let poll = Duration::from_millis(state.config.reload_poll_ms);
                crate::reload::spawn_watchers(reloader, poll, hangup);
                return;
            }
            Ok(Err(e)) => e,
            Err(join) => anyhow::anyhow!("model loading panicked: {join}"),
        };
        let _ = fail_tx.send(failure).await;
    });
    fail_rx
}

/// Serves the gRPC adapter on its listener until the drain closes the listeners.
fn spawn_grpc(
    g: tokio::net::TcpListener,
    state: Arc<AppState>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tracing::info!("gRPC (Open Inference Protocol) on {}", g.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(g).with_nodelay(Some(true));
    let service = crate::grpc::service(state);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stopped(stop))
            .await;
        if let Err(e) = served {
            tracing::error!("the gRPC server failed: {e}");
        }
    });
    Ok(())
}

/// Graceful drain: once `shutdown` resolves, readiness turns 503 at once; after
/// `drain_delay_ms` (time for load balancers to notice) the listeners close, and the servers
/// finish the requests they have. The channel turns true when the listeners should close.
fn drain_on(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    state: Arc<AppState>,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        state
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        state.metrics.ready.set(0);
        let delay = Duration::from_millis(state.config.drain_delay_ms);
        tracing::info!(
            "shutting down: /health/ready answers 503 now; the listener closes in {} ms, then requests in flight are finished",
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
        tracing::info!("no longer accepting connections; finishing the requests in flight");
        let _ = tx.send(true);
    });
    rx
}

/// Resolves once the listeners should close.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Resolves on the first Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
}
