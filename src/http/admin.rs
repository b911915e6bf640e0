//! The admin endpoints, behind a bearer token (`admin_token`; 403 when none is configured):
//!
//! | route | what |
//! |---|---|
//! | `POST /admin/reload` | re-read the prototypes file now |
//! | `POST /admin/prototypes/examples?label=NAME[&create=true]` | learn from labelled images |
//! | `DELETE /admin/prototypes/classes/{name}` | remove a class |
//! | `POST /admin/prototypes/rollback?version=ID` | serve a kept earlier version again |
//!
//! Every change goes through the one reloader (`crate::reload`), so it is written durably
//! and swapped in like a reload; classify requests go on meanwhile.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{body, ApiError, ModelName};
use crate::reload::{Change, ChangeFailed, Changed, ReloadOutcome, Reloader, Trigger};
use crate::state::{AppState, Serving, TokenError};

/// The model the route names (the default one if none), once the bearer token checks out.
fn authorized(
    state: &AppState,
    model: &ModelName,
    headers: &HeaderMap,
) -> Result<Arc<Serving>, ApiError> {
    check_token(state, headers)?;
    model.serving(state)
}

/// The admin bearer token of a request.
fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.check_admin_token(authorization).map_err(|e| match e {
        TokenError::Disabled => ApiError::AdminDisabled(e.to_string()),
        TokenError::Wrong => ApiError::Unauthorized(e.to_string()),
    })
}

#[utoipa::path(post, path = "/admin/reload", tag = "admin", operation_id = "admin_reload", summary = "Re-read the prototypes file now",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Done", body = serde_json::Value),
        (status = 422, description = "The file is invalid; the previous version keeps serving", body = crate::http::error::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::http::error::ErrorBody),
        (status = 403, description = "No admin token configured", body = crate::http::error::ErrorBody),
        (status = 503, description = "Still loading, or the shared prototype store is unreachable (nothing was changed)", body = crate::http::error::ErrorBody)
    ))]
/// `POST /admin/reload`: re-read the prototypes file now.
pub async fn admin_reload(
    State(state): State<Arc<AppState>>,
    model: ModelName,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let serving = authorized(&state, &model, &headers)?;
    let reloader = serving.reloader.clone();
    let outcome = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin))
        .await
        .map_err(|e| ApiError::Internal(format!("reload failed: {e}")))?;
    let mut answer = match outcome {
        Ok(ReloadOutcome::Swapped { previous, current }) => json!({
            "result": "success", "version": current, "previous_version": previous,
        }),
        Ok(ReloadOutcome::Unchanged { version }) => {
            json!({"result": "unchanged", "version": version})
        }
        Err(e @ ChangeFailed::Store(_)) => return Err(e.into()),
        Err(e) => {
            return Err(ApiError::InvalidPrototypes(format!(
                "the prototypes file was rejected ({e}); the previous version is still served"
            )))
        }
    };
    // A file whose stated version is stale is served under the id of its content; say so.
    let served = serving.store.snapshot();
    if served.stated_version != served.version {
        answer["stated_version"] = json!(served.stated_version);
        answer["warning"] = json!(format!(
            "the file states version {} but its content is version {}; the content's id is served",
            served.stated_version, served.version
        ));
    }
    Ok(Json(answer).into_response())
}

#[utoipa::path(post, path = "/admin/prototypes/examples", tag = "admin", operation_id = "learn_examples", summary = "Learn a class from labelled images",
    security(("bearer" = [])),
    params(("label" = String, Query, description = "The class"), ("create" = Option<bool>, Query, description = "Create the class if it does not exist")),
    request_body(description = "The image(s)", content(("image/jpeg"), ("application/octet-stream"), ("multipart/form-data"))),
    responses(
        (status = 200, description = "Done", body = serde_json::Value),
        (status = 400, description = "Bad label or parameter, empty body", body = crate::http::error::ErrorBody),
        (status = 404, description = "No such class (and no create=true)", body = crate::http::error::ErrorBody),
        (status = 413, description = "Over the limits", body = crate::http::error::ErrorBody),
        (status = 415, description = "Not an image", body = crate::http::error::ErrorBody),
        (status = 422, description = "An image cannot be decoded, or too many classes", body = crate::http::error::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::http::error::ErrorBody),
        (status = 403, description = "No admin token configured", body = crate::http::error::ErrorBody),
        (status = 503, description = "Still loading, or the shared prototype store is unreachable (nothing was changed)", body = crate::http::error::ErrorBody)
    ))]
/// `POST /admin/prototypes/examples?label=NAME[&create=true]`: one image as the body, or
/// several as multipart; each goes through the same decoding, encoder and batches as
/// `/v1/classify`, and its unit feature is folded into the class. All or nothing.
pub async fn learn_examples(
    State(state): State<Arc<AppState>>,
    model: ModelName,
    request: Request,
) -> Result<Response, ApiError> {
    let serving = authorized(&state, &model, request.headers())?;
    let (parts, body) = request.into_parts();
    let bytes = body::read(body, &parts.headers, &state.config).await?;
    let (mut label, mut create) = (None, false);
    for (key, value) in body::query_pairs(parts.uri.query().unwrap_or(""))? {
        match key.as_str() {
            "label" => label = Some(value),
            "create" => create = body::parse_bool("create", &value)?,
            other => {
                return Err(ApiError::InvalidParameter(format!(
                    "unknown query parameter {other:?} (known: label, create)"
                )))
            }
        }
    }
    let label =
        label.ok_or_else(|| ApiError::InvalidParameter("give the class as ?label=NAME".into()))?;
    serving.reloader.check_learn(&label, create)?;
    let images = body::images(parts, bytes, state.config.max_images_per_request).await?;
    let inputs = images.infer_inputs();
    let n = inputs.len();
    let features = serving.infer.embed(inputs).await?;
    let change = Change::Learn {
        label: label.clone(),
        features,
        create,
    };
    let changed = apply(&serving.reloader, change).await?;
    let count = serving
        .store
        .snapshot()
        .document
        .classes
        .iter()
        .find(|c| c.label == label)
        .map(|c| c.count);
    let mut answer = changed_json(&changed);
    answer["label"] = json!(label);
    answer["learned"] = json!(n);
    answer["created"] = json!(changed.created);
    answer["count"] = json!(count);
    Ok(Json(answer).into_response())
}

#[utoipa::path(delete, path = "/admin/prototypes/classes/{name}", tag = "admin", operation_id = "remove_class", summary = "Remove a class",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The class")),
    responses(
        (status = 200, description = "Done", body = serde_json::Value),
        (status = 404, description = "No such class", body = crate::http::error::ErrorBody),
        (status = 409, description = "The only class", body = crate::http::error::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::http::error::ErrorBody),
        (status = 403, description = "No admin token configured", body = crate::http::error::ErrorBody),
        (status = 503, description = "Still loading, or the shared prototype store is unreachable (nothing was changed)", body = crate::http::error::ErrorBody)
    ))]
/// `DELETE /admin/prototypes/classes/{name}`.
pub async fn remove_class(
    State(state): State<Arc<AppState>>,
    model: ModelName,
    Path(params): Path<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let serving = authorized(&state, &model, &headers)?;
    let label = params.get("name").cloned().unwrap_or_default();
    let changed = apply(
        &serving.reloader,
        Change::Remove {
            label: label.clone(),
        },
    )
    .await?;
    let mut answer = changed_json(&changed);
    answer["removed"] = json!(label);
    Ok(Json(answer).into_response())
}

#[utoipa::path(post, path = "/admin/prototypes/rollback", tag = "admin", operation_id = "rollback", summary = "Serve a kept earlier version again",
    security(("bearer" = [])),
    params(("version" = String, Query, description = "A version id from GET /v1/prototypes/versions")),
    responses(
        (status = 200, description = "Done", body = serde_json::Value),
        (status = 400, description = "No version given, or an unknown parameter", body = crate::http::error::ErrorBody),
        (status = 404, description = "No kept version with that id", body = crate::http::error::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::http::error::ErrorBody),
        (status = 403, description = "No admin token configured", body = crate::http::error::ErrorBody),
        (status = 503, description = "Still loading, or the shared prototype store is unreachable (nothing was changed)", body = crate::http::error::ErrorBody)
    ))]
/// `POST /admin/prototypes/rollback?version=ID`.
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    model: ModelName,
    request: Request,
) -> Result<Response, ApiError> {
    let serving = authorized(&state, &model, request.headers())?;
    let mut version = None;
    for (key, value) in body::query_pairs(request.uri().query().unwrap_or(""))? {
        match key.as_str() {
            "version" => version = Some(value),
            other => {
                return Err(ApiError::InvalidParameter(format!(
                    "unknown query parameter {other:?} (known: version)"
                )))
            }
        }
    }
    let version = version
        .ok_or_else(|| ApiError::InvalidParameter("give the version as ?version=ID".into()))?;
    let changed = apply(&serving.reloader, Change::Rollback { version }).await?;
    Ok(Json(changed_json(&changed)).into_response())
}

async fn apply(reloader: &Arc<Reloader>, change: Change) -> Result<Changed, ApiError> {
    let reloader = reloader.clone();
    tokio::task::spawn_blocking(move || reloader.apply(change))
        .await
        .map_err(|e| ApiError::Internal(format!("the change failed: {e}")))?
        .map_err(ApiError::from)
}

fn changed_json(changed: &Changed) -> Value {
    match &changed.outcome {
        ReloadOutcome::Swapped { previous, current } => json!({
            "result": "success", "version": current, "previous_version": previous,
            "classes": changed.classes,
        }),
        ReloadOutcome::Unchanged { version } => {
            json!({"result": "unchanged", "version": version, "classes": changed.classes})
        }
    }
}
