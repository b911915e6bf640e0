//! An OIP v2 REST infer request body: JSON, JSON then binary tensor data, or the raw binary form.

use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use super::{invalid, V2Error, HEADER_LENGTH};
use crate::oip::codec::{fp32_values, split_bytes_elements};
use crate::oip::{self, InferRequest, InputTensor, RequestedOutput, TensorData, IMAGE_INPUT};

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

/// The raw binary form: the body is the one input, `image`: length-prefixed elements, or else
/// one encoded image (an empty body is one empty image, refused as such).
fn raw_request(body: Bytes) -> InferRequest {
    let images = split_bytes_elements(&body)
        .filter(|items| !items.is_empty())
        .unwrap_or_else(|| vec![body.clone()]);
    InferRequest {
        id: None,
        inputs: vec![InputTensor {
            name: IMAGE_INPUT.into(),
            datatype: "BYTES".into(),
            shape: vec![images.len() as i64],
            data: TensorData::Bytes(images),
        }],
        outputs: None,
        parameters: Default::default(),
        binary_output: true,
    }
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
        parameters: Default::default(),
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
                "rule" => request.parameters.rule = Some(text()?),
                "prior" => request.parameters.prior = Some(text()?),
                "set" => request.parameters.set = Some(text()?),
                "coverage" | "abstain_below" | "timeout" => {
                    let number = value
                        .as_f64()
                        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                        .ok_or_else(|| invalid(format!("parameter {key:?} must be a number")))?;
                    match key.as_str() {
                        "coverage" => request.parameters.coverage = Some(number.to_string()),
                        "timeout" => request.parameters.timeout_ms = Some(oip::timeout_ms(number)),
                        _ => request.parameters.abstain_below = Some(number.to_string()),
                    }
                }
                "binary_data_output" => {
                    request.binary_output = value.as_bool().ok_or_else(|| {
                        invalid("parameter \"binary_data_output\" must be a boolean")
                    })?
                }
                other => {
                    return Err(invalid(format!(
                    "unknown request parameter {other:?} (known: rule, prior, coverage, set, abstain_below, timeout, binary_data_output)"
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
                "FP32" => TensorData::Fp32(fp32_values(&chunk).ok_or_else(|| {
                    invalid(format!("input {name:?}: FP32 data of {size} bytes"))
                })?),
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
