//! Dynamic batching in front of the encoder.
//!
//! ONNX Runtime's `Session::run` blocks and needs `&mut`, so one dedicated OS thread owns
//! the [`Encoder`]. Requests reach it through a channel; each carries a oneshot sender for
//! its answer. The thread takes whatever is queued, up to `max_batch_size` images, and
//! waits for more only while the oldest queued image is younger than `max_queue_delay`
//! (so under load it never waits, and an idle server adds at most that delay).
//!
//! Admission is a semaphore with `queue_capacity` permits, one per admitted image, taken
//! with `try_acquire` before the image is even decoded, so a full server answers at once
//! (503 + Retry-After) instead of piling up latency. A request's permits are released only
//! when no work of it is left: its decodes have finished and its job has been answered or
//! dropped (a client that hangs up does not free room its images still occupy).
//!
//! Each batch takes one prototypes snapshot, so every image in it is scored with the same
//! version, whatever reloads happen meanwhile.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{concatenate, Array4, Axis};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::encoder::{Encoder, EncoderOutput};
use crate::engine::{Engine, RequestOptions, Scored};
use crate::prototypes::{PrototypeStore, Prototypes};
use crate::telemetry::Metrics;

/// Batching settings.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub queue_capacity: usize,
}

/// The answer to one job (one request's images).
pub struct JobResult {
    /// The prototypes the whole batch was scored with.
    pub prototypes: Arc<Prototypes>,
    /// One entry per image, in order.
    pub scored: Vec<Scored>,
    pub queue: Duration,
    pub inference: Duration,
    pub posterior: Duration,
    pub batch_size: usize,
}

struct Job {
    /// CHW float images, each `3 * H * W`.
    images: Vec<Vec<f32>>,
    options: RequestOptions,
    enqueued: Instant,
    reply: oneshot::Sender<Result<JobResult, String>>,
    /// The request's admission permits: they stay taken while the job is queued or running,
    /// even if the client has gone away meanwhile.
    _admission: Arc<OwnedSemaphorePermit>,
}

/// The queue is full; try again later.
#[derive(Debug)]
pub struct QueueFull;

/// Why a job got no answer.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("inference failed: {0}")]
    Failed(String),
    #[error("the inference thread stopped")]
    Stopped,
}

/// Handle to the batching thread; cheap to share.
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    input_len: usize,
}

impl Batcher {
    /// Starts the thread that owns `encoder`.
    pub fn spawn(
        encoder: Encoder,
        store: Arc<PrototypeStore>,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        config: BatchConfig,
    ) -> std::io::Result<Batcher> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (h, w) = encoder.input_size();
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("proco-batcher".into())
            .spawn(move || run(encoder, rx, store, engine, worker_metrics, config))?;
        Ok(Batcher {
            tx,
            permits: Arc::new(Semaphore::new(config.queue_capacity)),
            metrics,
            input_len: 3 * h * w,
        })
    }

    /// Reserves queue room for `images` images, or says the queue is full.
    pub fn try_admit(&self, images: usize) -> Result<OwnedSemaphorePermit, QueueFull> {
        self.permits
            .clone()
            .try_acquire_many_owned(images as u32)
            .map_err(|_| QueueFull)
    }

    /// Queues the images (all of one request) and waits for the answer.
    pub async fn submit(
        &self,
        images: Vec<Vec<f32>>,
        options: RequestOptions,
        admission: Arc<OwnedSemaphorePermit>,
    ) -> Result<JobResult, BatchError> {
        debug_assert!(images.iter().all(|i| i.len() == self.input_len));
        let n = images.len() as i64;
        let (reply, answer) = oneshot::channel();
        self.metrics.queue_depth.add(n);
        let job = Job {
            images,
            options,
            enqueued: Instant::now(),
            reply,
            _admission: admission,
        };
        if self.tx.send(job).is_err() {
            self.metrics.queue_depth.sub(n);
            return Err(BatchError::Stopped);
        }
        match answer.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(BatchError::Failed(e)),
            Err(_) => Err(BatchError::Stopped),
        }
    }
}

fn run(
    mut encoder: Encoder,
    rx: mpsc::Receiver<Job>,
    store: Arc<PrototypeStore>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    config: BatchConfig,
) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // every sender is gone: the server is shutting down
            },
        };
        let deadline = first.enqueued + config.max_queue_delay;
        let mut images = first.images.len();
        let mut jobs = vec![first];
        while images < config.max_batch_size {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        None
                    } else {
                        rx.recv_timeout(deadline - now).ok()
                    }
                }
            };
            let Some(job) = next else { break };
            if images + job.images.len() > config.max_batch_size {
                pending = Some(job);
                break;
            }
            images += job.images.len();
            jobs.push(job);
        }
        metrics.queue_depth.sub(images as i64);
        // A panic while processing must not kill the thread: the jobs' reply senders are
        // dropped during unwinding, so their requests get an error, and we carry on.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            process(&mut encoder, jobs, &store, &engine, &metrics, config)
        }));
        if outcome.is_err() {
            tracing::error!("a batch panicked; its requests were answered with an error");
        }
    }
}

fn process(
    encoder: &mut Encoder,
    jobs: Vec<Job>,
    store: &PrototypeStore,
    engine: &Engine,
    metrics: &Metrics,
    config: BatchConfig,
) {
    let started = Instant::now();
    let prototypes = store.snapshot();
    let (h, w) = encoder.input_size();
    let total: usize = jobs.iter().map(|j| j.images.len()).sum();
    metrics.batch_size.observe(total as f64);
    for job in &jobs {
        let q = started.duration_since(job.enqueued);
        for _ in 0..job.images.len() {
            metrics.queue_duration.observe(q.as_secs_f64());
        }
    }

    // Encoder, in chunks of max_batch_size (only a single oversized job needs more than one).
    let mut flat: Vec<f32> = Vec::with_capacity(total * 3 * h * w);
    for job in &jobs {
        for img in &job.images {
            flat.extend_from_slice(img);
        }
    }
    let batch = match Array4::from_shape_vec((total, 3, h, w), flat) {
        Ok(b) => b,
        Err(e) => return fail(jobs, format!("bad input tensor: {e}")),
    };
    let t0 = Instant::now();
    let mut parts: Vec<EncoderOutput> = Vec::new();
    let mut start = 0;
    while start < total {
        let end = (start + config.max_batch_size).min(total);
        match encoder.run(batch.slice(ndarray::s![start..end, .., .., ..])) {
            Ok(out) => parts.push(out),
            Err(e) => {
                tracing::error!("encoder failed on a batch of {total}: {e:#}");
                return fail(jobs, format!("{e:#}"));
            }
        }
        start = end;
    }
    let out = if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        let cat = |f: fn(&EncoderOutput) -> ndarray::ArrayView2<f32>| {
            concatenate(Axis(0), &parts.iter().map(f).collect::<Vec<_>>()).expect("same widths")
        };
        EncoderOutput {
            feature: cat(|p| p.feature.view()),
            logits: cat(|p| p.logits.view()),
            embedding: cat(|p| p.embedding.view()),
        }
    };
    let inference = t0.elapsed();
    metrics.inference_duration.observe(inference.as_secs_f64());

    let t1 = Instant::now();
    let options: Vec<&RequestOptions> = jobs
        .iter()
        .flat_map(|j| std::iter::repeat_n(&j.options, j.images.len()))
        .collect();
    let scored = match engine.score(&prototypes, &out, &options) {
        Ok(s) => s,
        Err(e) => return fail(jobs, format!("scoring failed: {e}")),
    };
    let posterior = t1.elapsed();
    metrics.posterior_duration.observe(posterior.as_secs_f64());
    for s in &scored {
        metrics
            .predictions
            .with_label_values(&[prototypes.classes.labels()[s.top1].as_str()])
            .inc();
    }

    let mut scored = scored.into_iter();
    for job in jobs {
        let mine: Vec<Scored> = scored.by_ref().take(job.images.len()).collect();
        let _ = job.reply.send(Ok(JobResult {
            prototypes: prototypes.clone(),
            scored: mine,
            queue: started.duration_since(job.enqueued),
            inference,
            posterior,
            batch_size: total,
        }));
    }
}

fn fail(jobs: Vec<Job>, message: String) {
    for job in jobs {
        let _ = job.reply.send(Err(message.clone()));
    }
}
