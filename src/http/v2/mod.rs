//! The Open Inference Protocol v2 over REST (`/v2`), with Triton's binary tensor data and
//! classification extensions. This file is the wire form only: JSON and binary bodies in,
//! [`oip::InferRequest`] to `crate::oip`, and the answer back out.
//!
//! Binary data: when the `Inference-Header-Content-Length` header is present, the body is that
//! many bytes of JSON followed by the inputs' binary data, in input order, each input saying its
//! size in `parameters.binary_data_size`; BYTES elements are a 4-byte little-endian length and
//! the bytes. A header length of 0 is the raw form: the whole body is the one input, `image`
//! (length-prefixed elements, or a single encoded image). Outputs go back as binary when the
//! output asks (`parameters.binary_data`) or the request does (`binary_data_output`). No
//! Content-Type is required (the Triton client sends none). In the JSON form an `image` element
//! is the base64 of the encoded image, since JSON strings cannot carry arbitrary bytes.
pub mod repository;
mod request;
mod response;

pub use request::parse_request;

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::body;
use crate::oip::{self, OipError};
use crate::state::AppState;

/// The Open Inference Protocol's error body: `{"error": "<message>"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct V2ErrorBody {
    error: String,
}

pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

/// An OIP error answer: a status and `{"error": "<message>"}`.
pub struct V2Error(pub OipError);

impl From<OipError> for V2Error {
    fn from(e: OipError) -> Self {
        V2Error(e)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            OipError::NotFound(_) => StatusCode::NOT_FOUND,
            OipError::Unauthorized {
                disabled: false, ..
            } => StatusCode::UNAUTHORIZED,
            OipError::Unauthorized { disabled: true, .. } => StatusCode::FORBIDDEN,
            OipError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            OipError::Invalid(_) | OipError::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
            OipError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OipError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            OipError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!("/v2: {}", self.0);
        }
        // Exactly `{"error": "<message>"}`, as the protocol has it; the request id is in the
        // X-Request-Id header.
        let mut response = (status, Json(json!({"error": self.0.to_string()}))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub(super) fn invalid(message: impl Into<String>) -> V2Error {
    V2Error(OipError::Invalid(message.into()))
}

#[utoipa::path(get, path = "/v2", tag = "v2", operation_id = "v2_server_metadata",
    responses((status = 200, description = "Name, version and extensions", body = serde_json::Value)))]
/// `GET /v2`: the server's name, version and extensions.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "proco-serve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": oip::EXTENSIONS,
    }))
}

#[utoipa::path(get, path = "/v2/health/live", tag = "v2", operation_id = "v2_live",
    responses((status = 200, description = "Live", body = serde_json::Value)))]
/// `GET /v2/health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "v2", operation_id = "v2_ready",
    responses((status = 200, description = "Ready", body = serde_json::Value),(status = 503, description = "Not ready", body = serde_json::Value)))]
/// `GET /v2/health/ready`: as `/health/ready`.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    ready_answer(state.readiness().is_ok())
}

/// `{"ready": true}`, or 503 with Retry-After and `{"ready": false}`.
fn ready_answer(ready: bool) -> Response {
    if ready {
        return Json(json!({"ready": true})).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({"ready": false})),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v2/models/{name}", tag = "v2", operation_id = "v2_model_metadata", params(("name" = String, Path, description = "The model name (model.toml)", example = "cifar10-lt-proco-resnet32")),
    responses((status = 200, description = "Inputs and outputs with datatypes and shapes", body = serde_json::Value),(status = 404, description = "Unknown model", body = V2ErrorBody),(status = 503, description = "Still loading", body = V2ErrorBody)))]
/// `GET /v2/models/{name}`.
pub async fn model_metadata(
    state: State<Arc<AppState>>,
    path: Path<Vec<(String, String)>>,
) -> Result<Response, V2Error> {
    metadata(state, path).await
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "v2", operation_id = "v2_model_version_metadata", params(("name" = String, Path, description = "The model name (model.toml)", example = "cifar10-lt-proco-resnet32"), ("version" = String, Path, description = "The prototypes version served")),
    responses((status = 200, description = "Inputs and outputs with datatypes and shapes", body = serde_json::Value),(status = 404, description = "Unknown model or version", body = V2ErrorBody),(status = 503, description = "Still loading", body = V2ErrorBody)))]
/// `GET /v2/models/{name}/versions/{version}`.
pub async fn model_version_metadata(
    state: State<Arc<AppState>>,
    path: Path<Vec<(String, String)>>,
) -> Result<Response, V2Error> {
    metadata(state, path).await
}

async fn metadata(
    State(state): State<Arc<AppState>>,
    Path(path): Path<Vec<(String, String)>>,
) -> Result<Response, V2Error> {
    let (name, version) = model_path(&path);
    let serving = oip::find_model(&state, name, version)?;
    Ok(Json(oip::model_metadata(&serving)).into_response())
}

#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "v2", operation_id = "v2_model_ready", params(("name" = String, Path, description = "The model name (model.toml)", example = "cifar10-lt-proco-resnet32")),
    responses((status = 200, description = "Ready", body = serde_json::Value),(status = 404, description = "Unknown model", body = V2ErrorBody),(status = 503, description = "Not ready", body = serde_json::Value)))]
/// `GET /v2/models/{name}/ready`.
pub async fn model_ready(
    state: State<Arc<AppState>>,
    path: Path<Vec<(String, String)>>,
) -> Result<Response, V2Error> {
    readiness(state, path).await
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "v2", operation_id = "v2_model_version_ready", params(("name" = String, Path, description = "The model name (model.toml)", example = "cifar10-lt-proco-resnet32"), ("version" = String, Path, description = "The prototypes version served")),
    responses((status = 200, description = "Ready", body = serde_json::Value),(status = 404, description = "Unknown model or version", body = V2ErrorBody),(status = 503, description = "Not ready", body = serde_json::Value)))]
/// `GET /v2/models/{name}/versions/{version}/ready`.
pub async fn model_version_ready(
    state: State<Arc<AppState>>,
    path: Path<Vec<(String, String)>>,
) -> Result<Response, V2Error> {
    readiness(state, path).await
}

async fn readiness(
    State(state): State<Arc<AppState>>,
    Path(path): Path<Vec<(String, String)>>,
) -> Result<Response, V2Error> {
    let (name, version) = model_path(&path);
    Ok(ready_answer(oip::model_ready(&state, name, version)?))
}

#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "v2", operation_id = "v2_infer", params(("name" = String, Path, description = "The model name (model.toml)", example = "cifar10-lt-proco-resnet32")),
    description = "JSON body, or JSON followed by binary tensor data (Inference-Header-Content-Length), or the raw binary form (header length 0: the body is the image).",
    request_body(description = "The inference request", content((serde_json::Value = "application/json"), ("application/octet-stream"))),
    security((), ("bearer" = [])),
    responses((status = 200, description = "Outputs (JSON, or JSON then binary data with Inference-Header-Content-Length)", body = serde_json::Value),(status = 401, description = "api_keys_file is set and the request has no valid key (Authorization: Bearer KEY)", body = V2ErrorBody),(status = 400, description = "A bad tensor, shape, datatype, parameter or image", body = V2ErrorBody),(status = 404, description = "Unknown model or version", body = V2ErrorBody),(status = 503, description = "At capacity (Retry-After) or still loading", body = V2ErrorBody)))]
/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    state: State<Arc<AppState>>,
    path: Path<Vec<(String, String)>>,
    request: Request,
) -> Result<Response, V2Error> {
    run_infer(state, path, request).await
}

#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "v2", operation_id = "v2_version_infer", params(("name" = String, Path, description = "The model name (model.toml)", example = "cifar10-lt-proco-resnet32"), ("version" = String, Path, description = "The prototypes version served")),
    description = "JSON body, or JSON followed by binary tensor data (Inference-Header-Content-Length), or the raw binary form (header length 0: the body is the image).",
    request_body(description = "The inference request", content((serde_json::Value = "application/json"), ("application/octet-stream"))),
    security((), ("bearer" = [])),
    responses((status = 200, description = "Outputs (JSON, or JSON then binary data with Inference-Header-Content-Length)", body = serde_json::Value),(status = 401, description = "api_keys_file is set and the request has no valid key (Authorization: Bearer KEY)", body = V2ErrorBody),(status = 400, description = "A bad tensor, shape, datatype, parameter or image", body = V2ErrorBody),(status = 404, description = "Unknown model or version", body = V2ErrorBody),(status = 503, description = "At capacity (Retry-After) or still loading", body = V2ErrorBody)))]
/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn version_infer(
    state: State<Arc<AppState>>,
    path: Path<Vec<(String, String)>>,
    request: Request,
) -> Result<Response, V2Error> {
    run_infer(state, path, request).await
}

async fn run_infer(
    State(state): State<Arc<AppState>>,
    Path(path): Path<Vec<(String, String)>>,
    request: Request,
) -> Result<Response, V2Error> {
    let (name, version) = model_path(&path);
    let (parts, body) = request.into_parts();
    let bytes = body::read(body, &parts.headers, &state.config)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    let serving = oip::find_model(&state, name, version)?;
    let request = parse_request(&parts.headers, bytes)?;
    let answer = oip::infer(&state, &serving, request).await?;
    let info = super::access::AccessInfo {
        model: answer.model_name.clone(),
        images: answer.images,
        batch_size: answer.batch_size,
        rule: param(&answer, "rule"),
        prior: param(&answer, "prior"),
        prototypes_version: answer.model_version.clone(),
    };
    let mut response = response::write(answer);
    response.extensions_mut().insert(info);
    Ok(response)
}

fn param(answer: &oip::InferResponse, key: &str) -> String {
    answer
        .parameters
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// (name, version) from the path parameters of the model routes.
fn model_path(path: &[(String, String)]) -> (&str, Option<&str>) {
    let get = |key: &str| path.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    (get("name").unwrap_or(""), get("version"))
}
