//! The one error type every handler returns, and its one mapping to HTTP.
//!
//! Every error body is `{"error": {"code": "...", "message": "..."}}`. `code` is stable and
//! meant for programs; `message` is for people. Client mistakes are always 4xx: nothing a
//! client sends can produce a 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa::ToSchema;

use crate::infer::{DecodeError, InferError};
use crate::reload::{ChangeFailed, Refusal};
use crate::state::RepositoryError;

/// The error variants, each with its status and its stable code, in one table.
macro_rules! api_errors {
    ($( $(#[doc = $doc:literal])* $variant:ident => $status:ident, $code:literal; )*) => {
        #[derive(Debug, thiserror::Error)]
        pub enum ApiError {
            $( $(#[doc = $doc])* #[error("{0}")] $variant(String), )*
        }

        impl ApiError {
            pub fn status(&self) -> StatusCode {
                match self { $( ApiError::$variant(_) => StatusCode::$status, )* }
            }

            /// Stable, for programs.
            pub fn code(&self) -> &'static str {
                match self { $( ApiError::$variant(_) => $code, )* }
            }
        }
    };
}

api_errors! {
    /// No bytes where an image was expected.
    EmptyBody => BAD_REQUEST, "empty_body";
    /// Content-Type is not image/*, octet-stream or multipart.
    UnsupportedMediaType => UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type";
    /// Not an image we can decode (garbage, truncated, zero-sized...).
    InvalidImage => UNPROCESSABLE_ENTITY, "invalid_image";
    /// More pixels than `max_pixels` (checked before decoding).
    ImageTooLarge => PAYLOAD_TOO_LARGE, "image_too_large";
    /// Request body over `max_body_bytes`.
    BodyTooLarge => PAYLOAD_TOO_LARGE, "body_too_large";
    /// More multipart parts than `max_images_per_request`.
    TooManyImages => PAYLOAD_TOO_LARGE, "too_many_images";
    /// A malformed multipart body.
    InvalidMultipart => BAD_REQUEST, "invalid_multipart";
    /// The body did not arrive within body_read_timeout_ms.
    RequestTimeout => REQUEST_TIMEOUT, "request_timeout";
    /// The body ended early or broke off (fewer bytes than Content-Length).
    IncompleteBody => BAD_REQUEST, "incomplete_body";
    /// Not a rule name.
    InvalidRule => BAD_REQUEST, "invalid_rule";
    /// Not a prior name or C positive weights.
    InvalidPrior => BAD_REQUEST, "invalid_prior";
    /// `top_k` is not a positive integer.
    InvalidTopK => BAD_REQUEST, "invalid_top_k";
    /// A coverage level outside (0, 1), finer than the calibration scores support, or an unknown set kind.
    InvalidCoverage => BAD_REQUEST, "invalid_coverage";
    /// The prototypes served have no conformal scores for the rule.
    ConformalUnavailable => BAD_REQUEST, "conformal_unavailable";
    /// A feedback body that is not {id, label} or names no class.
    InvalidFeedback => BAD_REQUEST, "invalid_feedback";
    /// No answer with that id is waiting for feedback (never given, or expired).
    UnknownId => NOT_FOUND, "unknown_id";
    /// The answer already has its label.
    FeedbackExists => CONFLICT, "feedback_exists";
    /// Any other bad query parameter.
    InvalidParameter => BAD_REQUEST, "invalid_parameter";
    /// Admin endpoint without the right bearer token.
    Unauthorized => UNAUTHORIZED, "unauthorized";
    /// No admin token configured.
    AdminDisabled => FORBIDDEN, "admin_disabled";
    /// An admin reload found an invalid file (still serving the old).
    InvalidPrototypes => UNPROCESSABLE_ENTITY, "invalid_prototypes";
    /// The rule needs the linear head, which does not know every class.
    RuleUnavailable => BAD_REQUEST, "rule_unavailable";
    /// Empty, over 128 bytes, or with control characters.
    InvalidLabel => BAD_REQUEST, "invalid_label";
    /// No such class (learning without create=true, or removing).
    UnknownLabel => NOT_FOUND, "unknown_label";
    /// No kept version with that id.
    UnknownVersion => NOT_FOUND, "unknown_version";
    /// The only class cannot be removed.
    LastClass => CONFLICT, "last_class";
    /// Creating a class would exceed max_classes.
    TooManyClasses => UNPROCESSABLE_ENTITY, "too_many_classes";
    /// At capacity (with Retry-After).
    QueueFull => SERVICE_UNAVAILABLE, "queue_full";
    /// The model is still loading.
    NotReady => SERVICE_UNAVAILABLE, "not_ready";
    /// No such endpoint.
    NotFound => NOT_FOUND, "not_found";
    /// No model of that name in the repository.
    ModelNotFound => NOT_FOUND, "model_not_found";
    /// The model is in the repository but not loaded (never loaded, unloaded, or its load failed).
    ModelNotLoaded => NOT_FOUND, "model_not_loaded";
    /// A model load that failed, or an unload that is not allowed.
    ModelRefused => CONFLICT, "model_refused";
    /// The shared prototype store is unreachable: nothing was changed (with Retry-After).
    StoreUnavailable => SERVICE_UNAVAILABLE, "store_unavailable";
    /// The endpoint does not take this method.
    MethodNotAllowed => METHOD_NOT_ALLOWED, "method_not_allowed";
    /// The request's deadline (timeout_ms, request_timeout_ms) passed before its answer.
    DeadlineExceeded => GATEWAY_TIMEOUT, "deadline_exceeded";
    /// Our fault (the inference thread failed).
    Internal => INTERNAL_SERVER_ERROR, "internal";
}

/// The front layer's errors, as `/v1` answers them.
impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        let message = e.to_string();
        match e {
            InferError::InvalidRule(m) => ApiError::InvalidRule(m),
            InferError::RuleUnavailable(m) => ApiError::RuleUnavailable(m),
            InferError::InvalidPrior(m) => ApiError::InvalidPrior(m),
            InferError::InvalidTopK(m) => ApiError::InvalidTopK(m),
            InferError::InvalidCoverage(m) => ApiError::InvalidCoverage(m),
            InferError::ConformalUnavailable(m) => ApiError::ConformalUnavailable(m),
            InferError::InvalidParameter(m) => ApiError::InvalidParameter(m),
            InferError::Image { error, .. } => match error {
                DecodeError::Empty => ApiError::EmptyBody(message),
                DecodeError::TooLarge { .. } => ApiError::ImageTooLarge(message),
                _ => ApiError::InvalidImage(message),
            },
            InferError::QueueFull { .. } => ApiError::QueueFull(message),
            InferError::DeadlineExceeded(_) => ApiError::DeadlineExceeded(message),
            InferError::Failed(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error()
            && !matches!(self, ApiError::QueueFull(_) | ApiError::NotReady(_))
        {
            tracing::error!(code = self.code(), "{self}");
        } else {
            tracing::debug!(code = self.code(), status = status.as_u16(), "{self}");
        }
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let Some(id) = super::access::current_request_id() {
            error["request_id"] = json!(id);
        }
        let body = Json(json!({ "error": error }));
        let mut response = (status, body).into_response();
        match self {
            ApiError::QueueFull(_) | ApiError::NotReady(_) | ApiError::StoreUnavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// A model the route names that cannot answer.
impl From<RepositoryError> for ApiError {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::NotFound(m) => ApiError::ModelNotFound(m),
            RepositoryError::Loading(m) => ApiError::NotReady(m),
            RepositoryError::NotLoaded(m) => ApiError::ModelNotLoaded(m),
            RepositoryError::Refused(m) => ApiError::ModelRefused(m),
        }
    }
}

/// A refused change to the prototypes.
impl From<ChangeFailed> for ApiError {
    fn from(e: ChangeFailed) -> Self {
        let message = e.to_string();
        match e {
            ChangeFailed::Refused(refusal) => match refusal {
                Refusal::InvalidLabel(_) => ApiError::InvalidLabel(message),
                Refusal::UnknownLabel(_) | Refusal::NoSuchClass(_) => {
                    ApiError::UnknownLabel(message)
                }
                Refusal::TooManyClasses { .. } => ApiError::TooManyClasses(message),
                Refusal::LastClass(_) => ApiError::LastClass(message),
                Refusal::BadFeatures(_) => ApiError::InvalidImage(message),
            },
            ChangeFailed::UnknownVersion(_) => ApiError::UnknownVersion(message),
            ChangeFailed::Store(_) => ApiError::StoreUnavailable(message),
            ChangeFailed::Invalid(_) | ChangeFailed::Storage(_) => ApiError::Internal(message),
        }
    }
}

/// The `/v1` and admin error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the handlers build this body with `json!`
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable, for programs (e.g. `invalid_image`, `queue_full`).
    code: String,
    /// For people.
    message: String,
    /// The request's id (also in the `X-Request-Id` header and the access log).
    request_id: Option<String>,
}
