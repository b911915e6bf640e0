//! HTTP API: routes, the request-metrics layer, and the JSON error type. Handlers parse
//! their request, call the front layer (`crate::infer`) or read the shared state, and format
//! the answer.
//!
//! | route | handler |
//! |---|---|
//! | `POST /v1/classify` | [`classify::classify`] |
//! | `GET /v1/models` | [`info::models`] |
//! | `/v1/models/{model}/...`, `/admin/models/{model}/...` | the same handlers, for that model ([`ModelName`]) |
//! | `POST /v2/repository/index`, `/v2/repository/models/{model}/{load,unload}` | [`v2::repository::index`], [`v2::repository::load`], [`v2::repository::unload`] |
//! | `GET /v1/model` | [`info::model`] |
//! | `GET /health/live`, `GET /health/ready` | [`info::live`], [`info::ready`] |
//! | `GET /metrics` | [`info::metrics`] |
//! | `GET /v1/prototypes/versions` | [`info::versions`] |
//! | `POST /v1/feedback`, `GET /v1/monitoring` | [`monitor::feedback`], [`monitor::monitoring`] |
//! | `GET /` (the console page) | [`page::console`] |
//! | `GET /v2`, `/v2/health/{live,ready}` | [`v2::server_metadata`], [`v2::live`], [`v2::ready`] |
//! | `GET /v2/models/{name}[/versions/{v}][/ready]` | [`v2::model_metadata`], [`v2::model_ready`] |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | [`v2::infer`] |
//! | `POST /admin/reload` | [`admin::admin_reload`] |
//! | `POST /admin/prototypes/examples` | [`admin::learn_examples`] |
//! | `DELETE /admin/prototypes/classes/{name}` | [`admin::remove_class`] |
//! | `POST /admin/prototypes/rollback` | [`admin::rollback`] |

pub mod access;
pub mod admin;
pub mod body;
pub mod classify;
pub mod error;
pub mod info;
pub mod listener;
pub mod monitor;
pub mod openapi;
pub mod page;
pub mod v2;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use tracing::Instrument;

use crate::state::AppState;
use crate::telemetry::traces;
pub use error::ApiError;

/// The application's routes. Body size limits are enforced by the handlers themselves
/// (so the error is our JSON), hence axum's default limit is disabled.
pub fn router(state: Arc<AppState>) -> Router {
    // Inference and feedback: the routes `api_keys_file` guards.
    let with_key = Router::new()
        .route(
            "/v1/classify",
            post(classify::classify).put(classify::classify),
        )
        .route(
            "/v1/models/{model}/classify",
            post(classify::classify_model).put(classify::classify_model),
        )
        .route("/v1/feedback", post(monitor::feedback))
        .route("/v1/models/{model}/feedback", post(monitor::feedback))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::version_infer),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let routes = Router::new()
        .merge(with_key)
        .route("/v1/model", get(info::model))
        .route("/v1/models", get(info::models))
        .route("/v1/models/{model}", get(info::model))
        .route("/v1/models/{model}/monitoring", get(monitor::monitoring))
        .route(
            "/v1/models/{model}/prototypes/versions",
            get(info::versions),
        )
        .route("/v1/monitoring", get(monitor::monitoring))
        .route("/", get(page::console))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::page))
        .route("/health/live", get(info::live))
        .route("/health/ready", get(info::ready))
        .route("/metrics", get(info::metrics))
        .route("/v1/prototypes/versions", get(info::versions))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::model_version_metadata),
        )
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::model_version_ready),
        )
        .route("/admin/reload", post(admin::admin_reload))
        .route("/admin/prototypes/examples", post(admin::learn_examples))
        .route(
            "/admin/prototypes/classes/{name}",
            axum::routing::delete(admin::remove_class),
        )
        .route("/admin/prototypes/rollback", post(admin::rollback))
        .route("/admin/models/{model}/reload", post(admin::admin_reload))
        .route(
            "/admin/models/{model}/prototypes/examples",
            post(admin::learn_examples),
        )
        .route(
            "/admin/models/{model}/prototypes/classes/{name}",
            axum::routing::delete(admin::remove_class),
        )
        .route(
            "/admin/models/{model}/prototypes/rollback",
            post(admin::rollback),
        )
        .route("/v2/repository/index", post(v2::repository::index))
        .route(
            "/v2/repository/models/{model}/load",
            post(v2::repository::load),
        )
        .route(
            "/v2/repository/models/{model}/unload",
            post(v2::repository::unload),
        );
    // Tests only (`fault_injection`): inside the panic guard, like a handler's own fault.
    let routes = if state.config.fault_injection {
        routes.layer(middleware::from_fn(inject_fault))
    } else {
        routes
    };
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            access::panic_response,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track));
    // Off by default: without the setting a browser's preflight gets the usual 405.
    let routes = match state.config.cors_allow_origin.trim() {
        "" => routes,
        origins => routes.layer(cors(origins)),
    };
    routes.with_state(state)
}

/// Cross-origin requests from browsers (`cors_allow_origin`): none by default; `*` for any
/// origin; or a list. Preflight requests are answered here; the answers a page may read include
/// the request id, the OIP binary header length and Retry-After.
fn cors(setting: &str) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderName, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<&str> = setting
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    let oip_length = HeaderName::from_static("inference-header-content-length");
    let request_id = HeaderName::from_static("x-request-id");
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            oip_length.clone(),
            request_id.clone(),
        ])
        .expose_headers([request_id, oip_length, header::RETRY_AFTER])
}

/// The model a route names (`{model}` in its path: `/v1/models/{model}/...`,
/// `/admin/models/{model}/...`), or `None` on the routes that serve the default model.
pub struct ModelName(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ModelName {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, state).await;
        let name = params.ok().and_then(|params| {
            params
                .iter()
                .find(|(key, _)| *key == "model")
                .map(|(_, value)| value.to_string())
        });
        Ok(ModelName(name))
    }
}

impl ModelName {
    /// The model, if it can answer.
    pub fn serving(&self, state: &AppState) -> Result<Arc<crate::state::Serving>, ApiError> {
        Ok(state.model(self.0.as_deref())?)
    }
}

/// An unknown route: in the Open Inference Protocol's error shape under `/v2` (what its clients
/// can read), in ours elsewhere.
async fn not_found(uri: axum::http::Uri) -> Response {
    let message = format!("no such endpoint: {}", uri.path());
    if is_v2(&uri) {
        v2::V2Error(crate::oip::OipError::NotFound(message)).into_response()
    } else {
        ApiError::NotFound(message).into_response()
    }
}

/// The API key of an inference or feedback request (`api_keys_file`), checked before the body is
/// read; refused with 401 in the protocol's own error shape. The key's name goes to the access
/// log.
async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.check_api_key(authorization) {
        Ok(name) => {
            let mut response = next.run(request).await;
            if let Some(name) = name {
                response.extensions_mut().insert(access::KeyName(name));
            }
            response
        }
        Err(e) => {
            // Read (or drain) the body first, so that the 401 reaches a client still sending.
            let v2 = is_v2(request.uri());
            let (parts, body) = request.into_parts();
            let _ = body::read(body, &parts.headers, &state.config).await;
            if v2 {
                let message = e.to_string();
                let refusal = crate::oip::OipError::Unauthorized {
                    message,
                    disabled: false,
                };
                v2::V2Error(refusal).into_response()
            } else {
                ApiError::Unauthorized(e.to_string()).into_response()
            }
        }
    }
}

/// With `fault_injection` on, a request with `X-Proco-Fault: panic` panics in its handler.
async fn inject_fault(request: Request, next: Next) -> Response {
    if request
        .headers()
        .get("x-proco-fault")
        .is_some_and(|v| v == "panic")
    {
        panic!("a fault injected by the test switch (fault_injection)");
    }
    next.run(request).await
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let message = format!("{method} is not allowed on {}", uri.path());
    if is_v2(&uri) {
        v2::V2Error(crate::oip::OipError::MethodNotAllowed(message)).into_response()
    } else {
        ApiError::MethodNotAllowed(message).into_response()
    }
}

fn is_v2(uri: &axum::http::Uri) -> bool {
    uri.path() == "/v2" || uri.path().starts_with("/v2/")
}

/// Counts every response in `proco_http_requests_total{route,status}`, times it in
/// `proco_request_duration_seconds{route}`, gives it a request id, and writes its access-log
/// line. The route is the matched pattern, never the raw path, so label cardinality stays
/// bounded.
async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let id = access::request_id(request.headers());
    let method = request.method().to_string();
    let bytes_in = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (span, trace_id) = {
        let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        let carrier = traces::Carrier::new(header("traceparent"), header("tracestate"));
        let span = if traces::should_trace(&carrier) {
            request_span(&method, &route, &id)
        } else {
            tracing::Span::none()
        };
        traces::adopt(&span, &carrier);
        let trace_id = traces::trace_id(&span, &carrier);
        (span, trace_id)
    };
    let mut response = access::REQUEST_ID
        .scope(id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    access::tag(&mut response, &id);
    let status = response.status().as_u16();
    record_answer(
        &span,
        status,
        response.extensions().get::<access::AccessInfo>(),
    );
    let metrics = &state.metrics;
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), status.to_string().as_str()])
        .inc();
    let seconds = started.elapsed().as_secs_f64();
    metrics
        .request_duration
        .with_label_values(&[route.as_str()])
        .observe(seconds);
    if response.extensions().get::<access::Panicked>().is_some() {
        metrics.panics.inc();
    }
    access::Line {
        method: &method,
        route: &route,
        status,
        bytes_in,
        bytes_out: axum::body::HttpBody::size_hint(response.body()).exact(),
        seconds,
        request_id: &id,
        trace_id: trace_id.as_deref(),
        info: response.extensions().get::<access::AccessInfo>(),
        key: response
            .extensions()
            .get::<access::KeyName>()
            .map(|k| k.0.as_str()),
    }
    .write(state.config.access_log);
    response
}

/// The span of one HTTP request: the root of its trace, or the child of the caller's.
fn request_span(method: &str, route: &str, id: &str) -> tracing::Span {
    tracing::info_span!(
        target: traces::TARGET,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request.id = %id,
        proco.model = tracing::field::Empty,
        proco.images = tracing::field::Empty,
        proco.batch_size = tracing::field::Empty,
        proco.prototypes_version = tracing::field::Empty,
    )
}

/// What the answer was, on the request's span.
fn record_answer(span: &tracing::Span, status: u16, info: Option<&access::AccessInfo>) {
    // As i64: OpenTelemetry's integer attribute (unsigned values would arrive as strings).
    span.record("http.response.status_code", i64::from(status));
    if let Some(info) = info {
        span.record("proco.model", info.model.as_str());
        span.record("proco.images", info.images as i64);
        span.record("proco.batch_size", info.batch_size as i64);
        span.record("proco.prototypes_version", info.prototypes_version.as_str());
    }
}
