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

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 empty_body: no bytes where an image was expected.
    #[error("{0}")]
    EmptyBody(String),
    /// 415 unsupported_media_type: Content-Type is not image/*, octet-stream or multipart.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422 invalid_image: not an image we can decode (garbage, truncated, zero-sized...).
    #[error("{0}")]
    InvalidImage(String),
    /// 413 image_too_large: more pixels than `max_pixels` (checked before decoding).
    #[error("{0}")]
    ImageTooLarge(String),
    /// 413 body_too_large: request body over `max_body_bytes`.
    #[error("{0}")]
    BodyTooLarge(String),
    /// 413 too_many_images: more multipart parts than `max_images_per_request`.
    #[error("{0}")]
    TooManyImages(String),
    /// 400 invalid_multipart: a malformed multipart body.
    #[error("{0}")]
    InvalidMultipart(String),
    /// 408 request_timeout: the body did not arrive within body_read_timeout_ms.
    #[error("{0}")]
    RequestTimeout(String),
    /// 400 incomplete_body: the body ended early or broke off (fewer bytes than Content-Length).
    #[error("{0}")]
    IncompleteBody(String),
    /// 400 invalid_rule.
    #[error("{0}")]
    InvalidRule(String),
    /// 400 invalid_prior.
    #[error("{0}")]
    InvalidPrior(String),
    /// 400 invalid_top_k.
    #[error("{0}")]
    InvalidTopK(String),
    /// 400 invalid_coverage: a coverage level outside (0, 1), finer than the calibration
    /// scores support, or an unknown set kind.
    #[error("{0}")]
    InvalidCoverage(String),
    /// 400 conformal_unavailable: the prototypes served have no conformal scores for the rule.
    #[error("{0}")]
    ConformalUnavailable(String),
    /// 400 invalid_feedback: a feedback body that is not {id, label} or names no class.
    #[error("{0}")]
    InvalidFeedback(String),
    /// 404 unknown_id: no answer with that id is waiting for feedback (never given, or expired).
    #[error("{0}")]
    UnknownId(String),
    /// 409 feedback_exists: the answer already has its label.
    #[error("{0}")]
    FeedbackExists(String),
    /// 400 invalid_parameter: any other bad query parameter.
    #[error("{0}")]
    InvalidParameter(String),
    /// 401 unauthorized: admin endpoint without the right bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 admin_disabled: no admin token configured.
    #[error("{0}")]
    AdminDisabled(String),
    /// 422 invalid_prototypes: an admin reload found an invalid file (still serving the old).
    #[error("{0}")]
    InvalidPrototypes(String),
    /// 400 rule_unavailable: the rule needs the linear head, which does not know every class.
    #[error("{0}")]
    RuleUnavailable(String),
    /// 400 invalid_label: empty, over 128 bytes, or with control characters.
    #[error("{0}")]
    InvalidLabel(String),
    /// 404 unknown_label: no such class (learning without create=true, or removing).
    #[error("{0}")]
    UnknownLabel(String),
    /// 404 unknown_version: no kept version with that id.
    #[error("{0}")]
    UnknownVersion(String),
    /// 409 last_class: the only class cannot be removed.
    #[error("{0}")]
    LastClass(String),
    /// 422 too_many_classes: creating a class would exceed max_classes.
    #[error("{0}")]
    TooManyClasses(String),
    /// 503 queue_full, with Retry-After.
    #[error("{0}")]
    QueueFull(String),
    /// 503 not_ready: the model is still loading.
    #[error("{0}")]
    NotReady(String),
    /// 404 not_found.
    #[error("{0}")]
    NotFound(String),
    /// 405 method_not_allowed.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 500 internal: our fault (the inference thread failed).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            EmptyBody(_)
            | InvalidMultipart(_)
            | IncompleteBody(_)
            | InvalidRule(_)
            | InvalidPrior(_)
            | InvalidTopK(_)
            | InvalidParameter(_)
            | RuleUnavailable(_)
            | InvalidLabel(_)
            | InvalidCoverage(_)
            | ConformalUnavailable(_)
            | InvalidFeedback(_) => StatusCode::BAD_REQUEST,
            UnknownLabel(_) | UnknownVersion(_) | UnknownId(_) => StatusCode::NOT_FOUND,
            FeedbackExists(_) => StatusCode::CONFLICT,
            RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            LastClass(_) => StatusCode::CONFLICT,
            TooManyClasses(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            InvalidImage(_) | InvalidPrototypes(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ImageTooLarge(_) | BodyTooLarge(_) | TooManyImages(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminDisabled(_) => StatusCode::FORBIDDEN,
            NotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            QueueFull(_) | NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            EmptyBody(_) => "empty_body",
            UnsupportedMediaType(_) => "unsupported_media_type",
            InvalidImage(_) => "invalid_image",
            ImageTooLarge(_) => "image_too_large",
            BodyTooLarge(_) => "body_too_large",
            TooManyImages(_) => "too_many_images",
            InvalidMultipart(_) => "invalid_multipart",
            IncompleteBody(_) => "incomplete_body",
            RequestTimeout(_) => "request_timeout",
            InvalidRule(_) => "invalid_rule",
            InvalidPrior(_) => "invalid_prior",
            InvalidCoverage(_) => "invalid_coverage",
            ConformalUnavailable(_) => "conformal_unavailable",
            InvalidFeedback(_) => "invalid_feedback",
            UnknownId(_) => "unknown_id",
            FeedbackExists(_) => "feedback_exists",
            InvalidTopK(_) => "invalid_top_k",
            InvalidParameter(_) => "invalid_parameter",
            Unauthorized(_) => "unauthorized",
            AdminDisabled(_) => "admin_disabled",
            InvalidPrototypes(_) => "invalid_prototypes",
            RuleUnavailable(_) => "rule_unavailable",
            InvalidLabel(_) => "invalid_label",
            UnknownLabel(_) => "unknown_label",
            UnknownVersion(_) => "unknown_version",
            LastClass(_) => "last_class",
            TooManyClasses(_) => "too_many_classes",
            QueueFull(_) => "queue_full",
            NotReady(_) => "not_ready",
            NotFound(_) => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            Internal(_) => "internal",
        }
    }
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
            ApiError::QueueFull(_) | ApiError::NotReady(_) => {
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
