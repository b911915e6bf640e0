//! The adaptive prior: an EM estimate of the deployment's class distribution, kept per
//! prototypes version by a thread of its own.
//!
//! Why a thread: one EM refresh costs window x C per iteration, which at iNaturalist scale
//! (2048 x 8142) is tens of milliseconds per iteration and can run to seconds; done inline it
//! would stall the encoder's thread. Rows are handed over without waiting; if the worker is a
//! whole window behind, new rows are dropped (the estimate follows recent traffic, it is not a
//! ledger). Requests read the last published estimate, which lags by less than one chunk.
//!
//! The thread also watches drift: after each update it measures how far the estimate is from
//! the training prior and says so in the log when that crosses `drift_warn` (once per crossing).

use std::sync::{mpsc, Arc, Mutex};

use crate::prototypes::Prototypes;
use crate::vmf::metrics::{kl_divergence, total_variation};
use crate::vmf::{AdaptivePrior, AdaptivePriorConfig};

/// The estimating thread of one prototypes version and its inbox.
struct Worker {
    /// Prototypes version the estimate belongs to; a swap starts a fresh worker (the old one
    /// ends when its channel closes).
    version: String,
    /// Rows not yet handed over: they go in chunks, so the worker is woken once per chunk
    /// rather than once per image.
    pending: Vec<Vec<f64>>,
    chunk: usize,
    rows: mpsc::SyncSender<Vec<Vec<f64>>>,
    /// (estimate, rows in the window), as of the worker's last update.
    published: Arc<Mutex<(Vec<f64>, usize)>>,
}

impl Worker {
    fn start(
        version: String,
        config: AdaptivePriorConfig,
        train_prior: Vec<f64>,
        drift_warn: f64,
    ) -> Self {
        let chunk = config.refresh_every.clamp(1, 32);
        let (rows, inbox) =
            mpsc::sync_channel::<Vec<Vec<f64>>>(config.window.div_ceil(chunk).max(1));
        let published = Arc::new(Mutex::new((train_prior.clone(), 0)));
        let out = published.clone();
        let name = version.clone();
        let worker = std::thread::Builder::new()
            .name("adaptive-prior".into())
            .spawn(move || {
                let mut prior = AdaptivePrior::new(config, train_prior.clone());
                let mut drifting = false;
                while let Ok(chunk) = inbox.recv() {
                    chunk.iter().for_each(|row| prior.observe(row));
                    while let Ok(chunk) = inbox.try_recv() {
                        chunk.iter().for_each(|row| prior.observe(row));
                    }
                    let estimate = prior.estimate().to_vec();
                    let tv = total_variation(&estimate, &train_prior);
                    if (tv > drift_warn) != drifting {
                        drifting = !drifting;
                        let kl = kl_divergence(&estimate, &train_prior);
                        if drifting {
                            tracing::warn!(
                                "the class mix of recent traffic has drifted from training (prototypes {name}): total variation {tv:.3} > drift_warn {drift_warn}, KL {kl:.3} nats over the last {} images; prior=adaptive follows it, prior=train no longer fits",
                                prior.samples()
                            );
                        } else {
                            tracing::info!(
                                "the class mix of recent traffic is back near training (prototypes {name}): total variation {tv:.3} <= drift_warn {drift_warn}"
                            );
                        }
                    }
                    *out.lock().unwrap_or_else(|e| e.into_inner()) = (estimate, prior.samples());
                }
            });
        if let Err(e) = worker {
            tracing::error!(
                "cannot start the adaptive-prior thread ({e}): prior=adaptive stays at the training prior"
            );
        }
        Worker {
            version,
            pending: Vec::with_capacity(chunk),
            chunk,
            rows,
            published,
        }
    }

    /// Queues one calibrated row; hands a full chunk to the worker without waiting (if the
    /// worker is a whole window behind, the chunk is dropped).
    fn observe(&mut self, row: Vec<f64>) {
        self.pending.push(row);
        if self.pending.len() >= self.chunk {
            let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk));
            let _ = self.rows.try_send(chunk);
        }
    }

    fn estimate(&self) -> (Vec<f64>, usize) {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The adaptive prior of the prototypes being served; a new version starts a fresh estimate.
pub struct AdaptiveTracker {
    config: AdaptivePriorConfig,
    /// Total-variation distance from the training prior that the log warns about.
    drift_warn: f64,
    worker: Mutex<Option<Worker>>,
}

impl AdaptiveTracker {
    pub fn new(config: AdaptivePriorConfig, drift_warn: f64) -> Self {
        AdaptiveTracker {
            config,
            drift_warn,
            worker: Mutex::new(None),
        }
    }

    /// The current estimate for these prototypes (the training prior until enough images
    /// were seen) and the number of images in its window.
    pub fn estimate(&self, protos: &Prototypes) -> (Vec<f64>, usize) {
        let mut guard = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        self.worker_for(&mut guard, protos).estimate()
    }

    /// Hands calibrated rows (g / T of the tracked rule) to the worker of these prototypes.
    pub fn observe(&self, protos: &Prototypes, rows: impl Iterator<Item = Vec<f64>>) {
        let mut guard = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        let worker = self.worker_for(&mut guard, protos);
        rows.for_each(|row| worker.observe(row));
    }

    fn worker_for<'a>(&self, guard: &'a mut Option<Worker>, protos: &Prototypes) -> &'a mut Worker {
        if guard.as_ref().is_none_or(|w| w.version != protos.version) {
            *guard = Some(Worker::start(
                protos.version.clone(),
                self.config.clone(),
                protos.classes.train_prior(),
                self.drift_warn,
            ));
        }
        guard.as_mut().expect("just set")
    }
}
