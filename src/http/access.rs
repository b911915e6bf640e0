//! One access-log line per request, request ids, and faults contained.
//!
//! Every request gets an id: the client's `X-Request-Id` when it is a sensible token (1-128
//! characters of letters, digits and `-_.:`), otherwise a fresh one. It is returned in the
//! `X-Request-Id` header and in every error body, and it is on the access-log line, so that a
//! client's report can be found in the log. Handlers that classify attach an [`AccessInfo`] to
//! their response (model, images, batch size, rule, prior, prototypes version) for the line.
//!
//! A panic inside a handler is caught ([`panic_response`]): the request gets a 500 JSON error,
//! `proco_panics_total` counts it, and the server goes on serving.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::telemetry::AccessLogFormat as Format;

tokio::task_local! {
    /// The id of the request being handled (set by the request layer in `http::track`).
    pub static REQUEST_ID: String;
}

/// The current request's id, inside a handler.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// The client's id when it is a sensible token, otherwise a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        });
    match given {
        Some(id) => id.to_string(),
        None => new_id(),
    }
}

/// 16 hex digits: a process-random prefix and a counter, unique within the process and
/// unlikely to repeat across replicas.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// What a classifying handler tells the access log about its request.
#[derive(Clone, Debug, Default)]
pub struct AccessInfo {
    /// The model that answered.
    pub model: String,
    pub images: usize,
    pub batch_size: usize,
    pub rule: String,
    pub prior: String,
    pub prototypes_version: String,
}

/// The name of the API key a request presented (never the key).
#[derive(Clone, Debug)]
pub struct KeyName(pub String);

/// Marks a response made from a caught panic, for the metrics.
#[derive(Clone, Copy, Debug)]
pub struct Panicked;

/// The answer to a request whose handler panicked.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    tracing::error!(
        "a request handler panicked ({message}); the request got a 500 and the server goes on"
    );
    let mut response = super::ApiError::Internal(
        "the server hit a fault while handling this request; it keeps serving".into(),
    )
    .into_response();
    response.extensions_mut().insert(Panicked);
    response
}

/// One finished request, as the access log shows it.
pub struct Line<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: Option<u64>,
    pub seconds: f64,
    pub request_id: &'a str,
    /// The W3C trace id of the request (its traceparent's, or the trace exported for it).
    pub trace_id: Option<&'a str>,
    pub info: Option<&'a AccessInfo>,
    /// The API key's name, when keys are required.
    pub key: Option<&'a str>,
}

impl Line<'_> {
    pub fn write(&self, format: Format) {
        let info = self.info.cloned().unwrap_or_default();
        let bytes_out = self.bytes_out.map_or("-".to_string(), |b| b.to_string());
        match format {
            Format::Off => {}
            Format::Text => tracing::info!(
                target: "proco_serve::access",
                "{} {} {} in={} out={} {:.2}ms model={} images={} batch={} rule={} prior={} prototypes={} key={} id={} trace={}",
                self.method, self.route, self.status, self.bytes_in, bytes_out,
                self.seconds * 1e3, dash(&info.model), info.images, info.batch_size, dash(&info.rule),
                dash(&info.prior), dash(&info.prototypes_version), self.key.unwrap_or("-"), self.request_id,
                self.trace_id.unwrap_or("-")
            ),
            Format::Json => tracing::info!(
                target: "proco_serve::access",
                "{}",
                serde_json::json!({
                    "method": self.method, "route": self.route, "status": self.status,
                    "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                    "duration_ms": self.seconds * 1e3, "model": info.model, "images": info.images,
                    "batch_size": info.batch_size, "rule": info.rule, "prior": info.prior,
                    "prototypes_version": info.prototypes_version, "key": self.key,
                    "request_id": self.request_id, "trace_id": self.trace_id,
                })
            ),
        }
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Sets the response's `X-Request-Id`.
pub fn tag(response: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", v);
    }
}
