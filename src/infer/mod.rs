//! The front layer: what every protocol calls to classify images, and nothing else.
//!
//! A protocol adapter (`/v1`, OIP v2 over REST and gRPC, the learning endpoint) turns its wire
//! format into [`RawOptions`] and [`ImageInput`]s and calls [`Infer`], which owns every step
//! between the wire and the batcher: resolving the options against one snapshot of the
//! prototypes served ([`Infer::resolve`]), admission (one permit per image, refused at once when
//! the server is full), decode + preprocess on blocking threads (in parallel, off the async
//! runtime), submission to the batcher, and one typed [`InferError`] that each adapter maps to
//! its wire in one place.
//!
//! Adapters import this module and their own wire types, nothing below it: the output types
//! they format are re-exported here.

mod error;
pub mod options;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batcher::{BatchError, Batcher, Purpose};
use crate::engine::{Engine, PriorName, RequestOptions};
use crate::manifest::ModelManifest;
use crate::preprocess::{self, DecodeLimits};
use crate::prototypes::PrototypeStore;
use crate::telemetry::ModelMetrics;

pub use crate::batcher::{JobResult, Readiness};
pub use crate::engine::{top_k, Prediction, PredictionSet, Scored};
pub use crate::preprocess::DecodeError;
pub use crate::prototypes::Prototypes;
pub use crate::vmf::Rule;
pub use error::InferError;
pub use options::{RawOptions, Served};

/// One encoded image as a protocol received it.
pub struct ImageInput {
    pub bytes: Bytes,
    /// How error messages name this image (`part "a" (a.jpg)`); `None` for a lone image.
    pub name: Option<String>,
}

/// The answer for a request's images, in order.
pub struct Classified {
    pub result: JobResult,
    /// Decode + preprocess time of each image.
    pub decode: Vec<Duration>,
}

/// The server's defaults for options a request leaves out.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub rule: Rule,
    pub prior: PriorName,
    /// `request_timeout_ms`: how long a request may take when it does not say (`None`: no limit).
    pub timeout: Option<Duration>,
}

/// A request's options, resolved: what the engine is asked, and when the answer is due.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub options: RequestOptions,
    /// `None`: no deadline.
    pub deadline: Option<Instant>,
    /// The time the request was given (for the error message).
    pub timeout: Option<Duration>,
}

/// What the front layer needs of the loaded model.
pub struct Parts {
    pub batcher: Batcher,
    pub manifest: Arc<ModelManifest>,
    pub store: Arc<PrototypeStore>,
    pub engine: Arc<Engine>,
    pub defaults: Defaults,
    pub limits: DecodeLimits,
    pub metrics: Arc<ModelMetrics>,
    pub queue_capacity: usize,
}

/// Option resolution, admission, decoding and batching for the loaded model.
pub struct Infer {
    parts: Parts,
}

impl From<BatchError> for InferError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::RuleUnavailable { .. } => InferError::RuleUnavailable(e.to_string()),
            BatchError::Failed(m) => InferError::Failed(m),
            BatchError::Stopped => InferError::Failed(e.to_string()),
        }
    }
}

impl Infer {
    pub fn new(parts: Parts) -> Self {
        Infer { parts }
    }

    /// The engine options for a request's raw options, resolved and checked against one
    /// snapshot of the prototypes served now: the class count, the rules that can answer, and
    /// whether they hold conformal scores, computed at the temperature served, for a set.
    pub fn resolve(&self, raw: &RawOptions) -> Result<Resolved, InferError> {
        let timeout = match &raw.timeout_ms {
            Some(text) => Some(options::parse_timeout(text)?),
            None => self.parts.defaults.timeout,
        };
        Ok(Resolved {
            options: self.resolve_options(raw)?,
            deadline: timeout.map(|t| Instant::now() + t),
            timeout,
        })
    }

    fn resolve_options(&self, raw: &RawOptions) -> Result<RequestOptions, InferError> {
        let protos = self.parts.store.snapshot();
        let served = Served {
            default_rule: self.parts.defaults.rule,
            default_prior: self.parts.defaults.prior,
            classes: protos.classes.num_classes(),
            available_rules: protos.available_rules(),
            prototypes_version: protos.version.clone(),
        };
        let options = options::resolve(raw, &served)?;
        if let Some(set) = &options.set {
            let temperature = self.parts.engine.temperature(&protos, options.rule);
            set.check(&protos, options.rule, temperature)?;
        }
        Ok(options)
    }

    /// Closes the batcher's queue and joins its thread (after the requests in flight).
    pub fn shutdown(&self) {
        self.parts.batcher.shutdown();
    }

    /// Whether the inference thread runs and its batches succeed.
    pub fn readiness(&self) -> Readiness {
        self.parts.batcher.readiness()
    }

    /// Classifies the images of one request, all or nothing: nothing is queued for inference
    /// until every image has decoded, and the first bad image fails the request.
    pub async fn classify(
        &self,
        images: Vec<ImageInput>,
        request: Resolved,
    ) -> Result<Classified, InferError> {
        let work = self.run(images, Purpose::Classify(request.options));
        within(request.deadline, request.timeout, work).await
    }

    /// The unit feature z of each image (to learn from), through the same admission, decoding
    /// and batches as [`classify`](Self::classify); all or nothing likewise.
    pub async fn embed(&self, images: Vec<ImageInput>) -> Result<Vec<Vec<f32>>, InferError> {
        Ok(self.run(images, Purpose::Embed).await?.result.features)
    }

    /// Classifies images the client has already laid out as the encoder's input (CHW float,
    /// `3 * H * W` values each, checked by the caller); admission as for encoded images.
    pub async fn classify_tensors(
        &self,
        tensors: Vec<Vec<f32>>,
        request: Resolved,
    ) -> Result<Classified, InferError> {
        let work = self.run_tensors(tensors, request.options);
        within(request.deadline, request.timeout, work).await
    }

    async fn run_tensors(
        &self,
        tensors: Vec<Vec<f32>>,
        options: RequestOptions,
    ) -> Result<Classified, InferError> {
        let admission = Arc::new(self.admit(tensors.len())?);
        let decode = vec![Duration::ZERO; tensors.len()];
        self.submit(tensors, Purpose::Classify(options), admission, decode)
            .await
    }

    /// Queues decoded images for the batcher and waits for their answer.
    async fn submit(
        &self,
        tensors: Vec<Vec<f32>>,
        purpose: Purpose,
        admission: Arc<tokio::sync::OwnedSemaphorePermit>,
        decode: Vec<Duration>,
    ) -> Result<Classified, InferError> {
        let batcher = &self.parts.batcher;
        let result = batcher.submit(tensors, purpose, admission).await?;
        Ok(Classified { result, decode })
    }

    /// The encoder's input size (height, width).
    pub fn input_size(&self) -> (usize, usize) {
        (
            self.parts.manifest.input.height as usize,
            self.parts.manifest.input.width as usize,
        )
    }

    fn admit(&self, images: usize) -> Result<tokio::sync::OwnedSemaphorePermit, InferError> {
        self.parts
            .batcher
            .try_admit(images)
            .map_err(|_| InferError::QueueFull {
                capacity: self.parts.queue_capacity,
            })
    }

    async fn run(
        &self,
        images: Vec<ImageInput>,
        purpose: Purpose,
    ) -> Result<Classified, InferError> {
        // Admission before any decoding work: a full server says so at once, and the permits
        // (one per image, held until the answer) also bound how many images are being decoded.
        // Every decode task and the queued job hold a share, so room is given back only when
        // the work is really done, even if the request ends early with an error.
        let admission = Arc::new(self.admit(images.len())?);

        // Open while the images decode (on blocking threads, in parallel).
        let decoding = crate::stage_span!("decode", proco.images = images.len() as i64);
        let mut tasks = Vec::with_capacity(images.len());
        for image in &images {
            let (bytes, admission) = (image.bytes.clone(), admission.clone());
            let (manifest, limits, metrics) = (
                self.parts.manifest.clone(),
                self.parts.limits,
                self.parts.metrics.clone(),
            );
            tasks.push(tokio::task::spawn_blocking(move || {
                let _admission = admission;
                let started = Instant::now();
                let tensor = preprocess::prepare(&bytes, &limits, &manifest);
                let took = started.elapsed();
                metrics.decode_duration.observe(took.as_secs_f64());
                (tensor, took)
            }));
        }
        let mut tensors = Vec::with_capacity(images.len());
        let mut decode = Vec::with_capacity(images.len());
        for (task, image) in tasks.into_iter().zip(images) {
            let (tensor, took) = task
                .await
                .map_err(|e| InferError::Failed(format!("image decoding failed: {e}")))?;
            let tensor = tensor.map_err(|error| InferError::Image {
                name: image.name,
                error,
            })?;
            tensors.push(tensor);
            decode.push(took);
        }
        drop(decoding);

        self.submit(tensors, purpose, admission, decode).await
    }
}

/// Runs `work` until `deadline`. Past it the request is answered "deadline exceeded" at once, and
/// the work is dropped: a job still queued is then skipped by the batcher (nobody waits for its
/// answer), so its images are never encoded, and its admission is given back.
async fn within<T>(
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    work: impl std::future::Future<Output = Result<T, InferError>>,
) -> Result<T, InferError> {
    match deadline {
        None => work.await,
        Some(deadline) => tokio::time::timeout_at(deadline.into(), work)
            .await
            .unwrap_or(Err(InferError::DeadlineExceeded(
                timeout.unwrap_or_default(),
            ))),
    }
}
