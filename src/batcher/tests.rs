//! The batcher with a fake encoder: no ONNX Runtime, images of 3 x 1 x 1 values whose first
//! two values are the feature (normalised) and the logits.

use std::sync::mpsc as std_mpsc;

use super::*;
use crate::engine::{Prior, PriorName};
use crate::prototypes::{tiny_document, EncoderShape};
use crate::vmf::{AdaptivePriorConfig, Rule};

/// What the fake does on each call, in order; after the script, it succeeds.
#[derive(Clone, Copy, Debug)]
enum Step {
    Succeed,
    Fail,
    Panic,
}

struct FakeEncoder {
    script: std::collections::VecDeque<Step>,
    /// Each call blocks until a token arrives, when a gate is set.
    gate: Option<std_mpsc::Receiver<()>>,
    /// The size of every batch, recorded when the call starts.
    calls: Arc<Mutex<Vec<usize>>>,
}

impl Encode for FakeEncoder {
    fn run(&mut self, batch: ndarray::ArrayView4<f32>) -> anyhow::Result<EncoderOutput> {
        let n = batch.shape()[0];
        self.calls.lock().unwrap().push(n);
        if let Some(gate) = &self.gate {
            let _ = gate.recv();
        }
        match self.script.pop_front().unwrap_or(Step::Succeed) {
            Step::Succeed => {}
            Step::Fail => anyhow::bail!("the fake encoder was told to fail"),
            Step::Panic => panic!("the fake encoder was told to panic"),
        }
        let mut feature = ndarray::Array2::<f32>::zeros((n, 2));
        let mut logits = ndarray::Array2::<f32>::zeros((n, 2));
        for i in 0..n {
            let (a, b) = (batch[[i, 0, 0, 0]], batch[[i, 1, 0, 0]]);
            let norm = (a * a + b * b).sqrt().max(1e-6);
            feature[[i, 0]] = a / norm;
            feature[[i, 1]] = b / norm;
            logits[[i, 0]] = a;
            logits[[i, 1]] = b;
        }
        Ok(EncoderOutput { feature, logits })
    }
}

struct Harness {
    batcher: Batcher,
    store: Arc<PrototypeStore>,
    metrics: Arc<ModelMetrics>,
    calls: Arc<Mutex<Vec<usize>>>,
    /// One token lets one encoder call through (when the harness is gated).
    gate: Option<std_mpsc::Sender<()>>,
}

fn tiny_prototypes(vmf_temperature: f64) -> Prototypes {
    Prototypes::from_slice(&serde_json::to_vec(&tiny_document(vmf_temperature)).unwrap()).unwrap()
}

fn harness(script: &[Step], gated: bool, max_batch_size: usize, queue_capacity: usize) -> Harness {
    let shape = EncoderShape {
        model: "tiny".into(),
        feature_dim: 2,
        num_classes: 2,
    };
    let store = Arc::new(PrototypeStore::new(
        std::path::Path::new("tiny.json"),
        shape,
        tiny_prototypes(1.0),
    ));
    let metrics = Arc::new(Arc::new(crate::telemetry::Metrics::new()).model("tiny"));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (gate_tx, gate_rx) = std_mpsc::channel();
    let encoder = FakeEncoder {
        script: script.iter().copied().collect(),
        gate: gated.then_some(gate_rx),
        calls: calls.clone(),
    };
    let batcher = Batcher::spawn(
        vec![encoder],
        (1, 1),
        store.clone(),
        Arc::new(Engine::new(AdaptivePriorConfig::default(), Rule::Vmf, 0.25)),
        metrics.clone(),
        BatchConfig {
            max_batch_size,
            max_queue_delay: Duration::ZERO,
            queue_capacity,
        },
        Arc::new(tokio::sync::Semaphore::new(queue_capacity)),
    )
    .unwrap();
    Harness {
        batcher,
        store,
        metrics,
        calls,
        gate: gated.then_some(gate_tx),
    }
}

fn options() -> RequestOptions {
    RequestOptions {
        rule_fallback: None,
        rule: Rule::Vmf,
        prior: Prior::Named(PriorName::Uniform),
        top_k: 2,
        posterior: false,
        logits: false,
        features: false,
        set: None,
        abstain_below: None,
    }
}

/// One image pointing at class 0 (or 1).
fn image(class: usize) -> Vec<f32> {
    if class == 0 {
        vec![1.0, 0.1, 0.0]
    } else {
        vec![0.1, 1.0, 0.0]
    }
}

impl Harness {
    /// Submits one single-image job in the background.
    fn spawn_job(
        self: &Arc<Self>,
        class: usize,
    ) -> tokio::task::JoinHandle<Result<JobResult, BatchError>> {
        let h = self.clone();
        tokio::spawn(async move {
            let admission = Arc::new(h.batcher.try_admit(1).expect("room"));
            h.batcher
                .submit(vec![image(class)], Purpose::Classify(options()), admission)
                .await
        })
    }

    async fn classify(&self, class: usize) -> Result<JobResult, BatchError> {
        let admission = Arc::new(self.batcher.try_admit(1).expect("room"));
        self.batcher
            .submit(vec![image(class)], Purpose::Classify(options()), admission)
            .await
    }

    /// Waits until `n` images wait in the queue (the thread is busy with an earlier batch).
    async fn wait_queued(&self, n: i64) {
        for _ in 0..500 {
            if self.metrics.queue_depth.get() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!(
            "{n} images never queued (depth {})",
            self.metrics.queue_depth.get()
        );
    }

    /// Waits until `n` encoder calls have started (the last one may be blocked on the gate).
    async fn wait_batches_started(&self, n: usize) {
        for _ in 0..500 {
            if self.calls.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the encoder was never called {n} times");
    }

    fn open_gate(&self, calls: usize) {
        for _ in 0..calls {
            self.gate.as_ref().unwrap().send(()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_at_once_and_room_comes_back() {
    let h = harness(&[], false, 8, 3);
    let two = h.batcher.try_admit(2).unwrap();
    assert!(h.batcher.try_admit(2).is_err(), "3 permits, 2 taken");
    let one = h.batcher.try_admit(1).unwrap();
    assert!(h.batcher.try_admit(1).is_err());
    drop(two);
    assert!(
        h.batcher.try_admit(2).is_ok(),
        "permits come back when dropped"
    );
    drop(one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_are_batched_together_up_to_the_limit() {
    let h = Arc::new(harness(&[], true, 4, 64));
    // The first job occupies the thread (blocked in the encoder) while six more queue up.
    let first = h.spawn_job(0);
    h.wait_batches_started(1).await;
    let rest: Vec<_> = (0..6).map(|i| h.spawn_job(i % 2)).collect();
    h.wait_queued(6).await;
    h.open_gate(3);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.batch_size, 1);
    let mut sizes = Vec::new();
    for (i, job) in rest.into_iter().enumerate() {
        let r = job.await.unwrap().unwrap();
        assert_eq!(r.scored.len(), 1);
        assert_eq!(r.scored[0].top1, i % 2, "answers go to their own requests");
        sizes.push(r.batch_size);
    }
    assert_eq!(*h.calls.lock().unwrap(), vec![1, 4, 2]);
    assert_eq!(sizes.iter().filter(|&&s| s == 4).count(), 4);
    assert_eq!(sizes.iter().filter(|&&s| s == 2).count(), 2);
    assert_eq!(h.metrics.queue_depth.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_one_prototypes_snapshot_through_a_reload() {
    let h = Arc::new(harness(&[], true, 8, 64));
    let v1 = tiny_prototypes(1.0).version;
    let v2 = tiny_prototypes(2.0).version;
    let blocker = h.spawn_job(0);
    h.wait_batches_started(1).await;
    let batch: Vec<_> = (0..3).map(|i| h.spawn_job(i % 2)).collect();
    h.wait_queued(3).await;
    // Let the blocker through; the second batch takes its snapshot, then blocks in the encoder.
    h.open_gate(1);
    assert_eq!(blocker.await.unwrap().unwrap().prototypes.version, v1);
    h.wait_batches_started(2).await;
    // Reload while that batch is inside the encoder.
    let doc = serde_json::to_vec(&tiny_document(2.0)).unwrap();
    h.store.replace_from_bytes(&doc).unwrap();
    h.open_gate(2);
    for job in batch {
        let r = job.await.unwrap().unwrap();
        assert_eq!(r.batch_size, 3);
        assert_eq!(
            r.prototypes.version, v1,
            "the snapshot taken at the batch's start"
        );
    }
    let after = h.classify(0).await.unwrap();
    assert_eq!(after.prototypes.version, v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_batch_is_answered_with_an_error_and_the_thread_goes_on() {
    let h = harness(&[Step::Panic], false, 8, 64);
    match h.classify(0).await {
        Err(BatchError::Failed(m)) => assert!(m.contains("panicked"), "{m}"),
        Err(e) => panic!("expected a failed batch, got {e}"),
        Ok(_) => panic!("expected a failed batch, got an answer"),
    }
    let r = h.classify(1).await.expect("the thread still answers");
    assert_eq!(r.scored[0].top1, 1);
    assert_eq!(h.metrics.batch_failures.get(), 1);
    assert_eq!(h.batcher.readiness(), Readiness::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_failing_and_recovering_batches_and_a_stopped_thread() {
    let h = harness(&[Step::Fail, Step::Fail, Step::Fail], false, 8, 64);
    assert_eq!(h.batcher.readiness(), Readiness::Ready);
    for i in 1..=FAILURES_BEFORE_UNREADY {
        let err = h.classify(0).await.err().expect("scripted failure");
        assert!(err.to_string().contains("told to fail"), "{err}");
        if i < FAILURES_BEFORE_UNREADY {
            assert_eq!(
                h.batcher.readiness(),
                Readiness::Ready,
                "after {i} failures"
            );
        }
    }
    match h.batcher.readiness() {
        Readiness::Failing {
            batches,
            last_error,
        } => {
            assert_eq!(batches, FAILURES_BEFORE_UNREADY);
            assert!(last_error.contains("told to fail"), "{last_error}");
        }
        other => panic!("expected Failing, got {other:?}"),
    }
    h.classify(0).await.expect("the script is over");
    assert_eq!(
        h.batcher.readiness(),
        Readiness::Ready,
        "one success recovers"
    );

    // Dropping every handle ends the thread; its health says so.
    let health = h.batcher.health.clone();
    drop(h);
    for _ in 0..500 {
        if health.readiness() == Readiness::Stopped {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the thread never reported stopping");
}

/// A request that took the server's default rule is answered by its fallback when a class
/// learned while it waited left the linear head behind; a rule asked for by name is not swapped.
#[test]
fn a_defaulted_rule_falls_back_when_the_prototypes_changed_under_it() {
    let job = |rule_fallback| Work {
        images: vec![image(0)],
        purpose: Purpose::Classify(RequestOptions {
            rule: Rule::Ensemble,
            rule_fallback,
            ..options()
        }),
        enqueued: Instant::now(),
        trace: JobTrace {
            request: tracing::Span::none(),
            queued: None,
        },
    };
    let head_free = [Rule::Proco, Rule::Vmf];
    let answering = answering_options(&[job(Some(Rule::Proco)), job(None)], &head_free);
    assert_eq!(answering[0].as_ref().map(|o| o.rule), Some(Rule::Proco));
    assert!(
        answering[1].is_none(),
        "the client's own choice stands (and is refused)"
    );
    let all = [Rule::Linear, Rule::Proco, Rule::Vmf, Rule::Ensemble];
    assert!(answering_options(&[job(Some(Rule::Proco))], &all)[0].is_none());
}
