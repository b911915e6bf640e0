//! `POST /v1/classify` (or `PUT`, as `curl -T` sends): one image as the body (`image/*`,
//! `application/octet-stream` or no Content-Type), or
//! several as `multipart/form-data` (answered in part order, each with its part name and
//! filename).
//!
//! Query: `top_k` (default 5, clamped to C), `rule` (linear | proco | vmf | ensemble),
//! `prior` (uniform | train | adaptive | C comma-separated positive weights), `posterior`
//! (true: include the full probability vector), `coverage` (a level in (0, 1): add a conformal
//! prediction set) with `set` (class | marginal), `abstain_below` (mark answers whose top
//! probability is below it). This file only reads them off the query ([`query_options`]); the
//! front layer resolves them.
//!
//! Every answer has an `id`, kept (with its probabilities) for `POST /v1/feedback`.
//!
//! A multipart request is all or nothing: one bad part fails the whole request with the
//! 4xx of that part, and the message names it (`part "b" (b.jpg): ...`). Nothing is
//! queued for inference until every part has decoded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::access::AccessInfo;
use super::{body, ApiError, ModelName};
use crate::infer::{Classified, Prediction, PredictionSet, RawOptions, Rule};
use crate::state::{AppState, Serving};

/// The query parameters of `/v1/classify` (documentation; [`query_options`] reads them).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ClassifyQuery {
    /// Classes in the answer (default 5, clamped to the class count)
    top_k: Option<usize>,
    /// linear | proco | vmf | ensemble (default: the server's)
    rule: Option<String>,
    /// uniform | train | adaptive | C comma-separated positive weights
    prior: Option<String>,
    /// Include the full probability vector
    posterior: Option<bool>,
    /// Add a conformal prediction set that holds the true label with this probability, e.g. 0.9 (needs conformal scores in the prototypes)
    coverage: Option<f64>,
    /// class (default: coverage for every class, whatever the class mix) | marginal (coverage on average over a balanced mix)
    set: Option<String>,
    /// Mark the answer abstained when its top probability is below this
    abstain_below: Option<f64>,
    /// Milliseconds the request may take (default: the server's request_timeout_ms); past it, 504 deadline_exceeded, and images still queued are not encoded
    timeout_ms: Option<f64>,
}

/// The answers of `/v1/classify` and `/v1/models/{model}/classify` (documentation).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum ClassifyResponses {
    /// One answer (or `results`, one per part, for multipart)
    #[response(status = 200)]
    Answer(serde_json::Value),
    /// A malformed request: empty body, bad query parameter, rule or conformal scores unavailable, coverage level not served
    #[response(status = 400)]
    Malformed(crate::http::error::ErrorBody),
    /// Inference needs an API key (api_keys_file) and none or a wrong one was sent
    #[response(status = 401)]
    Unauthorized(crate::http::error::ErrorBody),
    /// No such model, or it is not loaded (the named route)
    #[response(status = 404)]
    NoModel(crate::http::error::ErrorBody),
    /// Body, image or part count over the limits
    #[response(status = 413)]
    TooLarge(crate::http::error::ErrorBody),
    /// Not an image, octet-stream or multipart
    #[response(status = 415)]
    NotAnImage(crate::http::error::ErrorBody),
    /// Not an image that can be decoded (garbage, truncated, zero-sized)
    #[response(status = 422)]
    Undecodable(crate::http::error::ErrorBody),
    /// At capacity (Retry-After) or still loading
    #[response(status = 503)]
    Unavailable(crate::http::error::ErrorBody),
    /// The request's deadline (timeout_ms, request_timeout_ms) passed before its answer
    #[response(status = 504)]
    Deadline(crate::http::error::ErrorBody),
}

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
    /// Names this answer in `POST /v1/feedback`.
    id: String,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    prediction_set: Option<SetAnswer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    abstained: Option<bool>,
    batch_size: usize,
    timings_ms: Timings,
}

/// A prediction set, or why the prototypes that answered could not give it (they changed
/// between the request's check and its batch).
#[derive(Serialize)]
#[serde(untagged)]
enum SetAnswer {
    Set(PredictionSet),
    Unavailable { error: String },
}

/// The answer to a multipart request: one entry per part, in part order.
#[derive(Serialize)]
struct MultipartAnswer {
    model: String,
    prototypes_version: String,
    results: Vec<ImageAnswer>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[utoipa::path(
    method(post, put),
    path = "/v1/classify",
    tag = "v1",
    operation_id = "classify",
    summary = "Classify images: calibrated, prior-adjusted class probabilities",
    description = "One image as the body (image/*, application/octet-stream or no Content-Type; PUT works too, as curl -T sends), or several as multipart/form-data (answered in part order).",
    params(ClassifyQuery, ("traceparent" = Option<String>, Header, description = "W3C trace context: with otlp_endpoint set, the request's trace joins the caller's (its id is in the access log either way)")),
    request_body(description = "The image(s)", content(("image/jpeg"), ("image/png"), ("application/octet-stream"), ("multipart/form-data"))),
    security((), ("bearer" = [])),
    responses(ClassifyResponses)
)]
/// `POST /v1/classify`, and `PUT` as `curl -T` sends.
pub async fn classify(
    State(state): State<Arc<AppState>>,
    model: ModelName,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let serving = model.serving(&state)?;
    // The body is read (or drained) before anything is refused, so that every error reaches a
    // client that is still sending rather than a connection reset under it.
    let (parts, body) = request.into_parts();
    let bytes = body::read(body, &parts.headers, &state.config).await?;
    let raw = query_options(parts.uri.query().unwrap_or(""))?;
    let options = serving.infer.resolve(&raw)?;
    let images = body::images(parts, bytes, state.config.max_images_per_request).await?;
    let multipart = images.multipart;
    let inputs = images.infer_inputs();
    let show_posterior = options.options.posterior;
    let classified = serving.infer.classify(inputs, options).await?;
    let _responding = crate::stage_span!("response");
    let answers = answers(
        &serving,
        classified,
        images.inputs,
        show_posterior,
        ms(started.elapsed()),
    );
    let info = answers.first().map(|a| AccessInfo {
        model: a.model.clone(),
        images: answers.len(),
        batch_size: a.batch_size,
        rule: a.rule.to_string(),
        prior: a.prior.name.to_string(),
        prototypes_version: a.prototypes_version.clone(),
    });
    let mut response = if multipart {
        let protos = answers.first().map(|a| a.prototypes_version.clone());
        Json(MultipartAnswer {
            model: serving.manifest.name.clone(),
            prototypes_version: protos.unwrap_or_default(),
            results: answers,
        })
        .into_response()
    } else {
        let one = answers
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("no result".into()))?;
        Json(one).into_response()
    };
    if let Some(info) = info {
        response.extensions_mut().insert(info);
    }
    Ok(response)
}

#[utoipa::path(
    method(post, put),
    path = "/v1/models/{model}/classify",
    tag = "v1",
    operation_id = "classify_model",
    summary = "Classify images with a named model of the repository",
    description = "One image as the body (image/*, application/octet-stream or no Content-Type; PUT works too, as curl -T sends), or several as multipart/form-data (answered in part order).",
    params(("model" = String, Path, description = "A model of the repository (GET /v1/models)"), ClassifyQuery, ("traceparent" = Option<String>, Header, description = "W3C trace context: with otlp_endpoint set, the request's trace joins the caller's (its id is in the access log either way)")),
    request_body(description = "The image(s)", content(("image/jpeg"), ("image/png"), ("application/octet-stream"), ("multipart/form-data"))),
    security((), ("bearer" = [])),
    responses(ClassifyResponses)
)]
/// `POST /v1/models/{model}/classify` (and `PUT`): as `/v1/classify`, with the named model.
pub async fn classify_model(
    state: State<Arc<AppState>>,
    model: ModelName,
    request: Request,
) -> Result<Response, ApiError> {
    classify(state, model, request).await
}

/// One answer per image, in request order; each is kept for feedback.
fn answers(
    serving: &Serving,
    classified: Classified,
    sources: Vec<body::Input>,
    show_posterior: bool,
    total: f64,
) -> Vec<ImageAnswer> {
    let Classified { result, decode } = classified;
    let protos = &result.prototypes;
    let version = &protos.version;
    result
        .scored
        .into_iter()
        .zip(sources)
        .zip(decode)
        .map(|((mut s, source), decode)| {
            let id = crate::feedback::new_id();
            let set = s.prediction_set.take().map(|set| match set {
                Ok(set) => SetAnswer::Set(set),
                Err(error) => SetAnswer::Unavailable { error },
            });
            let set_indices = match &set {
                Some(SetAnswer::Set(set)) => Some(set.labels.iter().map(|p| p.index).collect()),
                _ => None,
            };
            serving.feedback.remember(
                id.clone(),
                version,
                protos.classes.labels(),
                &s.probabilities,
                set_indices,
            );
            (id, s, set, source, decode)
        })
        .map(|(id, s, set, source, decode)| ImageAnswer {
            id,
            part: source.part,
            filename: source.filename,
            model: serving.manifest.name.clone(),
            prototypes_version: version.clone(),
            rule: s.rule,
            temperature: s.temperature,
            prior: PriorOut {
                name: s.prior_name,
                weights: s.prior_used,
            },
            predictions: s.top,
            posterior: show_posterior.then_some(s.probabilities),
            prediction_set: set,
            abstained: s.abstained,
            batch_size: result.batch_size,
            timings_ms: Timings {
                decode: ms(decode),
                queue: ms(result.queue),
                inference: ms(result.inference),
                posterior: ms(result.posterior),
                total,
            },
        })
        .collect()
}

/// The options of a `/v1/classify` query string, as given: unknown keys and malformed booleans
/// are refused here, every value is resolved by the front layer. Pure, so the fuzz targets run it.
pub fn query_options(query: &str) -> Result<RawOptions, ApiError> {
    let mut raw = RawOptions::default();
    for (key, value) in body::query_pairs(query)? {
        match key.as_str() {
            "rule" => raw.rule = Some(value),
            "prior" => raw.prior = Some(value),
            "top_k" => raw.top_k = Some(value),
            "posterior" => raw.posterior = body::parse_bool("posterior", &value)?,
            "coverage" => raw.coverage = Some(value),
            "set" => raw.set = Some(value),
            "abstain_below" => raw.abstain_below = Some(value),
            "timeout_ms" => raw.timeout_ms = Some(value),
            other => {
                return Err(ApiError::InvalidParameter(format!(
                    "unknown query parameter {other:?} (known: top_k, rule, prior, posterior, coverage, set, abstain_below, timeout_ms)"
                )))
            }
        }
    }
    Ok(raw)
}
