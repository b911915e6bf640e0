//! An OIP v2 REST infer answer: JSON, or JSON then the outputs' binary data.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::HEADER_LENGTH;
use crate::oip::codec::write_output;
use crate::oip::{self, OutputData};

/// The answer's body and headers: binary data follows the JSON when any output asked for it.
pub(super) fn write(answer: oip::InferResponse) -> Response {
    let mut binary = Vec::new();
    let outputs: Vec<Value> = answer
        .outputs
        .iter()
        .map(|out| {
            let mut tensor =
                json!({"name": out.name, "datatype": out.datatype, "shape": out.shape});
            if out.binary {
                let start = binary.len();
                write_output(&out.data, &mut binary);
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
