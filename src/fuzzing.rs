//! The parsers that see untrusted bytes, each behind one entry point that takes bytes as the
//! server receives them and runs the server's own code with the default configuration's limits.
//! The fuzz targets (`fuzz/`) call these, and so does their replay test
//! (`tests/fuzz_corpus.rs`), so a committed corpus exercises exactly what was fuzzed.
//!
//! Each entry returns `Ok` with a short description of what was accepted, or `Err` with the
//! parser's message; a panic (including a failed check of what was accepted) is a bug.
//! Not part of the server's API.

use std::path::Path;
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use bytes::Bytes;

use crate::config::Config;
use crate::engine::{Prior, RequestOptions};
use crate::http::{body, classify, v2};
use crate::infer::options::{self, Served};
use crate::manifest::ModelManifest;
use crate::oip::{self, TensorData};
use crate::preprocess::{self, DecodeLimits};
use crate::prototypes::{EncoderShape, Prototypes};
use crate::vmf::Rule;

/// The bundled model's manifest: the encoder input every image is prepared for.
fn manifest() -> &'static ModelManifest {
    static MANIFEST: OnceLock<ModelManifest> = OnceLock::new();
    MANIFEST.get_or_init(|| {
        ModelManifest::parse(
            include_str!("../models/cifar10-lt/model.toml"),
            Path::new("models/cifar10-lt"),
        )
        .expect("the bundled model.toml parses")
    })
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::default)
}

/// The bundled model's widths: 128-dimensional features, 10 classes.
const FEATURE_DIM: usize = 128;
const CLASSES: usize = 10;

/// Splits `data` at its first newline: (the line, without a trailing CR; the rest).
fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = &data[..i];
            (line.strip_suffix(b"\r").unwrap_or(line), &data[i + 1..])
        }
        None => (data, &[]),
    }
}

/// An image body: sniffing, completeness and size checks, decode, EXIF orientation, resize and
/// layout, as the front layer prepares every image (`preprocess::prepare`).
pub fn image(data: &[u8]) -> Result<String, String> {
    let limits = DecodeLimits::from_max_pixels(config().max_pixels);
    let m = manifest();
    let tensor = preprocess::prepare(data, &limits, m).map_err(|e| e.to_string())?;
    let (h, w) = (m.input.height as usize, m.input.width as usize);
    assert_eq!(tensor.len(), 3 * h * w, "tensor size");
    assert!(
        tensor.iter().all(|v| (0.0..=1.0).contains(v)),
        "pixel values outside [0, 1]"
    );
    Ok(format!("{} values", tensor.len()))
}

/// A `/v1/classify` body with its Content-Type: the first line of `data` is the header's value,
/// the rest is the body, split into images as the handler does (`body::images`, which runs
/// axum's multipart parser for `multipart/form-data`).
pub fn multipart(data: &[u8]) -> Result<String, String> {
    let (content_type, rest) = first_line(data);
    let content_type =
        HeaderValue::from_bytes(content_type).map_err(|_| "not a header value".to_string())?;
    let (parts, ()) = Request::post("/v1/classify")
        .header(header::CONTENT_TYPE, content_type)
        .body(())
        .expect("a valid request head")
        .into_parts();
    let max_images = config().max_images_per_request;
    let images = runtime()
        .block_on(body::images(
            parts,
            Bytes::copy_from_slice(rest),
            max_images,
        ))
        .map_err(|e| {
            assert!(e.status().is_client_error(), "{e} is not a 4xx");
            e.to_string()
        })?;
    assert!(!images.inputs.is_empty() && images.inputs.len() <= max_images);
    assert!(images.inputs.iter().all(|i| !i.bytes.is_empty()));
    Ok(format!("{} images", images.inputs.len()))
}

/// The runtime the multipart parser's futures run on (all in memory: they never wait).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// A `/v1/classify` query string (`top_k`, `rule`, `prior`, `posterior`), parsed against the
/// bundled model's prototypes and against prototypes with a learned class (no linear-head rule,
/// a different class count); then the whole string as a `prior` value.
pub fn query(data: &[u8]) -> Result<String, String> {
    let query = String::from_utf8_lossy(data);
    let served = [
        Served {
            default_rule: config().default_rule,
            default_prior: config().default_prior,
            classes: CLASSES,
            available_rules: Rule::ALL.to_vec(),
            prototypes_version: "fuzz".into(),
        },
        Served {
            default_rule: config().default_rule,
            default_prior: config().default_prior,
            classes: 3,
            available_rules: vec![Rule::Proco, Rule::Vmf],
            prototypes_version: "fuzz".into(),
        },
    ];
    let raw = classify::query_options(&query).map_err(|e| {
        assert!(e.status().is_client_error(), "{e} is not a 4xx");
        e.to_string()
    })?;
    let mut accepted = Vec::new();
    for served in &served {
        match options::resolve(&raw, served) {
            Ok(options) => {
                check_options(&options, served.classes, &served.available_rules);
                accepted.push(options.prior.name());
            }
            Err(e) => assert!(e.is_client_error(), "{e} is not the client's fault"),
        }
    }
    if let Ok(prior) = Prior::parse(&query, CLASSES) {
        check_prior(&prior, CLASSES);
    }
    if accepted.is_empty() {
        Err("refused".into())
    } else {
        Ok(format!("priors {accepted:?}"))
    }
}

fn check_options(options: &RequestOptions, classes: usize, available: &[Rule]) {
    assert!((1..=classes).contains(&options.top_k), "top_k");
    assert!(available.contains(&options.rule), "rule not available");
    check_prior(&options.prior, classes);
}

/// Explicit weights are C finite positive numbers that sum to 1.
fn check_prior(prior: &Prior, classes: usize) {
    if let Prior::Explicit(q) = prior {
        assert_eq!(q.len(), classes, "prior length");
        assert!(q.iter().all(|w| w.is_finite() && *w > 0.0), "prior {q:?}");
        let total: f64 = q.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "prior sums to {total}");
    }
}

/// A prototypes file: the strict reader and its validation, the check against the bundled
/// encoder, and round trips: a valid document, written back as it was and as the server writes
/// it after a change (schema v2), must read back.
pub fn prototypes(data: &[u8]) -> Result<String, String> {
    let protos = Prototypes::from_slice(data).map_err(|e| e.to_string())?;
    let c = protos.classes.num_classes();
    assert_eq!(c, protos.head_index.len());
    assert!(Rule::ALL
        .iter()
        .all(|&r| protos.temperature(r).is_finite() && protos.temperature(r) > 0.0));
    let fits = protos.check_fits(&EncoderShape {
        model: manifest().name.clone(),
        feature_dim: FEATURE_DIM,
        num_classes: CLASSES,
    });
    let rules = protos.available_rules();
    assert!(rules.contains(&Rule::Proco));
    // As read, and as every change writes it (upgraded to the current schema).
    for mut document in [protos.document.clone(), protos.document.clone().upgraded()] {
        let written = document.to_bytes();
        let again = Prototypes::from_slice(&written)
            .unwrap_or_else(|e| panic!("a valid document, written back, is refused: {e}"));
        assert_eq!(again.classes.num_classes(), c);
    }
    Ok(format!(
        "{c} classes, {} rules, fits: {}",
        rules.len(),
        fits.is_ok()
    ))
}

const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// An OIP v2 infer request body, then checked against the bundled model (`oip::check`). The
/// first byte of `data` says how `Inference-Header-Content-Length` is given: 0 absent, 1 "0"
/// (the raw form), 2 the next four bytes as a little-endian number, 3 the next line as the raw
/// header value; the rest is the body.
pub fn oip_request(data: &[u8]) -> Result<String, String> {
    let Some((&mode, rest)) = data.split_first() else {
        return Err("empty".into());
    };
    let mut headers = HeaderMap::new();
    let body = match mode % 4 {
        0 => rest,
        1 => {
            headers.insert(HEADER_LENGTH, HeaderValue::from_static("0"));
            rest
        }
        2 => {
            let Some((n, body)) = rest.split_first_chunk::<4>() else {
                return Err("short".into());
            };
            headers.insert(HEADER_LENGTH, u32::from_le_bytes(*n).into());
            body
        }
        _ => {
            let (value, body) = first_line(rest);
            let value = HeaderValue::from_bytes(value).map_err(|_| "not a header value")?;
            headers.insert(HEADER_LENGTH, value);
            body
        }
    };
    let client_error = |e: v2::V2Error| {
        let message = e.0.to_string();
        let status = axum::response::IntoResponse::into_response(e).status();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
        message
    };
    let request =
        v2::parse_request(&headers, Bytes::copy_from_slice(body)).map_err(client_error)?;
    let limits = oip::TensorLimits {
        max_images: config().max_images_per_request,
        input_size: (
            manifest().input.height as usize,
            manifest().input.width as usize,
        ),
        feature_dim: FEATURE_DIM,
    };
    let checked = oip::check(request, &limits).map_err(|e| client_error(v2::V2Error(e)))?;
    assert!((1..=limits.max_images).contains(&checked.n));
    let served = Served {
        default_rule: config().default_rule,
        default_prior: config().default_prior,
        classes: CLASSES,
        available_rules: Rule::ALL.to_vec(),
        prototypes_version: "fuzz".into(),
    };
    // The parameters as the front layer resolves them (a refusal there is a 400 too).
    let options = options::resolve(&checked.parameters, &served)
        .map_err(|e| client_error(v2::V2Error(e.into())))?;
    check_prior(&options.prior, CLASSES);
    let (h, w) = limits.input_size;
    match &checked.input.data {
        TensorData::Bytes(images) => assert_eq!(images.len(), checked.n),
        TensorData::Fp32(values) => assert_eq!(values.len(), checked.n * 3 * h * w),
    }
    Ok(format!("{} images", checked.n))
}
