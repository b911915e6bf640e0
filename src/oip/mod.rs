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
use serde_json::{json, Map, Value};

use crate::batcher::BatchError;
use crate::engine::{self, Prior, PriorName, RequestOptions};
use crate::infer::{Classified, ImageInput, InferError};
use crate::state::{AppState, Serving};
use crate::vmf::Rule;

pub const IMAGE_INPUT: &str = "image";
pub const PIXELS_INPUT: &str = "pixels";
pub const PROBABILITIES: &str = "probabilities";
pub const LOGITS: &str = "logits";
pub const FEATURE: &str = "feature";
pub const PREDICTION_SET: &str = "prediction_set";
pub const ABSTAINED: &str = "abstained";
/// The protocol extensions this server implements (REST: both; gRPC has no binary extension,
/// its tensors are raw bytes already).
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "classification"];

/// Why an inference request was not answered. Each adapter maps these to its status codes.
#[derive(Debug, thiserror::Error)]
pub enum OipError {
    /// Unknown model or version (404, NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// A bad tensor, shape, datatype, parameter or image (400, INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The server is full or not ready (503 with Retry-After, UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The server's own fault (500, INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl From<InferError> for OipError {
    fn from(e: InferError) -> Self {
        let message = e.to_string();
        match e {
            InferError::Image { .. } | InferError::Batch(BatchError::RuleUnavailable { .. }) => {
                OipError::Invalid(message)
            }
            InferError::QueueFull { .. } => OipError::Unavailable(message),
            InferError::Batch(_) | InferError::DecodeTask(_) => OipError::Internal(message),
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
    /// The `rule` and `prior` request parameters.
    pub rule: Option<String>,
    pub prior: Option<String>,
    /// The `coverage`, `set` and `abstain_below` request parameters.
    pub decisions: DecisionParameters,
    /// REST binary extension: every output as binary data unless it says otherwise.
    pub binary_output: bool,
}

/// The decision parameters of a request, as given (checked by [`infer`]).
#[derive(Clone, Debug, Default)]
pub struct DecisionParameters {
    pub coverage: Option<f64>,
    pub set: Option<String>,
    pub abstain_below: Option<f64>,
}

impl DecisionParameters {
    pub const NAMES: [&'static str; 3] = ["coverage", "set", "abstain_below"];
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

/// The loaded model, if `name` (and `version`, when given) is what this server serves.
pub fn find_model(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<Serving>, OipError> {
    let serving = state
        .serving()
        .cloned()
        .ok_or_else(|| OipError::Unavailable("the model is still loading".into()))?;
    if name != serving.manifest.name {
        return Err(OipError::NotFound(format!(
            "unknown model {name:?}; this server serves {:?}",
            serving.manifest.name
        )));
    }
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

/// What a request is checked against: the prototypes served now and the server's settings.
pub struct Served {
    /// Classes of the prototypes served.
    pub classes: usize,
    /// The rules those prototypes can answer with.
    pub available_rules: Vec<Rule>,
    pub default_rule: Rule,
    pub default_prior: PriorName,
    /// `max_images_per_request`.
    pub max_images: usize,
    /// The encoder's input (height, width).
    pub input_size: (usize, usize),
}

/// A request that passed every check, ready for the front layer.
pub struct Checked {
    pub id: Option<String>,
    pub input: InputTensor,
    /// Images in the input, 1 to `max_images`.
    pub n: usize,
    pub wanted: Vec<RequestedOutput>,
    pub options: RequestOptions,
}

/// Checks a parsed request against what is served, without running it: outputs, parameters,
/// the one input's name, datatype, shape and size. Pure, so the fuzz targets run it too.
pub fn check(request: InferRequest, served: &Served) -> Result<Checked, OipError> {
    let c = served.classes;
    let wanted = wanted_outputs(
        request.outputs,
        request.binary_output,
        c,
        &request.decisions,
    )?;
    let mut options = options(served, &request.rule, &request.prior, &wanted)?;
    decide(&mut options, &request.decisions)?;
    let [input]: [InputTensor; 1] = request.inputs.try_into().map_err(|inputs: Vec<_>| {
        OipError::Invalid(format!(
            "give exactly one input, {IMAGE_INPUT:?} (BYTES) or {PIXELS_INPUT:?} (FP32); got {}",
            inputs.len()
        ))
    })?;
    let n = batch_size(&input, served.max_images)?;
    let (h, w) = served.input_size;
    if input.name == PIXELS_INPUT && input.shape[2..] != [h as i64, w as i64] {
        return Err(OipError::Invalid(format!(
            "input {PIXELS_INPUT:?} must be [N,3,{h},{w}] (the encoder's input size); got {:?}",
            input.shape
        )));
    }
    Ok(Checked {
        id: request.id,
        input,
        n,
        wanted,
        options,
    })
}

/// Runs one inference request through the front layer.
pub async fn infer(
    state: &AppState,
    serving: &Serving,
    request: InferRequest,
) -> Result<InferResponse, OipError> {
    let protos = serving.store.snapshot();
    let served = Served {
        classes: protos.classes.num_classes(),
        available_rules: protos.available_rules(),
        default_rule: state.config.default_rule,
        default_prior: serving.default_prior,
        max_images: state.config.max_images_per_request,
        input_size: serving.infer.input_size(),
    };
    let Checked {
        id,
        input,
        n,
        wanted,
        options,
    } = check(request, &served)?;
    // A prediction set needs scores that describe the probabilities served.
    if let Some(set) = &options.set {
        let temperature = serving.engine.temperature(&protos, options.rule);
        set.check(&protos, options.rule, temperature)
            .map_err(|e| OipError::Invalid(e.to_string()))?;
    }
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
    Ok(response(serving, id, classified, &wanted, n))
}

/// The number of images in the input, after checking its name, datatype, shape and size.
fn batch_size(input: &InputTensor, max_images: usize) -> Result<usize, OipError> {
    let invalid = |m: String| -> Result<usize, OipError> { Err(OipError::Invalid(m)) };
    let dims: Vec<usize> = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            OipError::Invalid(format!(
                "input {:?} has a negative dimension in its shape {:?}",
                input.name, input.shape
            ))
        })?;
    let n = match (input.name.as_str(), &input.data) {
        (IMAGE_INPUT, TensorData::Bytes(items)) => {
            if input.datatype != "BYTES" || !matches!(dims.as_slice(), [_] | [_, 1]) {
                return invalid(format!(
                    "input {IMAGE_INPUT:?} must be BYTES of shape [N] or [N,1]; got {} {:?}",
                    input.datatype, input.shape
                ));
            }
            if items.len() != dims[0] {
                return invalid(format!(
                    "input {IMAGE_INPUT:?} has shape {:?} but {} elements",
                    input.shape,
                    items.len()
                ));
            }
            dims[0]
        }
        (PIXELS_INPUT, TensorData::Fp32(values)) => {
            if input.datatype != "FP32" || dims.len() != 4 || dims[1] != 3 {
                return invalid(format!(
                    "input {PIXELS_INPUT:?} must be FP32 of shape [N,3,H,W]; got {} {:?}",
                    input.datatype, input.shape
                ));
            }
            // Checked: a shape like [2^62, 3, 32, 32] overflows the product.
            let size = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if size != Some(values.len()) {
                return invalid(format!(
                    "input {PIXELS_INPUT:?} has shape {:?} but {} values",
                    input.shape,
                    values.len()
                ));
            }
            dims[0]
        }
        (IMAGE_INPUT | PIXELS_INPUT, _) => {
            return invalid(format!(
                "input {:?} cannot be {}: {IMAGE_INPUT:?} is BYTES, {PIXELS_INPUT:?} is FP32",
                input.name, input.datatype
            ))
        }
        (other, _) => {
            return invalid(format!(
                "unknown input {other:?}; the inputs are {IMAGE_INPUT:?} (BYTES) and {PIXELS_INPUT:?} (FP32)"
            ))
        }
    };
    if n == 0 || n > max_images {
        return invalid(format!(
            "a request carries 1 to {max_images} images (max_images_per_request); got {n}"
        ));
    }
    Ok(n)
}

/// The coverage level, set kind and abstention threshold, as parameters (whether the
/// prototypes can serve the set is checked by [`infer`]).
fn decide(options: &mut RequestOptions, decisions: &DecisionParameters) -> Result<(), OipError> {
    let coverage = decisions.coverage.map(|c| c.to_string());
    options.set =
        engine::SetRequest::from_parameters(coverage.as_deref(), decisions.set.as_deref())
            .map_err(|e| OipError::Invalid(e.to_string()))?;
    options.abstain_below = decisions
        .abstain_below
        .map(engine::abstain_threshold)
        .transpose()
        .map_err(OipError::Invalid)?;
    Ok(())
}

/// The outputs to send, each with its classification count and form. Without a list, every
/// output the request's parameters make available.
fn wanted_outputs(
    requested: Option<Vec<RequestedOutput>>,
    binary_output: bool,
    classes: usize,
    decisions: &DecisionParameters,
) -> Result<Vec<RequestedOutput>, OipError> {
    let Some(requested) = requested.filter(|r| !r.is_empty()) else {
        let mut names = vec![PROBABILITIES, LOGITS, FEATURE];
        if decisions.coverage.is_some() {
            names.push(PREDICTION_SET);
        }
        if decisions.abstain_below.is_some() {
            names.push(ABSTAINED);
        }
        return Ok(names
            .into_iter()
            .map(|name| RequestedOutput {
                name: name.to_string(),
                classification: None,
                binary: binary_output,
            })
            .collect());
    };
    for out in &requested {
        let name = out.name.as_str();
        if ![PROBABILITIES, LOGITS, FEATURE, PREDICTION_SET, ABSTAINED].contains(&name) {
            return Err(OipError::Invalid(format!(
                "unknown output {:?}; the outputs are {PROBABILITIES:?}, {LOGITS:?}, {FEATURE:?}, {PREDICTION_SET:?} (with the coverage parameter) and {ABSTAINED:?} (with abstain_below)",
                out.name
            )));
        }
        if name == PREDICTION_SET && decisions.coverage.is_none() {
            return Err(OipError::Invalid(format!(
                "output {PREDICTION_SET:?} needs the \"coverage\" parameter, e.g. 0.9"
            )));
        }
        if name == ABSTAINED && decisions.abstain_below.is_none() {
            return Err(OipError::Invalid(format!(
                "output {ABSTAINED:?} needs the \"abstain_below\" parameter, e.g. 0.7"
            )));
        }
        if out.classification.is_some() && [PREDICTION_SET, ABSTAINED].contains(&name) {
            return Err(OipError::Invalid(format!(
                "classification applies to {PROBABILITIES:?}, {LOGITS:?} and {FEATURE:?}, not to {name:?}"
            )));
        }
        if out.classification == Some(0) {
            return Err(OipError::Invalid(
                "classification must be at least 1".into(),
            ));
        }
        if out.classification.is_some_and(|k| k > classes) && out.name == FEATURE {
            return Err(OipError::Invalid(format!(
                "classification on {FEATURE:?} is at most its width"
            )));
        }
    }
    Ok(requested)
}

/// The engine options: the `rule` and `prior` parameters over the server's defaults, and only
/// the extra outputs asked for.
fn options(
    served: &Served,
    rule: &Option<String>,
    prior: &Option<String>,
    wanted: &[RequestedOutput],
) -> Result<RequestOptions, OipError> {
    let available = &served.available_rules;
    let rule = match rule {
        Some(r) => {
            let rule = r
                .parse::<Rule>()
                .map_err(|e| OipError::Invalid(e.to_string()))?;
            if !available.contains(&rule) {
                return Err(OipError::Invalid(format!(
                    "rule {rule} needs the encoder's linear head, which does not know every class; use one of: {}",
                    available.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            rule
        }
        None if available.contains(&served.default_rule) => served.default_rule,
        None => Rule::Proco,
    };
    let prior = match prior {
        Some(p) => Prior::parse(p, served.classes).map_err(OipError::Invalid)?,
        None => Prior::Named(served.default_prior),
    };
    Ok(RequestOptions {
        rule,
        prior,
        top_k: 1,
        posterior: true,
        logits: wanted.iter().any(|o| o.name == LOGITS),
        features: wanted.iter().any(|o| o.name == FEATURE),
        set: None,
        abstain_below: None,
    })
}

fn response(
    serving: &Serving,
    id: Option<String>,
    classified: Classified,
    wanted: &[RequestedOutput],
    n: usize,
) -> InferResponse {
    let result = classified.result;
    let protos = &result.prototypes;
    let labels = protos.classes.labels();
    let first = &result.scored[0];
    let mut parameters = Map::new();
    parameters.insert("prototypes_version".into(), json!(protos.version));
    parameters.insert("rule".into(), json!(first.rule));
    parameters.insert("temperature".into(), json!(first.temperature));
    parameters.insert("prior".into(), json!(first.prior_name));
    if let Some(Ok(set)) = &first.prediction_set {
        parameters.insert("coverage".into(), json!(set.coverage));
        parameters.insert("set".into(), json!(set.kind));
    }
    let outputs = wanted
        .iter()
        .map(|out| {
            let c = labels.len();
            let flags = |data: Vec<bool>, shape: Vec<i64>| OutputTensor {
                name: out.name.clone(),
                datatype: "BOOL",
                shape,
                data: OutputData::Bool(data),
                binary: out.binary,
            };
            match out.name.as_str() {
                PREDICTION_SET => {
                    let mut member = vec![false; n * c];
                    for (i, s) in result.scored.iter().enumerate() {
                        if let Some(Ok(set)) = &s.prediction_set {
                            for p in &set.labels {
                                member[i * c + p.index] = true;
                            }
                        }
                    }
                    return flags(member, vec![n as i64, c as i64]);
                }
                ABSTAINED => {
                    let abstained = result.scored.iter().map(|s| s.abstained == Some(true));
                    return flags(abstained.collect(), vec![n as i64]);
                }
                _ => {}
            }
            let (values, width): (Vec<Vec<f64>>, usize) = match out.name.as_str() {
                PROBABILITIES => (
                    result
                        .scored
                        .iter()
                        .map(|s| s.probabilities.clone())
                        .collect(),
                    labels.len(),
                ),
                LOGITS => (
                    result
                        .scored
                        .iter()
                        .map(|s| s.logits.clone().unwrap_or_default())
                        .collect(),
                    labels.len(),
                ),
                _ => (
                    result
                        .features
                        .iter()
                        .map(|z| z.iter().map(|v| f64::from(*v)).collect())
                        .collect(),
                    serving.feature_dim,
                ),
            };
            output_tensor(out, &values, width, labels, n)
        })
        .collect();
    InferResponse {
        model_name: serving.manifest.name.clone(),
        model_version: protos.version.clone(),
        id,
        parameters,
        outputs,
        images: n,
        batch_size: result.batch_size,
    }
}

/// One output tensor from its rows: FP32 `[n, width]`, or the classification strings.
fn output_tensor(
    out: &RequestedOutput,
    values: &[Vec<f64>],
    width: usize,
    labels: &[String],
    n: usize,
) -> OutputTensor {
    match out.classification {
        Some(k) => {
            let k = k.min(width);
            let strings = values
                .iter()
                .flat_map(|row| {
                    let names: Vec<String> = if out.name == FEATURE {
                        (0..row.len()).map(|i| i.to_string()).collect()
                    } else {
                        labels.to_vec()
                    };
                    engine::top_k(row, k, &names)
                        .into_iter()
                        .map(|p| format!("{}:{}:{}", p.probability, p.index, p.label).into_bytes())
                        .collect::<Vec<_>>()
                })
                .collect();
            OutputTensor {
                name: out.name.clone(),
                datatype: "BYTES",
                shape: vec![n as i64, k as i64],
                data: OutputData::Bytes(strings),
                binary: out.binary,
            }
        }
        None => OutputTensor {
            name: out.name.clone(),
            datatype: "FP32",
            shape: vec![n as i64, width as i64],
            data: OutputData::Fp32(values.iter().flatten().map(|v| *v as f32).collect()),
            binary: out.binary,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Served {
        Served {
            classes: 10,
            available_rules: Rule::ALL.to_vec(),
            default_rule: Rule::Ensemble,
            default_prior: PriorName::Uniform,
            max_images: 64,
            input_size: (32, 32),
        }
    }

    fn pixels(shape: Vec<i64>, values: usize) -> InferRequest {
        InferRequest {
            id: None,
            inputs: vec![InputTensor {
                name: PIXELS_INPUT.into(),
                datatype: "FP32".into(),
                shape,
                data: TensorData::Fp32(vec![0.5; values]),
            }],
            outputs: None,
            rule: None,
            prior: None,
            decisions: Default::default(),
            binary_output: false,
        }
    }

    /// The element count of a shape whose product overflows is refused, not a panic (debug
    /// builds) or a wrapped count (release builds). Found while writing the OIP fuzz target
    /// (fuzz/regressions/oip_request/).
    #[test]
    fn a_shape_whose_size_overflows_is_refused() {
        for shape in [vec![1 << 62, 3, 32, 32], vec![1, 3, 1 << 62, 1 << 62]] {
            let Err(OipError::Invalid(message)) = check(pixels(shape, 0), &served()) else {
                panic!("accepted");
            };
            assert!(message.contains("but 0 values"), "{message}");
        }
        let ok = check(pixels(vec![2, 3, 32, 32], 2 * 3 * 32 * 32), &served());
        assert_eq!(ok.map(|c| c.n).ok(), Some(2));
    }
}
