//! The Open Inference Protocol's model-repository extension over REST (Triton's form):
//! `POST /v2/repository/index`, `POST /v2/repository/models/{model}/load` and `.../unload`.
//! Loading and unloading need the admin bearer token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{V2Error, V2ErrorBody};
use crate::oip::OipError;
use crate::state::{AppState, TokenError};

#[utoipa::path(post, path = "/v2/repository/index", tag = "v2", operation_id = "v2_repository_index",
    description = "Every model of the repository with its state (READY, LOADING, UNAVAILABLE) and, when not ready, the reason. Body (optional): {\"ready\": true} lists only the ready ones.",
    request_body(description = "Optional: {\"ready\": bool}", content((serde_json::Value = "application/json"))),
    responses((status = 200, description = "[{name, version, state, reason}]", body = serde_json::Value), (status = 400, description = "Not a JSON object", body = V2ErrorBody)))]
/// `POST /v2/repository/index`.
pub async fn index(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let ready_only = match body.iter().all(u8::is_ascii_whitespace) {
        true => false,
        false => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) => o.get("ready").and_then(Value::as_bool).unwrap_or(false),
            _ => {
                return V2Error(OipError::Invalid(
                    "the body must be a JSON object, e.g. {\"ready\": true}".into(),
                ))
                .into_response()
            }
        },
    };
    let models: Vec<Value> = state
        .models
        .index()
        .into_iter()
        .filter(|m| !ready_only || m.state == "READY")
        .map(
            |m| json!({"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}),
        )
        .collect();
    Json(models).into_response()
}

#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "v2", operation_id = "v2_repository_load",
    params(("model" = String, Path, description = "The model name (its model.toml)")),
    security(("bearer" = [])),
    responses((status = 200, description = "Loaded (or already loaded)", body = serde_json::Value),
        (status = 400, description = "The load failed (broken manifest, missing or corrupt encoder, prototypes that do not fit): the reason", body = V2ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = V2ErrorBody),
        (status = 403, description = "No admin token configured", body = V2ErrorBody),
        (status = 404, description = "No such model in the repository", body = V2ErrorBody)))]
/// `POST /v2/repository/models/{model}/load`.
pub async fn load(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V2Error> {
    admin_token(&state, &headers)?;
    state.models.load(&model).await.map_err(OipError::from)?;
    Ok(Json(json!({})).into_response())
}

#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "v2", operation_id = "v2_repository_unload",
    params(("model" = String, Path, description = "The model name (its model.toml)")),
    security(("bearer" = [])),
    responses((status = 200, description = "Unloaded: its admitted requests were answered, then it was freed", body = serde_json::Value),
        (status = 400, description = "The default model cannot be unloaded", body = V2ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = V2ErrorBody),
        (status = 403, description = "No admin token configured", body = V2ErrorBody),
        (status = 404, description = "No such model in the repository", body = V2ErrorBody)))]
/// `POST /v2/repository/models/{model}/unload`.
pub async fn unload(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V2Error> {
    admin_token(&state, &headers)?;
    state.models.unload(&model).await.map_err(OipError::from)?;
    Ok(Json(json!({})).into_response())
}

/// The admin token of a repository change, refused in the protocol's error shape (401, or 403
/// when none is configured).
fn admin_token(state: &AppState, headers: &HeaderMap) -> Result<(), V2Error> {
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.check_admin_token(authorization).map_err(|e| {
        V2Error(OipError::Unauthorized {
            message: e.to_string(),
            disabled: matches!(e, TokenError::Disabled),
        })
    })
}
