//! The small endpoints: model description, health, metrics, and the admin reload.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiError;
use crate::app::AppState;
use crate::prototypes::ReloadOutcome;
use crate::reload::{reload_now, Trigger};
use crate::vmf::Rule;

/// `GET /v1/model`: what is being served and how.
pub async fn model(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let serving = state
        .serving()
        .cloned()
        .ok_or_else(|| ApiError::NotReady("the model is still loading".into()))?;
    let protos = serving.store.snapshot();
    let cm = &protos.classes;
    let train_prior = cm.train_prior();
    let (adaptive, samples) = serving.engine.adaptive_estimate(&protos);
    let classes: Vec<_> = (0..cm.num_classes())
        .map(|i| {
            json!({
                "index": i,
                "label": cm.labels()[i],
                "count": cm.counts()[i],
                "train_prior": train_prior[i],
                "kappa": cm.kappa()[i],
                "mean_resultant_length": protos.mean_resultant_length[i],
            })
        })
        .collect();
    let temperatures: serde_json::Map<String, serde_json::Value> = Rule::ALL
        .iter()
        .map(|r| (r.to_string(), json!(protos.temperature(*r))))
        .collect();
    let c = &state.config;
    Ok(Json(json!({
        "model": serving.manifest.name,
        "labels": cm.labels(),
        "num_classes": cm.num_classes(),
        "feature_dim": serving.feature_dim,
        "input": {"height": serving.manifest.input.height, "width": serving.manifest.input.width,
                  "resize": serving.manifest.input.resize, "filter": serving.manifest.input.filter},
        "classes": classes,
        "train_counts": cm.counts(),
        "train_prior": train_prior,
        "kappa": cm.kappa(),
        "tau": cm.tau(),
        "alpha": cm.alpha(),
        "rules": Rule::ALL.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "temperatures": temperatures,
        "prototypes_version": protos.version,
        "prototypes_default_rule": protos.default_rule,
        "default_rule": c.default_rule,
        "default_prior": serving.default_prior.name(),
        "execution_provider": {
            "active": serving.provider,
            "requested": serving.requested_provider,
            "fallback_reason": serving.fallback_reason,
        },
        "adaptive_prior": {
            "estimate": adaptive,
            "samples": samples,
            "window": c.adaptive_window,
            "min_samples": c.adaptive_min_samples,
            "floor": c.adaptive_floor,
            "rule": c.default_rule,
        },
        "limits": {
            "max_batch_size": c.max_batch_size,
            "max_body_bytes": c.max_body_bytes,
            "max_pixels": c.max_pixels,
            "max_images_per_request": c.max_images_per_request,
            "queue_capacity": c.queue_capacity,
        },
    }))
    .into_response())
}

/// `GET /health/live`: the process is up.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

/// `GET /health/ready`: 200 once the model is loaded and a warm-up batch ran.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.serving() {
        Some(s) => Json(json!({
            "status": "ready",
            "provider": s.provider,
            "requested_provider": s.requested_provider,
            "model": s.manifest.name,
            "prototypes_version": s.store.snapshot().version,
        }))
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // The adaptive prior lives on its own thread: read its estimate at scrape time.
    if let Some(serving) = state.serving() {
        let protos = serving.store.snapshot();
        let (estimate, samples) = serving.engine.adaptive_estimate(&protos);
        for (label, q) in protos.classes.labels().iter().zip(&estimate) {
            state
                .metrics
                .adaptive_prior
                .with_label_values(&[label.as_str()])
                .set(*q);
        }
        state.metrics.adaptive_samples.set(samples as f64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `POST /admin/reload`: re-read the prototypes file now. Needs `Authorization: Bearer
/// <admin_token>`; answers 403 when no token is configured.
pub async fn admin_reload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(token) = state.config.admin_token.as_deref() else {
        return Err(ApiError::AdminDisabled(
            "admin endpoints are disabled: set admin_token (PROCO_ADMIN_TOKEN)".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Err(ApiError::Unauthorized(
            "missing or wrong bearer token".into(),
        ));
    }
    let serving = state
        .serving()
        .cloned()
        .ok_or_else(|| ApiError::NotReady("the model is still loading".into()))?;
    let st = state.clone();
    let outcome = tokio::task::spawn_blocking(move || reload_now(&st, &serving, Trigger::Admin))
        .await
        .map_err(|e| ApiError::Internal(format!("reload failed: {e}")))?;
    match outcome {
        Ok(ReloadOutcome::Swapped { previous, current }) => Ok(Json(json!({
            "result": "success", "version": current, "previous_version": previous,
        }))
        .into_response()),
        Ok(ReloadOutcome::Unchanged { version }) => {
            Ok(Json(json!({"result": "unchanged", "version": version})).into_response())
        }
        Err(e) => Err(ApiError::InvalidPrototypes(format!(
            "the prototypes file was rejected ({e}); the previous version is still served"
        ))),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
