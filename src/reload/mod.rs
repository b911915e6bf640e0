//! Every change of the served prototypes goes through one [`Reloader`]: reloads of the file
//! (polling, SIGHUP, `POST /admin/reload`) and changes made by the server itself (examples
//! learned, a class removed, a rollback). It holds one lock from reading or computing the new
//! version to recording the result, so the swaps, the file on disk, its history, the log lines
//! and the metrics all follow one order. A change the server makes is written durably (and kept
//! in the history) before it is served and acknowledged.
//!
//! Why polling (every `reload_poll_ms`, default 500 ms) rather than inotify: it works the
//! same on every filesystem (bind mounts, network and container volumes, editors that
//! replace the file by rename), and costs one `stat` per tick. A change of mtime or length
//! triggers a read; the content hash decides whether anything really changed, so an invalid
//! file is reported once, not every tick.

mod shared;
mod watch;

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::prototypes::change::{self, ChangeError};
use crate::prototypes::durable::{self, Cause, History, VersionEntry};
use crate::prototypes::{PrototypeError, PrototypeStore, Prototypes};

pub use crate::pgstore::StoreError;
pub use shared::Shared;
pub use watch::{listen_for_hangup, spawn_watchers, Hangup, Watchers};

pub use crate::prototypes::change::ChangeError as Refusal;
pub use crate::prototypes::ReloadOutcome;
use crate::telemetry::ModelMetrics;

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

/// A change the server makes to the prototypes.
pub enum Change {
    /// Fold these unit features into class `label` (a new class only with `create`).
    Learn {
        label: String,
        features: Vec<Vec<f32>>,
        create: bool,
    },
    /// Remove class `label`.
    Remove { label: String },
    /// Serve a kept earlier version again.
    Rollback { version: String },
}

/// Why a change was not made; the served prototypes are untouched.
#[derive(Debug, thiserror::Error)]
pub enum ChangeFailed {
    #[error("{0}")]
    Refused(#[from] ChangeError),
    #[error("there is no kept version {0:?} (GET /v1/prototypes/versions lists them)")]
    UnknownVersion(String),
    #[error("the changed prototypes are invalid: {0}")]
    Invalid(#[from] PrototypeError),
    #[error("cannot store the new prototypes: {0}")]
    Storage(#[from] std::io::Error),
    /// The shared store is unreachable (503: try again when it is back).
    #[error("{0}; nothing was changed")]
    Store(#[from] StoreError),
}

/// What a change did.
pub struct Changed {
    pub outcome: ReloadOutcome,
    /// The class count of the prototypes now served.
    pub classes: usize,
    /// For `Learn`: whether the class was created.
    pub created: bool,
}

/// The one way prototypes change.
pub struct Reloader {
    store: Arc<PrototypeStore>,
    metrics: Arc<ModelMetrics>,
    /// `None` when the history is switched off (`prototype_history = 0`).
    history: Option<History>,
    max_classes: usize,
    /// With `prototype_store = "postgres://..."`: the store the versions live in, which every
    /// change goes through and which this replica follows.
    shared: Option<Shared>,
    /// SHA-256 of the bytes last read from or written to the file, under the one lock.
    last_read: Mutex<Option<[u8; 32]>>,
}

impl Reloader {
    /// `keep`: versions kept in the history (0: none); `max_classes`: the most classes a
    /// change may create; `shared`: the shared store, if any (then the history is the store's).
    pub fn new(
        store: Arc<PrototypeStore>,
        metrics: Arc<ModelMetrics>,
        keep: usize,
        max_classes: usize,
        shared: Option<Shared>,
    ) -> Self {
        let initial = std::fs::read(store.path()).ok().map(|b| digest(&b));
        let history = (keep > 0 && shared.is_none()).then(|| History::beside(store.path(), keep));
        Reloader {
            store,
            metrics,
            history,
            max_classes,
            shared,
            last_read: Mutex::new(initial),
        }
    }

    /// Where the versions live, for people: `file` or the shared store's URL without password.
    pub fn store_shown(&self) -> String {
        match &self.shared {
            Some(shared) => shared.store.shown().to_string(),
            None => "file".to_string(),
        }
    }

    /// The kept versions, oldest first. Blocking.
    pub fn versions(&self) -> Result<Vec<VersionEntry>, ChangeFailed> {
        if let Some(shared) = &self.shared {
            return shared.versions();
        }
        match &self.history {
            Some(h) => Ok(h.list()?),
            None => Ok(Vec::new()),
        }
    }

    /// Makes `change`, writes the result durably (file, then history), and serves it.
    /// Blocking (file I/O): call it from a blocking context.
    /// The refusals of learning `label` that need no image: a bad label, an unknown class without
    /// `create`, no room for a new class. Checked before any image is encoded ([`Reloader::apply`]
    /// checks again against the version it changes).
    pub fn check_learn(&self, label: &str, create: bool) -> Result<(), ChangeFailed> {
        change::check_label(label)?;
        let protos = self.store.snapshot();
        if !protos.classes.labels().iter().any(|l| l == label) {
            if !create {
                return Err(ChangeError::UnknownLabel(label.to_string()).into());
            }
            if protos.classes.num_classes() >= self.max_classes {
                let max = self.max_classes;
                return Err(ChangeError::TooManyClasses { max }.into());
            }
        }
        Ok(())
    }

    pub fn apply(&self, change: Change) -> Result<Changed, ChangeFailed> {
        let mut last_read = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = &self.shared {
            return self.apply_shared(shared, change);
        }
        let current = self.store.snapshot();
        let (bytes, cause, created, learned) = self.changed_bytes(&current, change)?;
        let protos = self.store.check(&bytes)?;
        let classes = protos.classes.num_classes();
        let version = protos.version.clone();
        self.remember_first(&current)?;
        durable::write_atomically(self.store.path(), &bytes)?;
        *last_read = Some(digest(&bytes));
        if let Some(h) = &self.history {
            h.record(&bytes, &version, cause, classes)?;
        }
        let outcome = self.store.swap(protos);
        let saved = format!("saved to {}", self.store.path().display());
        self.announce(&outcome, cause, created, learned, &saved);
        Ok(Changed {
            outcome,
            classes,
            created,
        })
    }

    /// The metrics and the log line of a change made here.
    fn announce(
        &self,
        outcome: &ReloadOutcome,
        cause: Cause,
        created: bool,
        learned: Option<(String, u64)>,
        saved: &str,
    ) {
        let classes = self.store.snapshot().classes.num_classes();
        self.metrics.prototype_versions_written.inc();
        self.metrics.classes.set(classes as i64);
        let what = match &learned {
            Some((label, n)) => {
                self.metrics
                    .examples_learned
                    .with_label_values(&[label.as_str()])
                    .inc_by(*n);
                format!(
                    "learned {n} example(s) of {label:?}{}",
                    if created { " (a new class)" } else { "" }
                )
            }
            None => cause.to_string(),
        };
        if cause == Cause::Rollback {
            self.metrics.prototype_rollbacks.inc();
        }
        if let ReloadOutcome::Swapped { previous, current } = outcome {
            self.metrics.set_prototypes_version(Some(previous), current);
            tracing::info!(
                "{what}: now serving prototypes version {current} (was {previous}), {classes} classes, {saved}"
            );
        }
    }

    /// The new file's bytes for `change`, its cause, whether a class was created, and for
    /// learning the label and the number of examples.
    #[allow(clippy::type_complexity)]
    fn changed_bytes(
        &self,
        current: &Prototypes,
        change: Change,
    ) -> Result<(Vec<u8>, Cause, bool, Option<(String, u64)>), ChangeFailed> {
        Ok(match change {
            Change::Learn {
                label,
                features,
                create,
            } => {
                let (mut doc, created) = change::learn(
                    &current.document,
                    &label,
                    &features,
                    create,
                    self.max_classes,
                )?;
                let n = features.len() as u64;
                (doc.to_bytes(), Cause::Learned, created, Some((label, n)))
            }
            Change::Remove { label } => {
                let mut doc = change::remove(&current.document, &label)?;
                (doc.to_bytes(), Cause::Deleted, false, None)
            }
            Change::Rollback { version } => {
                let bytes = self
                    .history
                    .as_ref()
                    .and_then(|h| h.read(&version).ok())
                    .ok_or(ChangeFailed::UnknownVersion(version))?;
                (bytes, Cause::Rollback, false, None)
            }
        })
    }

    /// Before the first change is recorded, keeps the version being served, so that a rollback
    /// can return to what the server started with.
    fn remember_first(&self, current: &Prototypes) -> std::io::Result<()> {
        let Some(h) = &self.history else {
            return Ok(());
        };
        if h.list()?.is_empty() {
            // The document re-serialised has the same content, hence the same id, as the file
            // it was read from (a unit test checks this on the bundled prototypes).
            let bytes = current.document.clone().to_bytes();
            let version = Prototypes::from_slice(&bytes)
                .map(|p| p.version)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            h.record(&bytes, &version, Cause::File, current.classes.num_classes())?;
        }
        Ok(())
    }

    /// Re-reads the prototypes file and swaps it in if valid and new. Blocking (file I/O and
    /// validation): call it from a blocking context.
    pub fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, ChangeFailed> {
        self.reload_if(trigger, false)
            .expect("an unconditional reload always has a result")
    }

    /// A reload for the file poller: `None` when the bytes are the ones last read (an invalid
    /// file is reported once, not on every tick).
    fn reload_if_changed(&self) -> Option<Result<ReloadOutcome, ChangeFailed>> {
        self.reload_if(Trigger::FileChange, true)
    }

    fn reload_if(
        &self,
        trigger: Trigger,
        only_if_changed: bool,
    ) -> Option<Result<ReloadOutcome, ChangeFailed>> {
        let mut last_read = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.store.path();
        let result = match std::fs::read(path) {
            Ok(bytes) => {
                let hash = digest(&bytes);
                let same = *last_read == Some(hash);
                if only_if_changed && same {
                    return None;
                }
                match &self.shared {
                    // With a shared store the file is an input: only content not read before is
                    // published, so that a reload never reverts what was changed through the store.
                    Some(_) if same => Ok(ReloadOutcome::Unchanged {
                        version: self.store.snapshot().version.clone(),
                    }),
                    Some(shared) => {
                        let published = self.publish_file(shared, &bytes);
                        if !matches!(published, Err(ChangeFailed::Store(_))) {
                            *last_read = Some(hash);
                        }
                        published
                    }
                    None => {
                        *last_read = Some(hash);
                        self.reload_bytes(&bytes).map_err(ChangeFailed::from)
                    }
                }
            }
            // Missing for a moment (being replaced by rename): the poller tries again.
            Err(_) if only_if_changed => return None,
            Err(source) => Err(PrototypeError::Io {
                path: path.to_path_buf(),
                source,
            }
            .into()),
        };
        self.record(trigger, &result);
        Some(result)
    }

    /// Checks and serves bytes read from the file; a new version is kept in the history, and a
    /// stale stated version is reported when it is swapped in.
    fn reload_bytes(&self, bytes: &[u8]) -> Result<ReloadOutcome, PrototypeError> {
        let protos = self.store.check(bytes)?;
        let (version, stated) = (protos.version.clone(), protos.stated_version.clone());
        let classes = protos.classes.num_classes();
        let current = self.store.snapshot();
        if current.version != version {
            if let Err(e) = self.keep_in_history(&current, bytes, &version, classes) {
                tracing::warn!("cannot keep version {version} in the history: {e}");
            }
        }
        let outcome = self.store.swap(protos);
        if matches!(outcome, ReloadOutcome::Swapped { .. }) {
            self.metrics.classes.set(classes as i64);
            if stated != version {
                self.metrics.prototype_version_mismatches.inc();
                tracing::warn!(
                    "{} states version {stated} but its content is version {version}: serving it as {version} (the version always follows the content)",
                    self.store.path().display()
                );
            }
        }
        Ok(outcome)
    }

    fn keep_in_history(
        &self,
        current: &Prototypes,
        bytes: &[u8],
        version: &str,
        classes: usize,
    ) -> std::io::Result<()> {
        self.remember_first(current)?;
        if let Some(h) = &self.history {
            h.record(bytes, version, Cause::File, classes)?;
        }
        Ok(())
    }

    fn record(&self, trigger: Trigger, result: &Result<ReloadOutcome, ChangeFailed>) {
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
                    "{trigger}: {path} holds nothing new; still serving version {version}"
                );
            }
            Err(e @ ChangeFailed::Store(_)) => {
                count("unavailable");
                tracing::error!(
                    "{trigger}: cannot publish {path}: {e}; still serving version {}",
                    self.store.snapshot().version
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
