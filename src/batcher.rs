//! Dynamic batching in front of the encoder.
//!
//! ONNX Runtime's `Session::run` blocks and needs `&mut`, so one dedicated OS thread owns
//! the encoder (anything that implements [`Encode`]). Requests reach it through a channel;
//! each carries a oneshot sender for its answer. The thread takes whatever is queued, up to
//! `max_batch_size` images, and waits for more only while the oldest queued image is younger
//! than `max_queue_delay` (so under load it never waits, and an idle server adds at most that
//! delay).
//!
//! Admission is a semaphore with `queue_capacity` permits, one per admitted image (one semaphore
//! for the whole process, shared by every model's batcher, so that the models together hold at
//! most that many images in memory), taken
//! with `try_acquire` before the image is even decoded, so a full server answers at once
//! (503 + Retry-After) instead of piling up latency. A request's permits are released only
//! when no work of it is left: its decodes have finished and its job has been answered or
//! dropped (a client that hangs up does not free room its images still occupy).
//!
//! Each batch takes one prototypes snapshot, so every image in it is scored with the same
//! version, whatever reloads happen meanwhile. A batch that fails or panics is answered with
//! an error and the thread goes on; [`Health`] tells readiness whether batches succeed.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::{concatenate, Array4, Axis};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::encoder::{Encode, EncoderOutput};
use crate::engine::{Engine, RequestOptions, Scored};
use crate::prototypes::{PrototypeStore, Prototypes};
use crate::telemetry::traces::TARGET;
use crate::telemetry::ModelMetrics;
use crate::vmf::Rule;

mod health;
mod worker;

pub use health::{Health, Readiness, FAILURES_BEFORE_UNREADY};
use worker::{run, Queue};

/// Batching settings.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub queue_capacity: usize,
}

/// What a job asks for its images.
#[derive(Clone, Debug)]
pub enum Purpose {
    /// Calibrated class probabilities under these options.
    Classify(RequestOptions),
    /// The unit features z only (to learn from); nothing is scored or counted.
    Embed,
}

/// The answer to one job (one request's images).
pub struct JobResult {
    /// The prototypes the whole batch was scored with.
    pub prototypes: Arc<Prototypes>,
    /// One entry per image, in order (classify jobs).
    pub scored: Vec<Scored>,
    /// One unit feature per image, in order (embed jobs, and classify jobs that ask).
    pub features: Vec<Vec<f32>>,
    pub queue: Duration,
    pub inference: Duration,
    pub posterior: Duration,
    pub batch_size: usize,
}

/// What one job asks the encoder and engine to do.
struct Work {
    /// CHW float images, each `3 * H * W`.
    images: Vec<Vec<f32>>,
    purpose: Purpose,
    enqueued: Instant,
    trace: JobTrace,
}

/// A job's place in its request's trace (`crate::telemetry::traces`): the request's span, and
/// the span of the job's wait, closed when its batch starts. Disabled spans without an
/// `otlp_endpoint`.
struct JobTrace {
    request: tracing::Span,
    queued: Option<tracing::Span>,
}

impl JobTrace {
    /// Opens the queue span under the request span current here.
    fn enqueued(images: usize) -> JobTrace {
        let request = tracing::Span::current();
        let queued = (!request.is_disabled()).then(|| {
            tracing::info_span!(target: TARGET, parent: &request, "queue", proco.images = images as i64)
        });
        JobTrace { request, queued }
    }

    /// A span for one stage of the batch the job rides in, under the request's span.
    fn stage(&self, stage: &'static str, batch_size: usize, batch_jobs: usize) -> tracing::Span {
        if self.request.is_disabled() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            target: TARGET,
            parent: &self.request,
            "batch stage",
            otel.name = stage,
            proco.batch.size = batch_size as i64,
            proco.batch.jobs = batch_jobs as i64,
        )
    }
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<JobResult, BatchError>>,
    /// The request's admission permits: they stay taken while the job is queued or running,
    /// even if the client has gone away meanwhile.
    admission: Arc<OwnedSemaphorePermit>,
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
    /// The rule needs the linear head, which does not know every class of the prototypes
    /// this batch used.
    #[error("rule {rule} cannot answer: the encoder's linear head does not know every class of prototypes version {version}; use one of: {available}")]
    RuleUnavailable {
        rule: Rule,
        version: String,
        available: String,
    },
}

/// What the inference thread reads besides its queue.
struct Shared {
    store: Arc<PrototypeStore>,
    engine: Arc<Engine>,
    metrics: Arc<ModelMetrics>,
    health: Arc<Health>,
    config: BatchConfig,
}

/// Handle to the batching threads; cheap to share.
pub struct Batcher {
    /// `None` once [`Batcher::shutdown`] closed the queue.
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    permits: Arc<Semaphore>,
    metrics: Arc<ModelMetrics>,
    health: Arc<Health>,
    input_len: usize,
}

impl Batcher {
    /// Starts one inference thread per encoder instance (Triton's `instance_group`), each owning
    /// its encoder, whose input is `[N, 3, height, width]`; they take batches from one queue.
    /// Requests are admitted against `admission` (the process's, shared by every model).
    pub fn spawn<E: Encode + Send + 'static>(
        encoders: Vec<E>,
        input_size: (usize, usize),
        store: Arc<PrototypeStore>,
        engine: Arc<Engine>,
        metrics: Arc<ModelMetrics>,
        config: BatchConfig,
        admission: Arc<Semaphore>,
    ) -> std::io::Result<Batcher> {
        let (tx, rx) = mpsc::channel::<Job>();
        let health = Arc::new(Health::default());
        let shared = Arc::new(Shared {
            store,
            engine,
            metrics: metrics.clone(),
            health: health.clone(),
            config,
        });
        let queue = Arc::new(Mutex::new(Queue { rx, pending: None }));
        let threads = encoders
            .into_iter()
            .enumerate()
            .map(|(i, encoder)| {
                let (queue, shared) = (queue.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("proco-batcher-{i}"))
                    .spawn(move || run(encoder, input_size, &queue, &shared))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Batcher {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
            permits: admission,
            metrics,
            health,
            input_len: 3 * input_size.0 * input_size.1,
        })
    }

    /// Reserves queue room for `images` images, or says the queue is full.
    pub fn try_admit(&self, images: usize) -> Result<OwnedSemaphorePermit, QueueFull> {
        self.permits
            .clone()
            .try_acquire_many_owned(images as u32)
            .map_err(|_| QueueFull)
    }

    /// Whether the inference thread runs and its batches succeed.
    pub fn readiness(&self) -> Readiness {
        self.health.readiness()
    }

    /// Closes the queue and waits for the inference threads to finish the jobs they have and
    /// end (each owns its encoder, whose session is released with it). Later submissions are
    /// refused with [`BatchError::Stopped`].
    pub fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an inference thread panicked");
            }
        }
    }

    /// Queues the images (all of one request) and waits for the answer.
    pub async fn submit(
        &self,
        images: Vec<Vec<f32>>,
        purpose: Purpose,
        admission: Arc<OwnedSemaphorePermit>,
    ) -> Result<JobResult, BatchError> {
        debug_assert!(images.iter().all(|i| i.len() == self.input_len));
        let n = images.len() as i64;
        let (reply, answer) = oneshot::channel();
        self.metrics.queue_depth.add(n);
        let job = Job {
            work: Work {
                trace: JobTrace::enqueued(images.len()),
                images,
                purpose,
                enqueued: Instant::now(),
            },
            reply,
            admission,
        };
        let sent = match &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        if !sent {
            self.metrics.queue_depth.sub(n);
            return Err(BatchError::Stopped);
        }
        answer.await.unwrap_or(Err(BatchError::Stopped))
    }
}

/// Encodes and scores one batch; one result per job, in order. `Err`: the whole batch failed.
fn process(
    encoder: &mut impl Encode,
    (h, w): (usize, usize),
    jobs: &[Work],
    shared: &Shared,
) -> Result<Vec<Result<JobResult, BatchError>>, String> {
    let started = Instant::now();
    let prototypes = shared.store.snapshot();
    let metrics = &shared.metrics;
    let total: usize = jobs.iter().map(|j| j.images.len()).sum();
    metrics.batch_size.observe(total as f64);
    for job in jobs {
        let q = started.duration_since(job.enqueued);
        for _ in 0..job.images.len() {
            metrics.queue_duration.observe(q.as_secs_f64());
        }
    }

    let mut flat: Vec<f32> = Vec::with_capacity(total * 3 * h * w);
    for img in jobs.iter().flat_map(|j| &j.images) {
        flat.extend_from_slice(img);
    }
    let batch = Array4::from_shape_vec((total, 3, h, w), flat)
        .map_err(|e| format!("bad input tensor: {e}"))?;
    let stage = |name| -> Vec<tracing::Span> {
        jobs.iter()
            .map(|j| j.trace.stage(name, total, jobs.len()))
            .collect()
    };
    let t0 = Instant::now();
    let spans = stage("inference");
    let out = encode_in_chunks(encoder, batch, shared.config.max_batch_size)?;
    drop(spans);
    let inference = t0.elapsed();
    metrics.inference_duration.observe(inference.as_secs_f64());

    let t1 = Instant::now();
    let spans = stage("posterior");
    let available = prototypes.available_rules();
    let answering = answering_options(jobs, &available);
    let scored = score_jobs(jobs, &answering, &out, &prototypes, &available, shared)?;
    drop(spans);
    let posterior = t1.elapsed();
    metrics.posterior_duration.observe(posterior.as_secs_f64());

    let mut scored = scored.into_iter();
    let mut first_row = 0;
    let mut results = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let rows = first_row..first_row + job.images.len();
        first_row = rows.end;
        let result = JobResult {
            prototypes: prototypes.clone(),
            scored: Vec::new(),
            features: Vec::new(),
            queue: started.duration_since(job.enqueued),
            inference,
            posterior,
            batch_size: total,
        };
        let purpose = match (&job.purpose, &answering[i]) {
            (Purpose::Classify(_), Some(instead)) => Some(instead),
            (Purpose::Classify(o), None) => Some(o),
            (Purpose::Embed, _) => None,
        };
        results.push(match purpose {
            None => Ok(JobResult {
                features: rows.map(|r| out.feature.row(r).to_vec()).collect(),
                ..result
            }),
            Some(o) if !available.contains(&o.rule) => Err(BatchError::RuleUnavailable {
                rule: o.rule,
                version: prototypes.version.clone(),
                available: available
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            Some(o) => Ok(JobResult {
                scored: scored.by_ref().take(rows.len()).collect(),
                features: if o.features {
                    rows.map(|r| out.feature.row(r).to_vec()).collect()
                } else {
                    Vec::new()
                },
                ..result
            }),
        });
    }
    Ok(results)
}

/// For each classify job whose rule cannot answer with these prototypes but whose request took
/// the server's default rule: its options with the fallback rule instead (a class learned while
/// it waited left the linear head behind). `None`: the job's own options stand.
fn answering_options(jobs: &[Work], available: &[Rule]) -> Vec<Option<RequestOptions>> {
    jobs.iter()
        .map(|job| match &job.purpose {
            Purpose::Classify(o) if !available.contains(&o.rule) => o
                .rule_fallback
                .filter(|rule| available.contains(rule))
                .map(|rule| RequestOptions { rule, ..o.clone() }),
            _ => None,
        })
        .collect()
}

/// Scores the rows of the classify jobs whose rule can answer, in order, and counts their
/// predictions.
fn score_jobs(
    jobs: &[Work],
    answering: &[Option<RequestOptions>],
    out: &EncoderOutput,
    prototypes: &Prototypes,
    available: &[Rule],
    shared: &Shared,
) -> Result<Vec<Scored>, String> {
    let mut rows = Vec::new();
    let mut options: Vec<&RequestOptions> = Vec::new();
    let mut first_row = 0;
    for (job, instead) in jobs.iter().zip(answering) {
        if let Purpose::Classify(own) = &job.purpose {
            let o = instead.as_ref().unwrap_or(own);
            if available.contains(&o.rule) {
                rows.extend(first_row..first_row + job.images.len());
                options.extend(std::iter::repeat_n(o, job.images.len()));
            }
        }
        first_row += job.images.len();
    }
    let scored = if rows.len() == out.feature.nrows() {
        shared.engine.score(prototypes, out, &options)
    } else {
        let subset = EncoderOutput {
            feature: out.feature.select(Axis(0), &rows),
            logits: out.logits.select(Axis(0), &rows),
        };
        shared.engine.score(prototypes, &subset, &options)
    }
    .map_err(|e| format!("scoring failed: {e}"))?;
    let metrics = &shared.metrics;
    for s in &scored {
        metrics
            .predictions
            .with_label_values(&[prototypes.classes.labels()[s.top1].as_str()])
            .inc();
        if let Some(abstained) = s.abstained {
            let result = if abstained { "abstained" } else { "answered" };
            metrics
                .abstention_decisions
                .with_label_values(&[result])
                .inc();
        }
        if let Some(Ok(set)) = &s.prediction_set {
            metrics
                .prediction_set_size
                .with_label_values(&[set.kind.as_str()])
                .observe(set.labels.len() as f64);
        }
    }
    Ok(scored)
}

/// Runs the encoder in chunks of `max_batch_size` (only a single oversized job needs more
/// than one) and stacks the outputs.
fn encode_in_chunks(
    encoder: &mut impl Encode,
    batch: Array4<f32>,
    max_batch_size: usize,
) -> Result<EncoderOutput, String> {
    let total = batch.shape()[0];
    let mut parts: Vec<EncoderOutput> = Vec::new();
    let mut start = 0;
    while start < total {
        let end = (start + max_batch_size).min(total);
        let out = encoder
            .run(batch.slice(ndarray::s![start..end, .., .., ..]))
            .map_err(|e| format!("the encoder failed: {e:#}"))?;
        parts.push(out);
        start = end;
    }
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    let cat = |f: fn(&EncoderOutput) -> ndarray::ArrayView2<f32>| {
        concatenate(Axis(0), &parts.iter().map(f).collect::<Vec<_>>())
            .map_err(|e| format!("encoder outputs of different widths: {e}"))
    };
    Ok(EncoderOutput {
        feature: cat(|p| p.feature.view())?,
        logits: cat(|p| p.logits.view())?,
    })
}

#[cfg(test)]
mod tests;
