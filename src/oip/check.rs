//! Checking an OIP request before it runs: the one input's name, datatype, shape and size, and
//! the outputs asked for. Pure, so the fuzz targets run it too; the parameters' values are
//! resolved by the front layer.

use crate::infer::RawOptions;

use super::{
    InferRequest, InputTensor, OipError, RequestedOutput, TensorData, ABSTAINED, FEATURE,
    IMAGE_INPUT, LOGITS, PIXELS_INPUT, PREDICTION_SET, PROBABILITIES,
};

/// What the input tensor is checked against.
#[derive(Clone, Copy, Debug)]
pub struct TensorLimits {
    /// `max_images_per_request`.
    pub max_images: usize,
    /// The encoder's input (height, width).
    pub input_size: (usize, usize),
    /// The width of the `feature` output.
    pub feature_dim: usize,
}

/// A request that passed every check, ready for the front layer.
pub struct Checked {
    pub id: Option<String>,
    pub input: InputTensor,
    /// Images in the input, 1 to `max_images`.
    pub n: usize,
    pub wanted: Vec<RequestedOutput>,
    /// The request's parameters, with the extra outputs to compute.
    pub parameters: RawOptions,
}

/// Checks a parsed request without running it: the outputs, and the one input's name, datatype,
/// shape and size.
pub fn check(request: InferRequest, limits: &TensorLimits) -> Result<Checked, OipError> {
    let mut parameters = request.parameters;
    let wanted = wanted_outputs(
        request.outputs,
        request.binary_output,
        &parameters,
        limits.feature_dim,
    )?;
    // The answer's top list is not sent (the classification extension ranks the posterior).
    parameters.top_k = Some("1".into());
    parameters.posterior = true;
    parameters.logits = wanted.iter().any(|o| o.name == LOGITS);
    parameters.features = wanted.iter().any(|o| o.name == FEATURE);
    let [input]: [InputTensor; 1] = request.inputs.try_into().map_err(|inputs: Vec<_>| {
        OipError::Invalid(format!(
            "give exactly one input, {IMAGE_INPUT:?} (BYTES) or {PIXELS_INPUT:?} (FP32); got {}",
            inputs.len()
        ))
    })?;
    let n = batch_size(&input, limits.max_images)?;
    let (h, w) = limits.input_size;
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
        parameters,
    })
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

/// The outputs to send, each with its classification count and form. Without a list, every
/// output the request's parameters make available.
fn wanted_outputs(
    requested: Option<Vec<RequestedOutput>>,
    binary_output: bool,
    parameters: &RawOptions,
    feature_dim: usize,
) -> Result<Vec<RequestedOutput>, OipError> {
    let Some(requested) = requested.filter(|r| !r.is_empty()) else {
        let mut names = vec![PROBABILITIES, LOGITS, FEATURE];
        if parameters.coverage.is_some() {
            names.push(PREDICTION_SET);
        }
        if parameters.abstain_below.is_some() {
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
        if name == PREDICTION_SET && parameters.coverage.is_none() {
            return Err(OipError::Invalid(format!(
                "output {PREDICTION_SET:?} needs the \"coverage\" parameter, e.g. 0.9"
            )));
        }
        if name == ABSTAINED && parameters.abstain_below.is_none() {
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
        if out.classification.is_some_and(|k| k > feature_dim) && out.name == FEATURE {
            return Err(OipError::Invalid(format!(
                "classification on {FEATURE:?} is at most its width"
            )));
        }
    }
    Ok(requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TensorLimits {
        TensorLimits {
            max_images: 64,
            input_size: (32, 32),
            feature_dim: 128,
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
            parameters: Default::default(),
            binary_output: false,
        }
    }

    /// The element count of a shape whose product overflows is refused, not a panic (debug
    /// builds) or a wrapped count (release builds). Found while writing the OIP fuzz target
    /// (fuzz/regressions/oip_request/).
    #[test]
    fn a_shape_whose_size_overflows_is_refused() {
        for shape in [vec![1 << 62, 3, 32, 32], vec![1, 3, 1 << 62, 1 << 62]] {
            let Err(OipError::Invalid(message)) = check(pixels(shape, 0), &limits()) else {
                panic!("accepted");
            };
            assert!(message.contains("but 0 values"), "{message}");
        }
        let ok = check(pixels(vec![2, 3, 32, 32], 2 * 3 * 32 * 32), &limits());
        assert_eq!(ok.map(|c| c.n).ok(), Some(2));
    }
}
