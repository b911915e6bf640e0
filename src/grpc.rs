//! The Open Inference Protocol v2 over gRPC: `inference.GRPCInferenceService` (ServerLive,
//! ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer), on its own listener
//! (`grpc_listen`). Like the REST adapter it only converts: protobuf messages in, an
//! [`oip::InferRequest`] to `crate::oip`, the answer back, so it shares admission, decoding,
//! batches and engine with HTTP. Tensor data is taken from `raw_input_contents` (what
//! tritonclient sends) or from the typed `contents`; answers use `raw_output_contents`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::infer::RawOptions;
use crate::oip::codec::{fp32_values, split_bytes_elements, write_output};
use crate::oip::{self, InferRequest, InputTensor, OipError, RequestedOutput, TensorData};
use crate::state::{AppState, TokenError};
use crate::telemetry::traces;

/// The code generated from `proto/inference.proto` by build.rs.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// The gRPC service over the shared state.
pub struct Service {
    state: Arc<AppState>,
}

/// The tonic service to mount on a gRPC server.
pub fn service(state: Arc<AppState>) -> GrpcInferenceServiceServer<Service> {
    GrpcInferenceServiceServer::new(Service { state })
        // Encoded images and tensors are larger than tonic's 4 MiB default.
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn status(e: OipError) -> Status {
    match e {
        OipError::NotFound(m) => Status::not_found(m),
        OipError::MethodNotAllowed(m) => Status::unimplemented(m),
        OipError::Invalid(m) => Status::invalid_argument(m),
        OipError::Unauthorized {
            message,
            disabled: false,
        } => Status::unauthenticated(message),
        OipError::Unauthorized {
            message,
            disabled: true,
        } => Status::permission_denied(message),
        OipError::FailedPrecondition(m) => Status::failed_precondition(m),
        OipError::Unavailable(m) => Status::unavailable(m),
        OipError::Internal(m) => Status::internal(m),
        OipError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
    }
}

impl Service {
    /// The admin bearer token of a repository change, from the `authorization` metadata.
    fn check_token(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.state
            .check_admin_token(authorization)
            .map_err(|e| match e {
                TokenError::Disabled => Status::permission_denied(e.to_string()),
                TokenError::Wrong => Status::unauthenticated(e.to_string()),
            })
    }

    /// The API key of an inference call (`api_keys_file`), from the `authorization` metadata.
    fn check_api_key(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        match self.state.check_api_key(authorization) {
            Ok(Some(name)) => {
                tracing::debug!("gRPC ModelInfer with the API key of {name}");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Status::unauthenticated(e.to_string())),
        }
    }

    /// Counts and times one call like the HTTP routes (`route` = `grpc:<Method>`).
    fn record<T>(&self, method: &str, started: Instant, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        let metrics = &self.state.metrics;
        metrics
            .grpc_requests
            .with_label_values(&[method, code.as_str()])
            .inc();
        metrics
            .request_duration
            .with_label_values(&[format!("grpc:{method}").as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.state.readiness().is_ok();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = oip::model_ready(&self.state, &r.name, Some(&r.version)).map_err(status)?;
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "proco-serve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["classification".into(), "model_repository".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let serving = oip::find_model(&self.state, &r.name, Some(&r.version)).map_err(status)?;
        let m = oip::model_metadata(&serving);
        let tensors = |list: Vec<oip::TensorMetadata>| {
            list.into_iter()
                .map(|t| TensorMetadata {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform.into(),
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready_only = request.into_inner().ready;
        let models = self
            .state
            .models
            .index()
            .into_iter()
            .filter(|m| !ready_only || m.state == "READY")
            .map(|m| repository_index_response::ModelIndex {
                name: m.name,
                version: m.version,
                state: m.state.into(),
                reason: m.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.check_token(request.metadata())?;
        let name = request.into_inner().model_name;
        let loaded = self.state.models.load(&name).await;
        loaded.map_err(|e| status(e.into()))?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.check_token(request.metadata())?;
        let name = request.into_inner().model_name;
        let unloaded = self.state.models.unload(&name).await;
        unloaded.map_err(|e| status(e.into()))?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let deadline = grpc_timeout_ms(request.metadata());
        let span = infer_span(request.metadata());
        let result = match self.check_api_key(request.metadata()) {
            Ok(()) => {
                self.infer(request.into_inner(), deadline)
                    .instrument(span.clone())
                    .await
            }
            Err(refused) => Err(refused),
        };
        let code = result.as_ref().err().map_or(0, |s| s.code() as i32);
        span.record("rpc.grpc.status_code", code);
        self.record("ModelInfer", started, &result);
        result.map(Response::new)
    }
}

impl Service {
    /// `grpc_timeout_ms`: the client's `grpc-timeout`, used when the `timeout` parameter is not
    /// given.
    async fn infer(
        &self,
        r: ModelInferRequest,
        grpc_timeout_ms: Option<String>,
    ) -> Result<ModelInferResponse, Status> {
        let serving =
            oip::find_model(&self.state, &r.model_name, Some(&r.model_version)).map_err(status)?;
        let mut request = infer_request(r).map_err(status)?;
        if request.parameters.timeout_ms.is_none() {
            request.parameters.timeout_ms = grpc_timeout_ms;
        }
        let answer = oip::infer(&self.state, &serving, request)
            .await
            .map_err(status)?;
        Ok(infer_response(answer))
    }
}

/// The span of one ModelInfer call: the root of its trace, or the child of the caller's
/// `traceparent` metadata.
fn infer_span(metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let value = |name| metadata.get(name).and_then(|v| v.to_str().ok());
    let carrier = traces::Carrier::new(value("traceparent"), value("tracestate"));
    if !traces::should_trace(&carrier) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: traces::TARGET,
        "request",
        otel.name = "inference.GRPCInferenceService/ModelInfer",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "inference.GRPCInferenceService",
        rpc.method = "ModelInfer",
        rpc.grpc.status_code = tracing::field::Empty,
    );
    traces::adopt(&span, &carrier);
    span
}

/// The `grpc-timeout` header (an integer and a unit: H, M, S, m, u or n) in milliseconds.
fn grpc_timeout_ms(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: f64 = digits.parse().ok()?;
    let ms = match unit {
        "H" => n * 3_600_000.0,
        "M" => n * 60_000.0,
        "S" => n * 1_000.0,
        "m" => n,
        "u" => n / 1e3,
        "n" => n / 1e6,
        _ => return None,
    };
    Some(ms.to_string())
}

fn invalid(message: String) -> OipError {
    OipError::Invalid(message)
}

fn string_param(
    params: &HashMap<String, InferParameter>,
    key: &str,
) -> Result<Option<String>, OipError> {
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::StringParam(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("parameter {key:?} must be a string"))),
    }
}

/// A number parameter: double, integer or a string holding a number (clients differ), as text
/// for the front layer.
fn number_param(
    params: &HashMap<String, InferParameter>,
    key: &str,
) -> Result<Option<String>, OipError> {
    let number = match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => return Ok(None),
        Some(ParameterChoice::DoubleParam(v)) => *v,
        Some(ParameterChoice::Int64Param(v)) => *v as f64,
        Some(ParameterChoice::Uint64Param(v)) => *v as f64,
        Some(ParameterChoice::StringParam(s)) => s
            .trim()
            .parse()
            .map_err(|_| invalid(format!("parameter {key:?} must be a number")))?,
        Some(_) => return Err(invalid(format!("parameter {key:?} must be a number"))),
    };
    Ok(Some(number.to_string()))
}

fn infer_request(r: ModelInferRequest) -> Result<InferRequest, OipError> {
    if let Some(other) = r
        .parameters
        .keys()
        .find(|k| !oip::PARAMETERS.contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "unknown request parameter {other:?} (known: rule, prior, coverage, set, abstain_below, timeout)"
        )));
    }
    // Owned buffers become Bytes without a copy; the BYTES elements are then slices of them.
    let raw: Vec<Bytes> = r.raw_input_contents.into_iter().map(Bytes::from).collect();
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(invalid(format!(
            "{} inputs but {} raw_input_contents",
            r.inputs.len(),
            raw.len()
        )));
    }
    let inputs = r
        .inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| input_tensor(input, raw.get(i).cloned()))
        .collect::<Result<_, _>>()?;
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            let classification = match o
                .parameters
                .get("classification")
                .and_then(|p| p.parameter_choice.as_ref())
            {
                None => None,
                Some(ParameterChoice::Int64Param(k)) if *k > 0 => Some(*k as usize),
                Some(ParameterChoice::Uint64Param(k)) if *k > 0 => Some(*k as usize),
                Some(_) => {
                    return Err(invalid(
                        "classification must be a positive integer".to_string(),
                    ))
                }
            };
            Ok(RequestedOutput {
                name: o.name,
                classification,
                binary: true,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InferRequest {
        id: Some(r.id).filter(|id| !id.is_empty()),
        inputs,
        outputs: Some(outputs),
        parameters: RawOptions {
            rule: string_param(&r.parameters, "rule")?,
            prior: string_param(&r.parameters, "prior")?,
            coverage: number_param(&r.parameters, "coverage")?,
            set: string_param(&r.parameters, "set")?,
            abstain_below: number_param(&r.parameters, "abstain_below")?,
            timeout_ms: number_param(&r.parameters, "timeout")?
                .map(|us| us.parse().map(oip::timeout_ms).unwrap_or(us)),
            ..RawOptions::default()
        },
        binary_output: true,
    })
}

fn input_tensor(input: InferInputTensor, raw: Option<Bytes>) -> Result<InputTensor, OipError> {
    let name = input.name;
    let data = match (input.datatype.as_str(), raw) {
        ("BYTES", Some(raw)) => TensorData::Bytes(
            split_bytes_elements(&raw)
                .ok_or_else(|| invalid(format!("input {name:?}: malformed BYTES raw contents")))?,
        ),
        ("FP32", Some(raw)) => {
            TensorData::Fp32(fp32_values(&raw).ok_or_else(|| {
                invalid(format!("input {name:?}: FP32 data of {} bytes", raw.len()))
            })?)
        }
        ("BYTES", None) => TensorData::Bytes(
            input
                .contents
                .map(|c| c.bytes_contents.into_iter().map(Bytes::from).collect())
                .unwrap_or_default(),
        ),
        ("FP32", None) => {
            TensorData::Fp32(input.contents.map(|c| c.fp32_contents).unwrap_or_default())
        }
        (other, _) => {
            return Err(invalid(format!(
                "input {name:?} cannot be {other}: \"image\" is BYTES, \"pixels\" is FP32"
            )))
        }
    };
    Ok(InputTensor {
        name,
        datatype: input.datatype,
        shape: input.shape,
        data,
    })
}

fn infer_response(answer: oip::InferResponse) -> ModelInferResponse {
    let mut raw = Vec::with_capacity(answer.outputs.len());
    let outputs = answer
        .outputs
        .into_iter()
        .map(|out| {
            let mut data = Vec::new();
            write_output(&out.data, &mut data);
            raw.push(data);
            InferOutputTensor {
                name: out.name,
                datatype: out.datatype.into(),
                shape: out.shape,
                parameters: HashMap::new(),
                contents: None,
            }
        })
        .collect();
    let parameters = answer
        .parameters
        .into_iter()
        .map(|(k, v)| {
            let choice = match v {
                serde_json::Value::Number(n) => {
                    ParameterChoice::DoubleParam(n.as_f64().unwrap_or(0.0))
                }
                serde_json::Value::String(s) => ParameterChoice::StringParam(s),
                other => ParameterChoice::StringParam(other.to_string()),
            };
            (
                k,
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect();
    ModelInferResponse {
        model_name: answer.model_name,
        model_version: answer.model_version,
        id: answer.id.unwrap_or_default(),
        parameters,
        outputs,
        raw_output_contents: raw,
    }
}
