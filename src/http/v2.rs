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

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::body;
use crate::oip::{
    self, InferRequest, InputTensor, OipError, OutputData, RequestedOutput, TensorData, IMAGE_INPUT,
};
use crate::state::AppState;

/// The Open Inference Protocol's error body: `{"error": "<message>"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct V2ErrorBody {
    error: String,
}

const HEADER_LENGTH: &str = "inference-header-content-length";

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
            OipError::Invalid(_) => StatusCode::BAD_REQUEST,
            OipError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OipError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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

fn invalid(message: impl Into<String>) -> V2Error {
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
    match state.readiness() {
        Ok(_) => Json(json!({"ready": true})).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"ready": false})),
        )
            .into_response(),
    }
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
    oip::find_model(&state, name, version)?;
    Ok(ready(State(state)).await)
}

#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "v2", operation_id = "v2_infer", params(("name" = String, Path, description = "The model name (model.toml)", example = "cifar10-lt-proco-resnet32")),
    description = "JSON body, or JSON followed by binary tensor data (Inference-Header-Content-Length), or the raw binary form (header length 0: the body is the image).",
    request_body(description = "The inference request", content((serde_json::Value = "application/json"), ("application/octet-stream"))),
    responses((status = 200, description = "Outputs (JSON, or JSON then binary data with Inference-Header-Content-Length)", body = serde_json::Value),(status = 400, description = "A bad tensor, shape, datatype, parameter or image", body = V2ErrorBody),(status = 404, description = "Unknown model or version", body = V2ErrorBody),(status = 503, description = "At capacity (Retry-After) or still loading", body = V2ErrorBody)))]
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
    responses((status = 200, description = "Outputs (JSON, or JSON then binary data with Inference-Header-Content-Length)", body = serde_json::Value),(status = 400, description = "A bad tensor, shape, datatype, parameter or image", body = V2ErrorBody),(status = 404, description = "Unknown model or version", body = V2ErrorBody),(status = 503, description = "At capacity (Retry-After) or still loading", body = V2ErrorBody)))]
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
    let bytes = body::read_body_within(
        body,
        state.config.max_body_bytes,
        &parts.headers,
        std::time::Duration::from_millis(state.config.body_read_timeout_ms),
    )
    .await
    .map_err(|e| invalid(e.to_string()))?;
    let serving = oip::find_model(&state, name, version)?;
    let request = parse_request(&parts.headers, bytes)?;
    let answer = oip::infer(&state, &serving, request).await?;
    let info = super::access::AccessInfo {
        images: answer.images,
        batch_size: answer.batch_size,
        rule: param(&answer, "rule"),
        prior: param(&answer, "prior"),
        prototypes_version: answer.model_version.clone(),
    };
    let mut response = write_response(answer);
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

/// Parses an infer request body: JSON, JSON then binary tensor data, or the raw binary form, as
/// the `Inference-Header-Content-Length` header says.
pub fn parse_request(headers: &HeaderMap, body: Bytes) -> Result<InferRequest, V2Error> {
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| invalid("Inference-Header-Content-Length is not a number"))?,
        ),
    };
    match header_length {
        Some(0) => Ok(raw_request(body)),
        Some(n) if n > body.len() => Err(invalid(format!(
            "Inference-Header-Content-Length is {n} but the body has {} bytes",
            body.len()
        ))),
        Some(n) => json_request(&body[..n], body.slice(n..)),
        None => json_request(&body, Bytes::new()),
    }
}

/// The raw binary form: the body is the one input, `image`.
fn raw_request(body: Bytes) -> InferRequest {
    let images = split_bytes_elements(&body).unwrap_or_else(|| vec![body.clone()]);
    InferRequest {
        id: None,
        inputs: vec![InputTensor {
            name: IMAGE_INPUT.into(),
            datatype: "BYTES".into(),
            shape: vec![images.len() as i64],
            data: TensorData::Bytes(images),
        }],
        outputs: None,
        rule: None,
        prior: None,
        decisions: Default::default(),
        binary_output: true,
    }
}

/// BYTES elements in the binary form (4-byte little-endian length, then the bytes), if `data`
/// is exactly a sequence of them.
fn split_bytes_elements(data: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let len = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        let end = at.checked_add(4)?.checked_add(len)?;
        out.push(data.slice(at + 4..end.min(data.len())));
        if end > data.len() {
            return None;
        }
        at = end;
    }
    (!out.is_empty()).then_some(out)
}

fn json_request(header: &[u8], mut binary: Bytes) -> Result<InferRequest, V2Error> {
    let doc: Value = serde_json::from_slice(header)
        .map_err(|e| invalid(format!("the request is not valid JSON: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| invalid("the request must be a JSON object"))?;
    let mut request = InferRequest {
        id: obj.get("id").and_then(Value::as_str).map(str::to_string),
        inputs: Vec::new(),
        outputs: None,
        rule: None,
        prior: None,
        decisions: Default::default(),
        binary_output: false,
    };
    if let Some(params) = obj.get("parameters") {
        let params = params
            .as_object()
            .ok_or_else(|| invalid("parameters must be an object"))?;
        for (key, value) in params {
            let text = || {
                value
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("parameter {key:?} must be a string")))
            };
            match key.as_str() {
                "rule" => request.rule = Some(text()?),
                "prior" => request.prior = Some(text()?),
                "set" => request.decisions.set = Some(text()?),
                "coverage" | "abstain_below" => {
                    let number = value
                        .as_f64()
                        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                        .ok_or_else(|| invalid(format!("parameter {key:?} must be a number")))?;
                    if key == "coverage" {
                        request.decisions.coverage = Some(number);
                    } else {
                        request.decisions.abstain_below = Some(number);
                    }
                }
                "binary_data_output" => {
                    request.binary_output = value.as_bool().ok_or_else(|| {
                        invalid("parameter \"binary_data_output\" must be a boolean")
                    })?
                }
                other => {
                    return Err(invalid(format!(
                    "unknown request parameter {other:?} (known: rule, prior, coverage, set, abstain_below, binary_data_output)"
                )))
                }
            }
        }
    }
    let inputs = obj
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the request has no \"inputs\" array"))?;
    for input in inputs {
        request.inputs.push(parse_input(input, &mut binary)?);
    }
    if let Some(outputs) = obj.get("outputs") {
        let outputs = outputs
            .as_array()
            .ok_or_else(|| invalid("outputs must be an array"))?;
        let parsed = outputs
            .iter()
            .map(|o| parse_output(o, request.binary_output))
            .collect::<Result<Vec<_>, _>>()?;
        request.outputs = Some(parsed);
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    Ok(request)
}

fn parse_input(input: &Value, binary: &mut Bytes) -> Result<InputTensor, V2Error> {
    let name = input
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("an input has no name"))?
        .to_string();
    let datatype = input
        .get("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("input {name:?} has no datatype")))?
        .to_string();
    let shape: Vec<i64> = input
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|dims| dims.iter().map(Value::as_i64).collect())
        .ok_or_else(|| invalid(format!("input {name:?} has no shape of integers")))?;
    let binary_size = input
        .get("parameters")
        .and_then(|p| p.get("binary_data_size"))
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| invalid("binary_data_size must be a non-negative integer"))
        })
        .transpose()?;
    let data = match binary_size {
        Some(size) => {
            let size = size as usize;
            if size > binary.len() {
                return Err(invalid(format!(
                    "input {name:?} says binary_data_size {size}, but only {} bytes follow",
                    binary.len()
                )));
            }
            let chunk = binary.split_to(size);
            match datatype.as_str() {
                "BYTES" => TensorData::Bytes(split_bytes_elements(&chunk).ok_or_else(|| {
                    invalid(format!("input {name:?}: malformed BYTES binary data"))
                })?),
                "FP32" if size.is_multiple_of(4) => TensorData::Fp32(
                    chunk
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
                "FP32" => {
                    return Err(invalid(format!(
                        "input {name:?}: FP32 data of {size} bytes"
                    )))
                }
                other => return Err(unsupported_datatype(&name, other)),
            }
        }
        None => json_data(&name, &datatype, input.get("data"))?,
    };
    Ok(InputTensor {
        name,
        datatype,
        shape,
        data,
    })
}

fn unsupported_datatype(name: &str, datatype: &str) -> V2Error {
    invalid(format!(
        "input {name:?} cannot be {datatype}: {IMAGE_INPUT:?} is BYTES, \"pixels\" is FP32"
    ))
}

/// The JSON form of a tensor's data: a flat or nested array.
fn json_data(name: &str, datatype: &str, data: Option<&Value>) -> Result<TensorData, V2Error> {
    let data = data.ok_or_else(|| invalid(format!("input {name:?} has no data")))?;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    match datatype {
        "BYTES" => flat
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let text = v.as_str().ok_or_else(|| {
                    invalid(format!(
                        "input {name:?}[{i}] is not a string (base64 of an image)"
                    ))
                })?;
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map(Bytes::from)
                    .map_err(|e| invalid(format!("input {name:?}[{i}] is not base64: {e}")))
            })
            .collect::<Result<_, _>>()
            .map(TensorData::Bytes),
        "FP32" => flat
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| invalid(format!("input {name:?}[{i}] is not a number")))
            })
            .collect::<Result<_, _>>()
            .map(TensorData::Fp32),
        other => Err(unsupported_datatype(name, other)),
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn parse_output(output: &Value, binary_output: bool) -> Result<RequestedOutput, V2Error> {
    let name = output
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("an output has no name"))?
        .to_string();
    let params = output.get("parameters");
    let get = |key: &str| params.and_then(|p| p.get(key));
    let classification = get("classification")
        .map(|v| {
            v.as_u64()
                .map(|k| k as usize)
                .ok_or_else(|| invalid("classification must be a positive integer"))
        })
        .transpose()?;
    let binary = match get("binary_data") {
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid("binary_data must be a boolean"))?,
        None => binary_output,
    };
    Ok(RequestedOutput {
        name,
        classification,
        binary,
    })
}

fn write_response(answer: oip::InferResponse) -> Response {
    let mut binary = Vec::new();
    let outputs: Vec<Value> = answer
        .outputs
        .iter()
        .map(|out| {
            let mut tensor =
                json!({"name": out.name, "datatype": out.datatype, "shape": out.shape});
            if out.binary {
                let start = binary.len();
                match &out.data {
                    OutputData::Fp32(values) => values
                        .iter()
                        .for_each(|v| binary.extend_from_slice(&v.to_le_bytes())),
                    OutputData::Bytes(items) => items.iter().for_each(|item| {
                        binary.extend_from_slice(&(item.len() as u32).to_le_bytes());
                        binary.extend_from_slice(item);
                    }),
                    OutputData::Bool(flags) => binary.extend(flags.iter().map(|&f| u8::from(f))),
                }
                tensor["parameters"] = json!({"binary_data_size": binary.len() - start});
            } else {
                tensor["data"] = match &out.data {
                    OutputData::Fp32(values) => json!(values),
                    OutputData::Bool(flags) => json!(flags),
                    OutputData::Bytes(items) => json!(items
                        .iter()
                        .map(|i| String::from_utf8_lossy(i).into_owned())
                        .collect::<Vec<_>>()),
                };
            }
            tensor
        })
        .collect();
    let mut doc = json!({
        "model_name": answer.model_name,
        "model_version": answer.model_version,
        "parameters": answer.parameters,
        "outputs": outputs,
    });
    if let Some(id) = answer.id {
        doc["id"] = json!(id);
    }
    let header = serde_json::to_vec(&doc).expect("plain JSON");
    if binary.is_empty() {
        return ([(header::CONTENT_TYPE, "application/json")], header).into_response();
    }
    let header_length = header.len().to_string();
    let mut body = header;
    body.extend_from_slice(&binary);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                header_length,
            ),
        ],
        body,
    )
        .into_response()
}
