//! Wiring: bind the listeners, load the models in the background (the repository), start the
//! HTTP and gRPC servers, and shut down cleanly when told (the binary: on Ctrl-C / SIGTERM).
//!
//! The listener is bound first so that `/health/live` answers while the model loads;
//! `/health/ready` turns 200 only once the encoder is loaded and a warm-up batch ran.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::pgstore::SharedStore;
use crate::state::AppState;

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
    let shared_store = match config.prototype_store_url()? {
        Some(url) => Some(SharedStore::connect(url, config.prototype_history).await?),
        None => None,
    };
    let state = Arc::new(AppState::new(config, shared_store)?);
    if let Some(keys) = &state.api_keys {
        keys.spawn_watcher(Duration::from_millis(state.config.reload_poll_ms));
    }
    let app = crate::http::router(state.clone());
    let stop = drain_on(shutdown, state.clone());
    tracing::info!("listening on http://{addr}");
    if let Some(g) = listeners.grpc {
        spawn_grpc(g, state.clone(), stop.clone())?;
    }
    // SIGHUP reloads prototypes; its default action would end the process, so the handler is
    // installed before any model loads (it stays installed; each model listens on its own).
    drop(crate::reload::listen_for_hangup());
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
    // Every admitted request has its answer: close the queues and wait for the threads.
    let models = state.clone();
    tokio::task::spawn_blocking(move || models.models.shutdown()).await?;
    tracing::info!("shut down: every admitted request was answered");
    Ok(())
}

/// Loads the default model, then the others `load_models` names, in the background; a default
/// model that fails to load is sent on the returned channel (it ends the server).
fn spawn_loader(state: Arc<AppState>) -> tokio::sync::mpsc::Receiver<anyhow::Error> {
    let (fail_tx, fail_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    tokio::spawn(async move {
        match state.models.start().await {
            Ok(()) => {
                state.metrics.ready.set(1);
                tracing::info!("ready");
                poll_repository(state).await;
            }
            Err(e) => {
                let _ = fail_tx.send(e).await;
            }
        }
    });
    fail_rx
}

/// With `repository_poll_ms`, looks at the repository on that interval for good.
async fn poll_repository(state: Arc<AppState>) {
    let every = Duration::from_millis(state.config.repository_poll_ms);
    if every.is_zero() {
        return;
    }
    tracing::info!(
        "polling the repository {} every {} ms",
        state.config.model_repository.display(),
        every.as_millis()
    );
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        state.models.poll_once().await;
    }
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
