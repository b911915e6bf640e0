//! Whether the inference thread is there and its batches succeed: written by the thread, read
//! by `/health/ready` and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Consecutive failed batches after which the server reports itself not ready.
pub const FAILURES_BEFORE_UNREADY: u32 = 3;

/// Whether the inference thread is there and its batches succeed.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    Ready,
    /// The last `batches` batches (at least [`FAILURES_BEFORE_UNREADY`]) all failed.
    Failing {
        batches: u32,
        last_error: String,
    },
    /// The inference thread has ended.
    Stopped,
}

/// Written by the inference thread, read by `/health/ready` and `/metrics`.
#[derive(Default)]
pub struct Health {
    stopped: AtomicBool,
    consecutive_failures: AtomicU32,
    last_error: Mutex<String>,
}

impl Health {
    pub fn readiness(&self) -> Readiness {
        if self.stopped.load(Ordering::Acquire) {
            return Readiness::Stopped;
        }
        let batches = self.consecutive_failures.load(Ordering::Acquire);
        if batches >= FAILURES_BEFORE_UNREADY {
            let last_error = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Readiness::Failing {
                batches,
                last_error,
            };
        }
        Readiness::Ready
    }

    pub(super) fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
    }

    pub(super) fn failed(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_string();
        self.consecutive_failures.fetch_add(1, Ordering::AcqRel);
    }
}

/// Marks the thread stopped however it ends (channel closed, or a panic outside a batch).
pub(super) struct StopGuard(pub(super) Arc<Health>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
    }
}
