//! The inference threads: each takes a batch from the shared queue, runs its encoder, answers,
//! and repeats until every sender is gone.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Mutex;
use std::time::Instant;

use super::health::StopGuard;
use super::{process, BatchConfig, BatchError, Job, Shared, Work};
use crate::encoder::Encode;

/// The queue's receiving end, shared by the inference threads of the encoder instances: one
/// thread at a time holds it to collect a batch (waiting there for the first job), then lets it
/// go and runs its batch while another collects the next. `pending` is a job that did not fit
/// into the last batch: the next collector starts with it.
pub(super) struct Queue {
    pub(super) rx: mpsc::Receiver<Job>,
    pub(super) pending: Option<Job>,
}

/// The inference thread: collect a batch, run it, answer, repeat until every sender is gone.
pub(super) fn run(
    mut encoder: impl Encode,
    input_size: (usize, usize),
    queue: &Mutex<Queue>,
    shared: &Shared,
) {
    let _stopped = StopGuard(shared.health.clone());
    loop {
        let jobs = {
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            let Queue { rx, pending } = &mut *queue;
            collect(rx, pending, shared.config)
        };
        let Some(jobs) = jobs else { break };
        // A job whose requester stopped waiting (deadline passed, client gone) is dropped here,
        // unencoded: its admission is given back with it.
        let (jobs, abandoned): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| !j.reply.is_closed());
        let dropped: usize = abandoned.iter().map(|j| j.work.images.len()).sum();
        if dropped > 0 {
            shared.metrics.queue_depth.sub(dropped as i64);
            shared.metrics.abandoned_images.inc_by(dropped as u64);
        }
        drop(abandoned);
        if jobs.is_empty() {
            continue;
        }
        let images: usize = jobs.iter().map(|j| j.work.images.len()).sum();
        shared.metrics.queue_depth.sub(images as i64);
        let (mut work, replies): (Vec<Work>, Vec<_>) = jobs
            .into_iter()
            .map(|j| (j.work, (j.reply, j.admission)))
            .unzip();
        // Their wait in the queue ends here.
        work.iter_mut().for_each(|w| w.trace.queued = None);
        // A panic while processing must not kill the thread: its requests get an error
        // answer, and we carry on with the next batch.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            process(&mut encoder, input_size, &work, shared)
        }))
        .unwrap_or_else(|panic| Err(format!("the batch panicked: {}", panic_message(&panic))));
        match &outcome {
            Ok(_) => shared.health.succeeded(),
            Err(e) => {
                tracing::error!("a batch of {images} images failed: {e}");
                shared.metrics.batch_failures.inc();
                shared.health.failed(e);
            }
        }
        // The work is done: room is given back before each answer, so a client that sends its
        // next request the moment it has this answer finds the room there.
        match outcome {
            Ok(results) => {
                for ((reply, admission), result) in replies.into_iter().zip(results) {
                    drop(admission);
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for (reply, admission) in replies {
                    drop(admission);
                    let _ = reply.send(Err(BatchError::Failed(e.clone())));
                }
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// Takes the next batch: the first queued job, then whatever else is queued (waiting until
/// the first job's deadline at most) up to `max_batch_size` images. `None`: shutting down.
fn collect(
    rx: &mpsc::Receiver<Job>,
    pending: &mut Option<Job>,
    config: BatchConfig,
) -> Option<Vec<Job>> {
    let first = match pending.take() {
        Some(job) => job,
        None => rx.recv().ok()?, // every sender is gone: the server is shutting down
    };
    let deadline = first.work.enqueued + config.max_queue_delay;
    let mut images = first.work.images.len();
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
        if images + job.work.images.len() > config.max_batch_size {
            *pending = Some(job);
            break;
        }
        images += job.work.images.len();
        jobs.push(job);
    }
    Some(jobs)
}
