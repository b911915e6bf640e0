//! The HTTP listener: accepting connections with limits that keep slow or abusive clients from
//! holding the server, and closing gracefully.
//!
//! * at most `max_connections` open connections; a connection over the cap is closed at once
//!   (and counted), so that a flood of idle sockets cannot exhaust the process;
//! * a client has `header_read_timeout_ms` to send a request's headers, on a new connection
//!   and between requests on a kept-alive one: a slowloris that trickles its headers is cut off;
//! * at most [`MAX_HEADERS`] headers per request;
//! * the body's own deadline (`body_read_timeout_ms`) is enforced where bodies are read
//!   (`http::body`), before any admission permit is taken;
//! * TCP_NODELAY on every connection: without it, Nagle + delayed ACK add ~40 ms to small
//!   keep-alive responses.
//!
//! On shutdown the listener stops accepting and every open connection finishes the request it
//! is on (hyper's graceful shutdown), then closes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::telemetry::Metrics;

/// Most headers one request may carry.
pub const MAX_HEADERS: usize = 100;

/// The connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(stop);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: say so, breathe, go on.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            tracing::debug!(
                "refused a connection: {} are open (max_connections)",
                limits.max_connections
            );
            continue; // dropping the socket closes it
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let gauge = metrics.open_connections.clone();
        gauge.inc();
        tokio::spawn(async move {
            let _ = conn.await; // a client that goes away is not an error of ours
            gauge.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
