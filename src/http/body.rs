//! Reading what a client sends: the body (with its size limit), its media kind, the parts of
//! a multipart request, and query parameters. Every protocol adapter that takes images reads them here.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;

use super::ApiError;
use crate::config::Config;
use crate::infer::ImageInput;

/// One image of a request, with where it came from.
pub struct Input {
    pub part: Option<String>,
    pub filename: Option<String>,
    pub bytes: Bytes,
}

/// How messages name a multipart part: `part "a" (a.jpg)`.
pub fn describe_part(input: &Input) -> String {
    match (&input.part, &input.filename) {
        (Some(p), Some(f)) => format!("part {p:?} ({f})"),
        (Some(p), None) => format!("part {p:?}"),
        (None, Some(f)) => format!("part ({f})"),
        (None, None) => "unnamed part".to_string(),
    }
}

pub enum MediaKind {
    Single,
    Multipart,
}

pub fn media_kind(headers: &HeaderMap) -> Result<MediaKind, ApiError> {
    // No Content-Type (what `curl -T image.jpg` sends) is taken as one image: the decoder
    // recognises the format from the bytes themselves.
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(MediaKind::Single);
    };
    let value = value.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.starts_with("image/") || essence == "application/octet-stream" {
        Ok(MediaKind::Single)
    } else if essence == "multipart/form-data" {
        Ok(MediaKind::Multipart)
    } else {
        let hint = if essence == "application/x-www-form-urlencoded" {
            " (curl --data-binary sends this unless told otherwise: add -H 'Content-Type: image/jpeg')"
        } else {
            ""
        };
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {essence:?} is not supported: send image/*, application/octet-stream or multipart/form-data{hint}"
        )))
    }
}

/// Past the limit a body is still read, and thrown away, up to this many bytes: closing a
/// connection with request bytes unread makes the kernel reset it, and the client may then never
/// see the 413 it is owed. Beyond this bound the connection is simply dropped.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads a request's whole body under the server's limits: `max_body_bytes`, and
/// `body_read_timeout_ms` for the body to arrive.
pub async fn read(body: Body, headers: &HeaderMap, config: &Config) -> Result<Bytes, ApiError> {
    let deadline = std::time::Duration::from_millis(config.body_read_timeout_ms);
    read_body_within(body, config.max_body_bytes, headers, deadline).await
}

/// Reads the whole body within `deadline` (a client that trickles its body is answered 408
/// instead of holding a connection and a task), refusing more than `limit` bytes.
pub async fn read_body_within(
    body: Body,
    limit: usize,
    headers: &HeaderMap,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(deadline, read_body(body, limit, headers))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} ms (body_read_timeout_ms)",
                deadline.as_millis()
            )))
        })
}

/// Reads the whole body, refusing more than `limit` bytes (without keeping any of them when
/// Content-Length already says so).
async fn read_body(mut body: Body, limit: usize, headers: &HeaderMap) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut too_large = declared.is_some_and(|len| len > limit as u64);
    let mut kept = Vec::with_capacity(if too_large {
        0
    } else {
        declared.unwrap_or(0) as usize
    });
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::IncompleteBody(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        too_large |= seen > limit;
        if too_large {
            if seen > DRAIN_LIMIT {
                break;
            }
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if too_large {
        return Err(ApiError::BodyTooLarge(format!(
            "the request body is larger than the limit of {limit} bytes"
        )));
    }
    Ok(Bytes::from(kept))
}

pub async fn read_parts(req: Request, max_images: usize) -> Result<Vec<Input>, ApiError> {
    let mut multipart = Multipart::from_request(req, &()).await.map_err(|e| {
        ApiError::InvalidMultipart(format!("invalid multipart request: {}", e.body_text()))
    })?;
    let mut inputs = Vec::new();
    loop {
        let field = multipart.next_field().await.map_err(|e| {
            ApiError::InvalidMultipart(format!("invalid multipart body: {}", e.body_text()))
        })?;
        let Some(field) = field else { break };
        if inputs.len() == max_images {
            return Err(ApiError::TooManyImages(format!(
                "more than {max_images} images in one request"
            )));
        }
        let part = field.name().map(str::to_string);
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(|c| c.to_ascii_lowercase());
        let mut input = Input {
            part,
            filename,
            bytes: Bytes::new(),
        };
        if let Some(ct) = &content_type {
            if !(ct.starts_with("image/") || ct.starts_with("application/octet-stream")) {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "{}: Content-Type {ct:?} is not an image",
                    describe_part(&input)
                )));
            }
        }
        input.bytes = field.bytes().await.map_err(|e| {
            ApiError::InvalidMultipart(format!("{}: {}", describe_part(&input), e.body_text()))
        })?;
        if input.bytes.is_empty() {
            return Err(ApiError::EmptyBody(format!(
                "{} is empty",
                describe_part(&input)
            )));
        }
        inputs.push(input);
    }
    if inputs.is_empty() {
        return Err(ApiError::EmptyBody(
            "the multipart request has no parts".into(),
        ));
    }
    Ok(inputs)
}

/// The images of a request whose body has been read: the body itself, or the parts of a
/// multipart body (`multipart` says which, since the two are answered differently).
pub struct Images {
    pub inputs: Vec<Input>,
    pub multipart: bool,
}

impl Images {
    /// The images as the front layer takes them (sharing the buffers); a multipart part is
    /// named in error messages as `part "a" (a.jpg)`.
    pub fn infer_inputs(&self) -> Vec<ImageInput> {
        self.inputs
            .iter()
            .map(|input| ImageInput {
                bytes: input.bytes.clone(),
                name: self.multipart.then(|| describe_part(input)),
            })
            .collect()
    }
}

/// Splits a read body into its images, as its Content-Type says.
pub async fn images(
    parts: axum::http::request::Parts,
    bytes: Bytes,
    max_images: usize,
) -> Result<Images, ApiError> {
    match media_kind(&parts.headers)? {
        MediaKind::Single => {
            if bytes.is_empty() {
                return Err(ApiError::EmptyBody(
                    "the request body is empty; send an image".into(),
                ));
            }
            Ok(Images {
                inputs: vec![Input {
                    part: None,
                    filename: None,
                    bytes,
                }],
                multipart: false,
            })
        }
        MediaKind::Multipart => {
            let request = Request::from_parts(parts, Body::from(bytes));
            Ok(Images {
                inputs: read_parts(request, max_images).await?,
                multipart: true,
            })
        }
    }
}

/// The pairs of a query string, percent-decoded.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::InvalidParameter("malformed query string".into()))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::InvalidParameter(format!("malformed query string: {e}")))
}

/// A boolean query parameter: true | 1 | yes | (empty), false | 0 | no.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(ApiError::InvalidParameter(format!(
            "{key} {other:?} is not true or false"
        ))),
    }
}
