//! Watching calibration in production: `POST /v1/feedback` (the true label of an answer) and
//! `GET /v1/monitoring` (drift of the adaptive prior from the training prior, abstentions, and
//! the feedback window's accuracy, NLL, Brier score, ECE and set coverage). The same figures
//! are Prometheus gauges, refreshed at every scrape by [`refresh_gauges`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ModelName};
use crate::feedback::FeedbackError;
use crate::state::{AppState, Serving};

/// The body of `POST /v1/feedback`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The `id` of a `/v1/classify` answer.
    id: String,
    /// Its true label, one of the model's classes.
    label: String,
}

#[utoipa::path(post, path = "/v1/feedback", tag = "v1", operation_id = "feedback",
    summary = "Give the true label of an answer",
    description = "Grades the answer with that id against its true label and adds it to the feedback window (GET /v1/monitoring, proco_feedback_* metrics).",
    request_body(content = FeedbackBody, content_type = "application/json"),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Accepted: whether the answer was right, whether its set held the label, labelled answers in the window", body = serde_json::Value),
        (status = 401, description = "api_keys_file is set and the request has no valid key (Authorization: Bearer KEY)", body = crate::http::error::ErrorBody),
        (status = 400, description = "Not {id, label} JSON, or a label the model does not have", body = crate::http::error::ErrorBody),
        (status = 404, description = "No answer with that id is waiting (never given, or forgotten)", body = crate::http::error::ErrorBody),
        (status = 409, description = "The answer already has its label", body = crate::http::error::ErrorBody)
    ))]
/// `POST /v1/feedback`: `{"id": ..., "label": ...}`.
pub async fn feedback(
    State(state): State<Arc<AppState>>,
    model: ModelName,
    body: axum::body::Bytes,
) -> Response {
    let serving = match model.serving(&state) {
        Ok(serving) => serving,
        Err(e) => return e.into_response(),
    };
    let counted = |result: &str| serving.metrics.feedback.with_label_values(&[result]).inc();
    let body: FeedbackBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            counted("invalid");
            return ApiError::InvalidFeedback(format!(
                "the body must be JSON {{\"id\": \"<answer id>\", \"label\": \"<true label>\"}}: {e}"
            ))
            .into_response();
        }
    };
    match serving.feedback.label(&body.id, &body.label) {
        Ok(accepted) => {
            counted("accepted");
            Json(accepted).into_response()
        }
        Err(e) => {
            let message = e.to_string();
            let (result, error) = match e {
                FeedbackError::UnknownId(..) => ("unknown_id", ApiError::UnknownId(message)),
                FeedbackError::UnknownLabel { .. } => {
                    ("invalid", ApiError::InvalidFeedback(message))
                }
                FeedbackError::AlreadyLabelled(_) => {
                    ("duplicate", ApiError::FeedbackExists(message))
                }
            };
            counted(result);
            error.into_response()
        }
    }
}

#[utoipa::path(get, path = "/v1/monitoring", tag = "v1", operation_id = "monitoring",
    summary = "Drift, abstention and calibration on real traffic",
    responses(
        (status = 200, description = "prior (training and adaptive, total variation, KL, drift_warn, drifting), abstention counts, feedback window metrics (null while nothing is labelled)", body = serde_json::Value),
        (status = 503, description = "Still loading", body = crate::http::error::ErrorBody)
    ))]
/// `GET /v1/monitoring`.
pub async fn monitoring(
    State(state): State<Arc<AppState>>,
    model: ModelName,
) -> Result<Json<Value>, ApiError> {
    let serving = model.serving(&state)?;
    let protos = serving.store.snapshot();
    let drift = serving.engine.prior_drift(&protos);
    let decisions = |r: &str| {
        serving
            .metrics
            .abstention_decisions
            .with_label_values(&[r])
            .get()
    };
    let (answered, abstained) = (decisions("answered"), decisions("abstained"));
    Ok(Json(json!({
        "prototypes_version": protos.version,
        "labels": protos.classes.labels(),
        "prior": {
            "train": drift.train,
            "adaptive": drift.adaptive,
            "samples": drift.samples,
            "total_variation": drift.total_variation,
            "kl": drift.kl,
            "drift_warn": state.config.drift_warn,
            "drifting": drift.total_variation > state.config.drift_warn,
        },
        "abstention": {"answers": answered + abstained, "abstained": abstained},
        "feedback": serving.feedback.metrics(),
    })))
}

/// The adaptive prior against the training prior and the feedback window, of every loaded
/// model, read once per scrape.
pub fn refresh_gauges(state: &AppState) {
    for serving in state.models.loaded() {
        refresh_model_gauges(&serving);
    }
}

fn refresh_model_gauges(serving: &Serving) {
    let metrics = &serving.metrics;
    {
        let protos = serving.store.snapshot();
        let drift = serving.engine.prior_drift(&protos);
        // Labels change when classes are learned or removed: only the served ones are shown.
        metrics.adaptive_prior.reset();
        for (label, q) in protos.classes.labels().iter().zip(&drift.adaptive) {
            metrics
                .adaptive_prior
                .with_label_values(&[label.as_str()])
                .set(*q);
        }
        metrics.adaptive_samples.set(drift.samples as f64);
        metrics
            .prior_drift_total_variation
            .set(drift.total_variation);
        metrics.prior_drift_kl.set(drift.kl);
    }
    let window = serving.feedback.metrics();
    metrics.feedback_labelled.set(window.labelled as f64);
    for (name, value) in [
        ("accuracy", window.accuracy),
        ("nll", window.nll),
        ("brier", window.brier),
        ("ece", window.ece),
        ("set_coverage", window.set_coverage),
    ] {
        metrics
            .feedback_metrics
            .with_label_values(&[name])
            .set(value.unwrap_or(f64::NAN));
    }
}
