//! The admin endpoints, behind a bearer token: `POST /admin/reload`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiError;
use crate::prototypes::ReloadOutcome;
use crate::reload::Trigger;
use crate::state::AppState;

/// `POST /admin/reload`: re-read the prototypes file now. Needs `Authorization: Bearer
/// <admin_token>`; answers 403 when no token is configured.
pub async fn admin_reload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(token) = state.config.admin_token() else {
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
    let reloader = serving.reloader.clone();
    let outcome = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin))
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
