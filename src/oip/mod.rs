//! The Open Inference Protocol v2 (KServe, Triton) as this server speaks it, independent of the
//! wire: the REST adapter (`http::v2`) and the gRPC adapter (`grpc`) parse their requests into
//! an [`InferRequest`], call [`infer`], and write the [`InferResponse`] back in their own form.
//! Both go through the same front layer (`crate::infer`) as `/v1`: the same admission, decoding,
//! batches and engine.
//!
//! The model has two inputs, of which a request gives exactly one:
//! * `image`, BYTES `[N]` or `[N,1]`: encoded images (JPEG, PNG, WebP, GIF, BMP), decoded and
//!   checked as `/v1` does;
//! * `pixels`, FP32 `[N,3,H,W]`: images already laid out as the encoder's input (RGB, pixels /
//!   255, CHW), for clients that preprocess themselves.
//!
//! and three outputs, all of them when a request names none: `probabilities` FP32 `[N,C]` (the
//! calibrated posterior under the requested rule and prior), `logits` FP32 `[N,C]` (the rule's
//! balanced logits, before temperature and prior) and `feature` FP32 `[N,p]` (the unit feature
//! z). The classification extension (`classification: k` on an output) answers BYTES `[N,k]`
//! strings `probability:index:label` from the calibrated probabilities, most probable first.
//!
//! Decisions, as in `/v1`: the `coverage` (and `set`: class | marginal) request parameters add
//! the output `prediction_set`, BOOL `[N,C]` (true for the classes in each image's conformal
//! set); `abstain_below` adds `abstained`, BOOL `[N]`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::infer::{ImageInput, InferError, RawOptions};
use crate::state::{AppState, RepositoryError, Serving};

mod check;
pub mod codec;
mod response;

pub use check::{check, Checked, TensorLimits};

pub const IMAGE_INPUT: &str = "image";
pub const PIXELS_INPUT: &str = "pixels";
pub const PROBABILITIES: &str = "probabilities";
pub const LOGITS: &str = "logits";
pub const FEATURE: &str = "feature";
pub const PREDICTION_SET: &str = "prediction_set";
pub const ABSTAINED: &str = "abstained";
/// The protocol extensions this server implements (REST: both; gRPC has no binary extension,
/// its tensors are raw bytes already).
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "classification", "model_repository"];

/// The request parameters this server knows (besides the REST `binary_data_output`).
/// `timeout` is in microseconds, as Triton's schedule-policy extension has it.
pub const PARAMETERS: [&str; 6] = [
    "rule",
    "prior",
    "coverage",
    "set",
    "abstain_below",
    "timeout",
];

/// The OIP `timeout` parameter (microseconds) as the front layer's `timeout_ms`.
pub fn timeout_ms(microseconds: f64) -> String {
    (microseconds / 1e3).to_string()
}

/// Why an inference request was not answered: the protocol's four outcomes, which each wire
/// (`http::v2`, `grpc`) maps to its own status in one place.
#[derive(Debug, thiserror::Error)]
pub enum OipError {
    /// Unknown model or version (404, NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// A route that does not take this method (405; REST only).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A bad tensor, shape, datatype, parameter or image (400, INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The server is full or not ready (503 with Retry-After, UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// A repository change without the admin token (401, or 403 when none is configured;
    /// UNAUTHENTICATED, PERMISSION_DENIED).
    #[error("{message}")]
    Unauthorized { message: String, disabled: bool },
    /// A model load that failed, or an unload that is not allowed (400, FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request's deadline passed before its answer (504, DEADLINE_EXCEEDED).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The server's own fault (500, INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl From<RepositoryError> for OipError {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::NotFound(m) | RepositoryError::NotLoaded(m) => OipError::NotFound(m),
            RepositoryError::Loading(m) => OipError::Unavailable(m),
            RepositoryError::Refused(m) => OipError::FailedPrecondition(m),
        }
    }
}

impl From<InferError> for OipError {
    fn from(e: InferError) -> Self {
        let message = e.to_string();
        match e {
            e if e.is_client_error() => OipError::Invalid(message),
            InferError::QueueFull { .. } => OipError::Unavailable(message),
            InferError::DeadlineExceeded(_) => OipError::DeadlineExceeded(message),
            _ => OipError::Internal(message),
        }
    }
}

/// The data of an input tensor.
pub enum TensorData {
    /// BYTES elements (already base64-decoded on the JSON form).
    Bytes(Vec<Bytes>),
    Fp32(Vec<f32>),
}

pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// An output the client asked for.
pub struct RequestedOutput {
    pub name: String,
    /// The classification extension: the k most probable classes as strings.
    pub classification: Option<usize>,
    /// REST binary extension: send this output as binary data.
    pub binary: bool,
}

pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    /// `None`: every output.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// The `rule`, `prior`, `coverage`, `set` and `abstain_below` request parameters, as given
    /// (resolved by the front layer; which outputs are computed is set by [`check`]).
    pub parameters: RawOptions,
    /// REST binary extension: every output as binary data unless it says otherwise.
    pub binary_output: bool,
}

pub enum OutputData {
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
    /// One byte per element on the wire, as the protocol's BOOL.
    Bool(Vec<bool>),
}

pub struct OutputTensor {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: OutputData,
    pub binary: bool,
}

pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    /// `prototypes_version`, `rule`, `temperature`, `prior`.
    pub parameters: Map<String, Value>,
    pub outputs: Vec<OutputTensor>,
    /// For the access log: images in the request and in the encoder batch it joined.
    pub images: usize,
    pub batch_size: usize,
}

#[derive(Serialize)]
pub struct TensorMetadata {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

#[derive(Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// The served model's metadata; its version is the prototypes version being served.
pub fn model_metadata(serving: &Serving) -> ModelMetadata {
    let protos = serving.store.snapshot();
    let (h, w) = serving.infer.input_size();
    let c = protos.classes.num_classes() as i64;
    let p = serving.feature_dim as i64;
    ModelMetadata {
        name: serving.manifest.name.clone(),
        versions: vec![protos.version.clone()],
        platform: "proco-serve_onnx",
        inputs: vec![
            TensorMetadata {
                name: IMAGE_INPUT,
                datatype: "BYTES",
                shape: vec![-1],
            },
            TensorMetadata {
                name: PIXELS_INPUT,
                datatype: "FP32",
                shape: vec![-1, 3, h as i64, w as i64],
            },
        ],
        outputs: vec![
            TensorMetadata {
                name: PROBABILITIES,
                datatype: "FP32",
                shape: vec![-1, c],
            },
            TensorMetadata {
                name: LOGITS,
                datatype: "FP32",
                shape: vec![-1, c],
            },
            TensorMetadata {
                name: FEATURE,
                datatype: "FP32",
                shape: vec![-1, p],
            },
        ],
    }
}

/// The loaded model `name` (and `version`, when given: the prototypes version it serves).
pub fn find_model(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<Serving>, OipError> {
    if state.models.default_name().is_none() {
        return Err(OipError::Unavailable("the models are still loading".into()));
    }
    let serving = state.models.get(name)?;
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        let served = serving.store.snapshot().version.clone();
        if v != served {
            return Err(OipError::NotFound(format!(
                "model {name:?} has no version {v:?}; the version served is {served:?} (the prototypes version)"
            )));
        }
    }
    Ok(serving)
}

/// Whether model `name` (and `version`, when given) can answer now: loaded, its inference
/// thread healthy, the server not draining. A model of the repository that is loading or not
/// loaded is not ready; an unknown one is an error.
pub fn model_ready(state: &AppState, name: &str, version: Option<&str>) -> Result<bool, OipError> {
    match find_model(state, name, version) {
        Ok(serving) => Ok(serving.readiness() == crate::batcher::Readiness::Ready
            && !state.draining.load(std::sync::atomic::Ordering::Acquire)),
        Err(OipError::Unavailable(_)) => Ok(false),
        Err(e) => {
            let loading_or_unloaded = matches!(
                state.models.get(name),
                Err(RepositoryError::Loading(_) | RepositoryError::NotLoaded(_))
            );
            if loading_or_unloaded {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Runs one inference request through the front layer.
pub async fn infer(
    state: &AppState,
    serving: &Serving,
    request: InferRequest,
) -> Result<InferResponse, OipError> {
    let limits = TensorLimits {
        max_images: state.config.max_images_per_request,
        input_size: serving.infer.input_size(),
        feature_dim: serving.feature_dim,
    };
    let Checked {
        id,
        input,
        n,
        wanted,
        parameters,
    } = check(request, &limits)?;
    let options = serving.infer.resolve(&parameters)?;
    let classified = match input.data {
        TensorData::Bytes(images) if input.name == IMAGE_INPUT => {
            let images = images
                .into_iter()
                .enumerate()
                .map(|(i, bytes)| ImageInput {
                    bytes,
                    name: Some(format!("{IMAGE_INPUT}[{i}]")),
                })
                .collect();
            serving.infer.classify(images, options).await?
        }
        TensorData::Fp32(values) if input.name == PIXELS_INPUT => {
            let per_image = values.len() / n.max(1);
            let tensors = values
                .chunks(per_image.max(1))
                .map(<[f32]>::to_vec)
                .collect();
            serving.infer.classify_tensors(tensors, options).await?
        }
        _ => {
            return Err(OipError::Internal(
                "the input's name and data disagree after checking".into(),
            ))
        }
    };
    let _responding = crate::stage_span!("response");
    Ok(response::response(serving, id, classified, &wanted, n))
}
