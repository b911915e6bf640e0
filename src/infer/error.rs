//! Why the front layer gave a request no answer: one typed error for every protocol. Each
//! adapter maps it to its wire in one place (`http::error` for `/v1`, `oip::OipError` for both
//! OIP v2 wires).

use crate::preprocess::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Not a rule name.
    #[error("{0}")]
    InvalidRule(String),
    /// The rule needs the encoder's linear head, which does not know every class served.
    #[error("{0}")]
    RuleUnavailable(String),
    #[error("{0}")]
    InvalidPrior(String),
    #[error("{0}")]
    InvalidTopK(String),
    /// A coverage level outside (0, 1), finer than the calibration scores support, or an unknown
    /// set kind.
    #[error("{0}")]
    InvalidCoverage(String),
    /// The prototypes served have no usable conformal scores for the rule.
    #[error("{0}")]
    ConformalUnavailable(String),
    /// Any other bad option value.
    #[error("{0}")]
    InvalidParameter(String),
    /// The client's image cannot be used (the client's fault).
    #[error("{}{error}", name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default())]
    Image {
        name: Option<String>,
        error: DecodeError,
    },
    #[error("the server is at capacity ({capacity} images in flight); retry shortly")]
    QueueFull { capacity: usize },
    /// The request's deadline passed before it was answered: its images were not encoded if it
    /// was still queued.
    #[error("the deadline of {} ms passed before the answer", .0.as_millis())]
    DeadlineExceeded(std::time::Duration),
    /// The server's own fault: the inference thread failed or stopped, or a decode task died.
    #[error("{0}")]
    Failed(String),
}

impl InferError {
    /// Whether the client caused it (an option or an image), as opposed to the server being
    /// full or failing.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            InferError::QueueFull { .. } | InferError::Failed(_) | InferError::DeadlineExceeded(_)
        )
    }
}
