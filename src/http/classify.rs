//! `POST /v1/classify` (or `PUT`, as `curl -T` sends): one image as the body (`image/*`,
//! `application/octet-stream` or no Content-Type), or
//! several as `multipart/form-data` (answered in part order, each with its part name and
//! filename).
//!
//! Query: `top_k` (default 5, clamped to C), `rule` (linear | proco | vmf | ensemble),
//! `prior` (uniform | train | adaptive | C comma-separated positive weights), `posterior`
//! (true: include the full probability vector).
//!
//! A multipart request is all or nothing: one bad part fails the whole request with the
//! 4xx of that part, and the message names it (`part "b" (b.jpg): ...`). Nothing is
//! queued for inference until every part has decoded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde::Serialize;

use super::ApiError;
use crate::app::{AppState, Serving};
use crate::batcher::BatchError;
use crate::engine::{Prediction, PriorSpec, RequestOptions};
use crate::preprocess;
use crate::vmf::Rule;

const DEFAULT_TOP_K: usize = 5;

/// Timings of one image, in milliseconds.
#[derive(Serialize)]
struct Timings {
    decode: f64,
    queue: f64,
    inference: f64,
    posterior: f64,
    total: f64,
}

#[derive(Serialize)]
struct PriorOut {
    name: &'static str,
    /// The vector used, for `adaptive` and explicit weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    weights: Option<Vec<f64>>,
}

/// The answer for one image.
#[derive(Serialize)]
struct ImageAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<String>,
    model: String,
    prototypes_version: String,
    rule: Rule,
    temperature: f64,
    prior: PriorOut,
    predictions: Vec<Prediction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    posterior: Option<Vec<f64>>,
    batch_size: usize,
    timings_ms: Timings,
}

/// The answer to a multipart request: one entry per part, in part order.
#[derive(Serialize)]
struct MultipartAnswer {
    model: String,
    prototypes_version: String,
    results: Vec<ImageAnswer>,
}

/// One decoded input, with where it came from.
struct Input {
    part: Option<String>,
    filename: Option<String>,
    bytes: Bytes,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub async fn classify(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let serving = state
        .serving()
        .cloned()
        .ok_or_else(|| ApiError::NotReady("the model is still loading".into()))?;
    // The body is read (or drained) before anything is refused, so that every error reaches a
    // client that is still sending rather than a connection reset under it.
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, state.config.max_body_bytes, &parts.headers).await?;
    let options = parse_query(parts.uri.query().unwrap_or(""), &state, &serving)?;
    let kind = media_kind(&parts.headers)?;
    let inputs = match kind {
        MediaKind::Single => {
            if bytes.is_empty() {
                return Err(ApiError::EmptyBody(
                    "the request body is empty; send an image".into(),
                ));
            }
            vec![Input {
                part: None,
                filename: None,
                bytes,
            }]
        }
        MediaKind::Multipart => {
            let req = Request::from_parts(parts, Body::from(bytes));
            read_parts(req, state.config.max_images_per_request).await?
        }
    };
    let multipart = matches!(kind, MediaKind::Multipart);

    // Admission before any decoding work: a full server says so at once, and the permits
    // (one per image, held until the answer) also bound how many images are being decoded.
    // Every decode task and the queued job hold a share, so room is given back only when the
    // work is really done, even if this handler returns early with an error.
    let admission = Arc::new(serving.batcher.try_admit(inputs.len()).map_err(|_| {
        ApiError::QueueFull(format!(
            "the server is at capacity ({} images in flight); retry shortly",
            state.config.queue_capacity
        ))
    })?);

    // Decode every image off the async runtime, in parallel.
    let mut handles = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let bytes = input.bytes.clone();
        let serving = serving.clone();
        let metrics = state.metrics.clone();
        let admission = admission.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            let _admission = admission;
            let t = Instant::now();
            let r = preprocess::decode(&bytes, &serving.limits)
                .map(|img| preprocess::to_chw(&img, &serving.manifest));
            let took = t.elapsed();
            metrics.decode_duration.observe(took.as_secs_f64());
            (r, took)
        }));
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut decode_times = Vec::with_capacity(inputs.len());
    for (handle, input) in handles.into_iter().zip(&inputs) {
        let (result, took) = handle
            .await
            .map_err(|e| ApiError::Internal(format!("image decoding failed: {e}")))?;
        let tensor = result.map_err(|e| {
            ApiError::from_decode(e, multipart.then(|| describe_part(input)).as_deref())
        })?;
        tensors.push(tensor);
        decode_times.push(took);
    }

    let result = serving
        .batcher
        .submit(tensors, options, admission)
        .await
        .map_err(|e| match e {
            BatchError::Failed(m) => ApiError::Internal(m),
            BatchError::Stopped => ApiError::Internal("the inference thread stopped".into()),
        })?;

    let total = ms(started.elapsed());
    let protos = &result.prototypes;
    let answers: Vec<ImageAnswer> = result
        .scored
        .into_iter()
        .zip(inputs)
        .zip(decode_times)
        .map(|((s, input), decode)| ImageAnswer {
            part: input.part,
            filename: input.filename,
            model: serving.manifest.name.clone(),
            prototypes_version: protos.version.clone(),
            rule: s.rule,
            temperature: s.temperature,
            prior: PriorOut {
                name: s.prior_name,
                weights: s.prior_used,
            },
            predictions: s.top,
            posterior: s.posterior,
            batch_size: result.batch_size,
            timings_ms: Timings {
                decode: ms(decode),
                queue: ms(result.queue),
                inference: ms(result.inference),
                posterior: ms(result.posterior),
                total,
            },
        })
        .collect();
    if multipart {
        Ok(Json(MultipartAnswer {
            model: serving.manifest.name.clone(),
            prototypes_version: protos.version.clone(),
            results: answers,
        })
        .into_response())
    } else {
        let one = answers
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("no result".into()))?;
        Ok(Json(one).into_response())
    }
}

fn describe_part(input: &Input) -> String {
    match (&input.part, &input.filename) {
        (Some(p), Some(f)) => format!("part {p:?} ({f})"),
        (Some(p), None) => format!("part {p:?}"),
        (None, Some(f)) => format!("part ({f})"),
        (None, None) => "unnamed part".to_string(),
    }
}

enum MediaKind {
    Single,
    Multipart,
}

fn media_kind(headers: &HeaderMap) -> Result<MediaKind, ApiError> {
    // No Content-Type (what `curl -T image.jpg` sends) is taken as one image: the decoder
    // recognises the format from the bytes themselves.
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(MediaKind::Single);
    };
    let value = value.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.starts_with("image/") || essence == "application/octet-stream" {
        Ok(MediaKind::Single)
    } else if essence == "multipart/form-data" {
        Ok(MediaKind::Multipart)
    } else {
        let hint = if essence == "application/x-www-form-urlencoded" {
            " (curl --data-binary sends this unless told otherwise: add -H 'Content-Type: image/jpeg')"
        } else {
            ""
        };
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {essence:?} is not supported: send image/*, application/octet-stream or multipart/form-data{hint}"
        )))
    }
}

/// Past the limit a body is still read, and thrown away, up to this many bytes: closing a
/// connection with request bytes unread makes the kernel reset it, and the client may then never
/// see the 413 it is owed. Beyond this bound the connection is simply dropped.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads the whole body, refusing more than `limit` bytes (without keeping any of them when
/// Content-Length already says so).
async fn read_body(mut body: Body, limit: usize, headers: &HeaderMap) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut too_large = declared.is_some_and(|len| len > limit as u64);
    let mut kept = Vec::with_capacity(if too_large {
        0
    } else {
        declared.unwrap_or(0) as usize
    });
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::IncompleteBody(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        too_large |= seen > limit;
        if too_large {
            if seen > DRAIN_LIMIT {
                break;
            }
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if too_large {
        return Err(ApiError::BodyTooLarge(format!(
            "the request body is larger than the limit of {limit} bytes"
        )));
    }
    Ok(Bytes::from(kept))
}

async fn read_parts(req: Request, max_images: usize) -> Result<Vec<Input>, ApiError> {
    let mut multipart = Multipart::from_request(req, &()).await.map_err(|e| {
        ApiError::InvalidMultipart(format!("invalid multipart request: {}", e.body_text()))
    })?;
    let mut inputs = Vec::new();
    loop {
        let field = multipart.next_field().await.map_err(|e| {
            ApiError::InvalidMultipart(format!("invalid multipart body: {}", e.body_text()))
        })?;
        let Some(field) = field else { break };
        if inputs.len() == max_images {
            return Err(ApiError::TooManyImages(format!(
                "more than {max_images} images in one request"
            )));
        }
        let part = field.name().map(str::to_string);
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(|c| c.to_ascii_lowercase());
        let mut input = Input {
            part,
            filename,
            bytes: Bytes::new(),
        };
        if let Some(ct) = &content_type {
            if !(ct.starts_with("image/") || ct.starts_with("application/octet-stream")) {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "{}: Content-Type {ct:?} is not an image",
                    describe_part(&input)
                )));
            }
        }
        input.bytes = field.bytes().await.map_err(|e| {
            ApiError::InvalidMultipart(format!("{}: {}", describe_part(&input), e.body_text()))
        })?;
        if input.bytes.is_empty() {
            return Err(ApiError::EmptyBody(format!(
                "{} is empty",
                describe_part(&input)
            )));
        }
        inputs.push(input);
    }
    if inputs.is_empty() {
        return Err(ApiError::EmptyBody(
            "the multipart request has no parts".into(),
        ));
    }
    Ok(inputs)
}

/// Parses the query string into engine options, with the server's defaults.
fn parse_query(
    query: &str,
    state: &AppState,
    serving: &Serving,
) -> Result<RequestOptions, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query)?;
    let c = serving.num_classes;
    let mut options = RequestOptions {
        rule: state.config.default_rule,
        prior: serving.default_prior.clone(),
        top_k: DEFAULT_TOP_K.min(c),
        posterior: false,
    };
    for (key, value) in pairs {
        match key.as_str() {
            "rule" => {
                options.rule = value
                    .parse::<Rule>()
                    .map_err(|e| ApiError::InvalidRule(e.to_string()))?
            }
            "prior" => {
                options.prior = PriorSpec::parse(&value, c).map_err(ApiError::InvalidPrior)?
            }
            "top_k" => {
                let k: usize = value.trim().parse().map_err(|_| {
                    ApiError::InvalidTopK(format!("top_k {value:?} is not a positive integer"))
                })?;
                if k == 0 {
                    return Err(ApiError::InvalidTopK("top_k must be at least 1".into()));
                }
                options.top_k = k.min(c);
            }
            "posterior" => {
                options.posterior = match value.as_str() {
                    "true" | "1" | "yes" | "" => true,
                    "false" | "0" | "no" => false,
                    other => {
                        return Err(ApiError::InvalidParameter(format!(
                            "posterior {other:?} is not true or false"
                        )))
                    }
                }
            }
            other => {
                return Err(ApiError::InvalidParameter(format!(
                    "unknown query parameter {other:?} (known: top_k, rule, prior, posterior)"
                )))
            }
        }
    }
    Ok(options)
}

fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::InvalidParameter("malformed query string".into()))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::InvalidParameter(format!("malformed query string: {e}")))
}
