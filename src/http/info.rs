//! The informational endpoints: model description, health, metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{ApiError, ModelName};
use crate::infer::{Prototypes, Readiness, Rule};
use crate::state::{AppState, NotReady};

#[utoipa::path(get, path = "/v1/model", tag = "v1", operation_id = "model",
    summary = "What is being served: labels, counts, kappa, rules, temperatures, prototypes version, provider, limits",
    responses((status = 200, description = "The model", body = serde_json::Value),(status = 503, description = "Still loading", body = crate::http::error::ErrorBody)))]
/// `GET /v1/model`: what is being served and how.
pub async fn model(
    State(state): State<Arc<AppState>>,
    model: ModelName,
) -> Result<Response, ApiError> {
    let serving = model.serving(&state)?;
    let protos = serving.store.snapshot();
    let cm = &protos.classes;
    let train_prior = cm.train_prior();
    let (adaptive, samples) = serving.engine.adaptive_estimate(&protos);
    let temperatures: serde_json::Map<String, serde_json::Value> = Rule::ALL
        .iter()
        .map(|r| {
            (
                r.to_string(),
                json!(serving.engine.temperature(&protos, *r)),
            )
        })
        .collect();
    let c = &state.config;
    Ok(Json(json!({
        "model": serving.manifest.name,
        "labels": cm.labels(),
        "num_classes": cm.num_classes(),
        "feature_dim": serving.feature_dim,
        "schema_version": protos.document.schema_version,
        "input": {"height": serving.manifest.input.height, "width": serving.manifest.input.width,
                  "resize": serving.manifest.input.resize, "filter": serving.manifest.input.filter},
        "classes": class_table(&protos),
        "train_counts": cm.counts(),
        "train_prior": train_prior,
        "kappa": cm.kappa(),
        "tau": cm.tau(),
        "alpha": cm.alpha(),
        "rules": protos.available_rules().iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "temperatures": temperatures,
        "temperatures_from": if serving.manifest.temperatures.is_some() {
            format!("model.toml [variants.{}.temperatures]", serving.manifest.variant)
        } else {
            "prototypes".to_string()
        },
        "encoder_variant": serving.manifest.variant,
        "encoder_variants": serving.manifest.variants,
        "prototypes_version": protos.version,
        "prototype_store": serving.reloader.store_shown(),
        "prototypes_default_rule": protos.default_rule,
        "default_rule": c.default_rule,
        "default_prior": serving.default_prior,
        "execution_provider": {
            "active": serving.provider.active,
            "requested": serving.provider.requested,
            "fallback_reason": serving.provider.fallback_reason,
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

/// One entry per class, in index order.
fn class_table(protos: &Prototypes) -> Vec<serde_json::Value> {
    let cm = &protos.classes;
    let train_prior = cm.train_prior();
    (0..cm.num_classes())
        .map(|i| {
            json!({
                "index": i,
                "label": cm.labels()[i],
                "count": cm.counts()[i],
                "train_prior": train_prior[i],
                "kappa": cm.kappa()[i],
                "mean_resultant_length": protos.mean_resultant_length[i],
                "source": protos.sources[i],
                "in_linear_head": protos.head_index[i].is_some(),
            })
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/models", tag = "v1", operation_id = "models",
    summary = "The model repository",
    description = "Every model of the repository with its state (READY, LOADING, UNAVAILABLE with the reason) and which one the routes that name no model serve. /v1/models/{model}/classify (and /v1/models/{model}, /feedback, /monitoring, /prototypes/versions, and /admin/models/{model}/...) serve a named model.",
    responses((status = 200, description = "{default, models: [{name, version, state, reason, default}]}", body = serde_json::Value)))]
/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "default": state.models.default_name(),
        "repository": state.config.model_repository,
        "models": state.models.index(),
    }))
}

#[utoipa::path(get, path = "/health/live", tag = "health", operation_id = "live",
    responses((status = 200, description = "The process runs", body = serde_json::Value)))]
/// `GET /health/live`: the process is up.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

#[utoipa::path(get, path = "/health/ready", tag = "health", operation_id = "ready",
    responses((status = 200, description = "Ready: names the provider, model and prototypes version", body = serde_json::Value),(status = 503, description = "Loading, or the inference thread stopped or is failing (with the reason)", body = serde_json::Value)))]
/// `GET /health/ready`: 200 once the model is loaded and a warm-up batch ran, for as long as
/// the inference thread runs and its batches succeed; 503 with the reason otherwise.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let reason = match state.readiness() {
        Ok(s) => {
            return Json(json!({
                "status": "ready",
                "provider": s.provider.active,
                "requested_provider": s.provider.requested,
                "model": s.manifest.name,
                "encoder_variant": s.manifest.variant,
                "prototypes_version": s.store.snapshot().version,
            }))
            .into_response()
        }
        Err(reason) => reason,
    };
    let body = match reason {
        NotReady::Loading => json!({"status": "loading"}),
        NotReady::Draining => json!({
            "status": "draining",
            "reason": "the server is shutting down and finishing the requests it has admitted",
        }),
        NotReady::Inference(Readiness::Stopped) => json!({
            "status": "unavailable",
            "reason": "the inference thread has stopped",
        }),
        NotReady::Inference(Readiness::Failing {
            batches,
            last_error,
        }) => json!({
            "status": "unavailable",
            "reason": format!("the last {batches} inference batches failed; the last error: {last_error}"),
        }),
        NotReady::Inference(Readiness::Ready) => json!({"status": "unavailable"}),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(body),
    )
        .into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // Readiness, the adaptive prior (on its own thread), drift and feedback are read at
    // scrape time.
    let _ = state.readiness();
    super::monitor::refresh_gauges(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/prototypes/versions", tag = "v1", operation_id = "prototype_versions",
    responses((status = 200, description = "The version served and the kept history, newest first", body = serde_json::Value),(status = 503, description = "Still loading", body = crate::http::error::ErrorBody)))]
/// `GET /v1/prototypes/versions`: the version served and the kept history (newest first).
pub async fn versions(
    State(state): State<Arc<AppState>>,
    model: ModelName,
) -> Result<Response, ApiError> {
    let serving = model.serving(&state)?;
    let reloader = serving.reloader.clone();
    let mut entries = tokio::task::spawn_blocking(move || reloader.versions())
        .await
        .map_err(|e| ApiError::Internal(format!("cannot read the history: {e}")))??;
    entries.reverse();
    Ok(Json(json!({
        "current": serving.store.snapshot().version,
        "keep": state.config.prototype_history,
        "versions": entries,
    }))
    .into_response())
}
