//! The front layer: what every protocol calls to classify images, and nothing else.
//!
//! [`Infer::classify`] takes a request's encoded images and the engine options, and owns the
//! steps between the wire and the batcher: admission (one permit per image, refused at once
//! when the server is full), decode + preprocess on blocking threads (in parallel, off the
//! async runtime), submission to the batcher, and a typed [`InferError`]. A protocol adapter
//! (`/v1` today) only parses its request, calls this, and formats the answer; the mapping of
//! errors to status codes lives in one place, `http::error`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batcher::{BatchError, Batcher, JobResult, Purpose, Readiness};
use crate::engine::RequestOptions;
use crate::manifest::ModelManifest;
use crate::preprocess::{self, DecodeError, DecodeLimits};
use crate::telemetry::Metrics;

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

/// Why a request's images got no answer.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The client's image cannot be used (the client's fault).
    #[error("{}{error}", name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default())]
    Image {
        name: Option<String>,
        error: DecodeError,
    },
    #[error("the server is at capacity ({capacity} images in flight); retry shortly")]
    QueueFull { capacity: usize },
    #[error("{0}")]
    Batch(#[from] BatchError),
    #[error("image decoding failed: {0}")]
    DecodeTask(String),
}

/// Admission, decoding and batching for the loaded model.
pub struct Infer {
    batcher: Batcher,
    manifest: Arc<ModelManifest>,
    limits: DecodeLimits,
    metrics: Arc<Metrics>,
    queue_capacity: usize,
}

impl Infer {
    pub fn new(
        batcher: Batcher,
        manifest: Arc<ModelManifest>,
        limits: DecodeLimits,
        metrics: Arc<Metrics>,
        queue_capacity: usize,
    ) -> Self {
        Infer {
            batcher,
            manifest,
            limits,
            metrics,
            queue_capacity,
        }
    }

    /// Whether the inference thread runs and its batches succeed.
    pub fn readiness(&self) -> Readiness {
        self.batcher.readiness()
    }

    /// Classifies the images of one request, all or nothing: nothing is queued for inference
    /// until every image has decoded, and the first bad image fails the request.
    pub async fn classify(
        &self,
        images: Vec<ImageInput>,
        options: RequestOptions,
    ) -> Result<Classified, InferError> {
        self.run(images, Purpose::Classify(options)).await
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
        options: RequestOptions,
    ) -> Result<Classified, InferError> {
        let admission = Arc::new(self.admit(tensors.len())?);
        let decode = vec![Duration::ZERO; tensors.len()];
        let purpose = Purpose::Classify(options);
        let result = self.batcher.submit(tensors, purpose, admission).await?;
        Ok(Classified { result, decode })
    }

    /// The encoder's input size (height, width).
    pub fn input_size(&self) -> (usize, usize) {
        (
            self.manifest.input.height as usize,
            self.manifest.input.width as usize,
        )
    }

    fn admit(&self, images: usize) -> Result<tokio::sync::OwnedSemaphorePermit, InferError> {
        self.batcher
            .try_admit(images)
            .map_err(|_| InferError::QueueFull {
                capacity: self.queue_capacity,
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
        let admission =
            Arc::new(
                self.batcher
                    .try_admit(images.len())
                    .map_err(|_| InferError::QueueFull {
                        capacity: self.queue_capacity,
                    })?,
            );

        let mut tasks = Vec::with_capacity(images.len());
        for image in &images {
            let (bytes, admission) = (image.bytes.clone(), admission.clone());
            let (manifest, limits, metrics) =
                (self.manifest.clone(), self.limits, self.metrics.clone());
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
                .map_err(|e| InferError::DecodeTask(e.to_string()))?;
            let tensor = tensor.map_err(|error| InferError::Image {
                name: image.name,
                error,
            })?;
            tensors.push(tensor);
            decode.push(took);
        }

        let result = self.batcher.submit(tensors, purpose, admission).await?;
        Ok(Classified { result, decode })
    }
}
