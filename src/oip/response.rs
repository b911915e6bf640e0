//! The answer of an OIP request: the outputs asked for, from the front layer's result.

use serde_json::{json, Map};

use crate::infer::{top_k, Classified, JobResult};
use crate::state::Serving;

use super::{
    InferResponse, OutputData, OutputTensor, RequestedOutput, ABSTAINED, FEATURE, LOGITS,
    PREDICTION_SET, PROBABILITIES,
};

/// The response: the answer's parameters and every output asked for, in the order asked.
pub(super) fn response(
    serving: &Serving,
    id: Option<String>,
    classified: Classified,
    wanted: &[RequestedOutput],
    n: usize,
) -> InferResponse {
    let result = classified.result;
    let protos = &result.prototypes;
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
        .map(|out| output(out, &result, serving.feature_dim, n))
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

/// One output of `n` images: the decision flags as BOOL, the rest as FP32 rows (or their
/// classification strings).
fn output(out: &RequestedOutput, result: &JobResult, feature_dim: usize, n: usize) -> OutputTensor {
    let labels = result.prototypes.classes.labels();
    let c = labels.len();
    let flags = |data: Vec<bool>, shape: Vec<i64>| OutputTensor {
        name: out.name.clone(),
        datatype: "BOOL",
        shape,
        data: OutputData::Bool(data),
        binary: out.binary,
    };
    let scored = &result.scored;
    let (values, width): (Vec<Vec<f64>>, usize) = match out.name.as_str() {
        PREDICTION_SET => {
            let mut member = vec![false; n * c];
            for (i, s) in scored.iter().enumerate() {
                if let Some(Ok(set)) = &s.prediction_set {
                    for p in &set.labels {
                        member[i * c + p.index] = true;
                    }
                }
            }
            return flags(member, vec![n as i64, c as i64]);
        }
        ABSTAINED => {
            let abstained = scored.iter().map(|s| s.abstained == Some(true));
            return flags(abstained.collect(), vec![n as i64]);
        }
        PROBABILITIES => (scored.iter().map(|s| s.probabilities.clone()).collect(), c),
        LOGITS => (
            scored
                .iter()
                .map(|s| s.logits.clone().unwrap_or_default())
                .collect(),
            c,
        ),
        _ => (
            result
                .features
                .iter()
                .map(|z| z.iter().map(|v| f64::from(*v)).collect())
                .collect(),
            feature_dim,
        ),
    };
    output_tensor(out, &values, width, labels, n)
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
                    top_k(row, k, &names)
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
