//! Hot reload of the class prototypes. File polling, SIGHUP and `POST /admin/reload` all go
//! through one [`Reloader`], which holds one lock from reading the file to recording the
//! result, so the reloads, their log lines, `proco_prototype_reloads_total{result}` and
//! `proco_prototypes_info` all follow the order in which the swaps happened.
//!
//! Why polling (every `reload_poll_ms`, default 500 ms) rather than inotify: it works the
//! same on every filesystem (bind mounts, network and container volumes, editors that
//! replace the file by rename), and costs one `stat` per tick. A change of mtime or length
//! triggers a read; the content hash decides whether anything really changed, so an invalid
//! file is reported once, not every tick.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::prototypes::{PrototypeError, PrototypeStore, ReloadOutcome};
use crate::telemetry::Metrics;

/// What started a reload (for the log).
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    FileChange,
    Sighup,
    Admin,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::FileChange => "the prototypes file changed",
            Trigger::Sighup => "SIGHUP",
            Trigger::Admin => "POST /admin/reload",
        })
    }
}

/// The one way prototypes are reloaded.
pub struct Reloader {
    store: Arc<PrototypeStore>,
    metrics: Arc<Metrics>,
    /// SHA-256 of the bytes last read from the file, under the one reload lock.
    last_read: Mutex<Option<[u8; 32]>>,
}

impl Reloader {
    pub fn new(store: Arc<PrototypeStore>, metrics: Arc<Metrics>) -> Self {
        let initial = std::fs::read(store.path()).ok().map(|b| digest(&b));
        Reloader {
            store,
            metrics,
            last_read: Mutex::new(initial),
        }
    }

    /// Re-reads the prototypes file and swaps it in if valid and new. Blocking (file I/O and
    /// validation): call it from a blocking context.
    pub fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, PrototypeError> {
        self.reload_if(trigger, false)
            .expect("an unconditional reload always has a result")
    }

    /// A reload for the file poller: `None` when the bytes are the ones last read (an invalid
    /// file is reported once, not on every tick).
    fn reload_if_changed(&self) -> Option<Result<ReloadOutcome, PrototypeError>> {
        self.reload_if(Trigger::FileChange, true)
    }

    fn reload_if(
        &self,
        trigger: Trigger,
        only_if_changed: bool,
    ) -> Option<Result<ReloadOutcome, PrototypeError>> {
        let mut last_read = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.store.path();
        let result = match std::fs::read(path) {
            Ok(bytes) => {
                let hash = digest(&bytes);
                if only_if_changed && *last_read == Some(hash) {
                    return None;
                }
                *last_read = Some(hash);
                self.store.replace_from_bytes(&bytes)
            }
            // Missing for a moment (being replaced by rename): the poller tries again.
            Err(_) if only_if_changed => return None,
            Err(source) => Err(PrototypeError::Io {
                path: path.to_path_buf(),
                source,
            }),
        };
        self.record(trigger, &result);
        Some(result)
    }

    fn record(&self, trigger: Trigger, result: &Result<ReloadOutcome, PrototypeError>) {
        let path = self.store.path().display();
        let count = |result: &str| {
            self.metrics
                .prototype_reloads
                .with_label_values(&[result])
                .inc()
        };
        match result {
            Ok(ReloadOutcome::Swapped { previous, current }) => {
                count("success");
                self.metrics.set_prototypes_version(Some(previous), current);
                tracing::info!(
                    "reloaded prototypes after {trigger}: now serving version {current} (was {previous})"
                );
            }
            Ok(ReloadOutcome::Unchanged { version }) => {
                count("unchanged");
                tracing::info!(
                    "{trigger}: {path} still holds version {version}; nothing to reload"
                );
            }
            Err(e) => {
                count("rejected");
                tracing::error!(
                    "{trigger}: rejected {path}: {e}; still serving version {}",
                    self.store.snapshot().version
                );
            }
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[derive(PartialEq, Eq, Clone)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// The SIGHUP stream, taken before the model loads: until a handler is installed, SIGHUP's
/// default action ends the process.
#[cfg(unix)]
pub type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub type Hangup = ();

/// Installs the SIGHUP handler (call early, inside the runtime).
pub fn listen_for_hangup() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                None
            }
        }
    }
}

/// Starts the file poller (every `poll`; never if zero) and the SIGHUP listener.
pub fn spawn_watchers(reloader: Arc<Reloader>, poll: Duration, hangup: Hangup) {
    if !poll.is_zero() {
        tokio::spawn(poll_file(reloader.clone(), poll));
    }
    #[cfg(unix)]
    if let Some(mut hup) = hangup {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let r = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || r.reload(Trigger::Sighup)).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = hangup;
}

async fn poll_file(reloader: Arc<Reloader>, every: Duration) {
    let path = reloader.store.path().to_path_buf();
    let mut last_stamp = stamp(&path);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = stamp(&path);
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        let r = reloader.clone();
        let read = tokio::task::spawn_blocking(move || r.reload_if_changed()).await;
        if !path.exists() || read.is_err() {
            // Missing for a moment (being replaced) or unreadable: look again next tick.
            last_stamp = None;
        }
    }
}
