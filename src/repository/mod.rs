//! The model repository: a folder of model folders (`model_repository`), each with its
//! `model.toml`, encoder and prototypes, named by its manifest. The default model (`model_dir`)
//! loads at start and serves the routes that name no model; `load_models` says which others load
//! at start; the rest load and unload at run time (the Open Inference Protocol's repository
//! extension), while the others keep serving.
//!
//! Each loaded model is a [`Serving`] of its own. A request holds its model's `Arc` for as long
//! as it runs, so unloading takes the model out of the index at once (new requests get
//! "unavailable") and frees it once its last admitted request has been answered: the batcher
//! thread is joined and the ONNX Runtime session, with its memory arena, released. Loads and
//! unloads are serialised; lookups never wait for them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::manifest::ModelManifest;
use crate::pgstore::SharedStore;
use crate::reload::{self, Watchers};
use crate::serving::{self, Serving};
use crate::telemetry::Metrics;

mod poll;

use poll::{stamp, Stamp};

/// Where a model is in its life.
#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<Serving>),
    /// Not loaded, with the reason: never asked for, unloaded, or the error that failed its load.
    Unavailable(String),
}

impl ModelState {
    /// As the repository index names it (Triton's words).
    pub fn name(&self) -> &'static str {
        match self {
            ModelState::Loading => "LOADING",
            ModelState::Ready(_) => "READY",
            ModelState::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

/// One model of the index.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IndexEntry {
    pub name: String,
    /// The prototypes version served, when it is ready.
    pub version: String,
    pub state: &'static str,
    pub reason: String,
    /// Whether the routes that name no model use it.
    pub default: bool,
}

/// Why a model cannot answer, or a load or unload was refused.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// No model of that name in the repository.
    #[error("{0}")]
    NotFound(String),
    /// It is loading: try again shortly.
    #[error("{0}")]
    Loading(String),
    /// It exists but is not loaded (never asked for, unloaded, or its load failed).
    #[error("{0}")]
    NotLoaded(String),
    /// A load that failed (broken manifest, missing or corrupt ONNX file, prototypes that do not
    /// fit), or an unload that is not allowed: the others are unaffected.
    #[error("{0}")]
    Refused(String),
}

/// The reason of a model found in the repository and never asked for.
const NOT_LOADED: &str = "not loaded";

struct Slot {
    dir: PathBuf,
    /// What the poll compares: the manifest's and the served encoder's size and time, as loaded.
    stamp: Option<Stamp>,
    state: ModelState,
    /// The prototype watchers of a ready model; dropped (stopped) on unload.
    watchers: Option<Watchers>,
}

pub struct Repository {
    config: Config,
    metrics: Arc<Metrics>,
    /// The process's admission: `queue_capacity` images in flight, all models together.
    admission: Arc<tokio::sync::Semaphore>,
    /// The default model's name, once its manifest has been read.
    default: RwLock<Option<String>>,
    models: RwLock<BTreeMap<String, Slot>>,
    /// The shared prototype store every model's versions live in, if `prototype_store` names one.
    shared_store: Option<Arc<SharedStore>>,
    /// Serialises loads and unloads (never lookups).
    changes: tokio::sync::Mutex<()>,
    /// Set once the models asked for at start have been loaded (or have failed).
    started: std::sync::atomic::AtomicBool,
}

impl Repository {
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        shared_store: Option<Arc<SharedStore>>,
    ) -> Self {
        Repository {
            shared_store,
            admission: Arc::new(tokio::sync::Semaphore::new(config.queue_capacity)),
            config,
            metrics,
            default: RwLock::new(None),
            models: RwLock::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the models asked for at start are loaded (or have failed, with their reason).
    pub fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The default model, if it is ready.
    pub fn default_model(&self) -> Option<Arc<Serving>> {
        let name = self.default_name()?;
        self.get(&name).ok()
    }

    /// The default model's name, once known.
    pub fn default_name(&self) -> Option<String> {
        self.default
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The model `name`, if it is ready.
    pub fn get(&self, name: &str) -> Result<Arc<Serving>, RepositoryError> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        match models.get(name).map(|slot| &slot.state) {
            Some(ModelState::Ready(serving)) => Ok(serving.clone()),
            Some(ModelState::Loading) => Err(RepositoryError::Loading(format!(
                "model {name:?} is loading"
            ))),
            Some(ModelState::Unavailable(reason)) => Err(RepositoryError::NotLoaded(format!(
                "model {name:?} is not loaded ({reason})"
            ))),
            None => Err(RepositoryError::NotFound(format!(
                "unknown model {name:?}; the repository has: {}",
                models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The models loaded now.
    pub fn loaded(&self) -> Vec<Arc<Serving>> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        models
            .values()
            .filter_map(|slot| match &slot.state {
                ModelState::Ready(serving) => Some(serving.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every model of the repository, in name order, with its state; the folders are read
    /// again first, so models added since start are listed (as not loaded).
    pub fn index(&self) -> Vec<IndexEntry> {
        self.rescan();
        let default = self.default_name();
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        models
            .iter()
            .map(|(name, slot)| IndexEntry {
                name: name.clone(),
                version: match &slot.state {
                    ModelState::Ready(s) => s.store.snapshot().version.clone(),
                    _ => String::new(),
                },
                state: slot.state.name(),
                reason: match &slot.state {
                    ModelState::Unavailable(reason) => reason.clone(),
                    _ => String::new(),
                },
                default: default.as_deref() == Some(name.as_str()),
            })
            .collect()
    }

    /// Loads the default model (an error ends the server) and then those `load_models` names (a
    /// failure is reported in the index; the others serve).
    pub async fn start(&self) -> anyhow::Result<()> {
        let dir = self.config.model_dir.clone();
        let manifest = ModelManifest::load(&dir)?;
        *self.default.write().unwrap_or_else(|e| e.into_inner()) = Some(manifest.name.clone());
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(manifest.name.clone(), unloaded(dir, "not loaded yet"));
        self.rescan();
        self.load(&manifest.name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for name in self.wanted_at_start() {
            if let Err(e) = self.load(&name).await {
                tracing::error!("model {name:?} could not be loaded: {e}; the others serve");
            }
        }
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Loads `name` from its folder; a model already loaded is left as it is. Loading does not
    /// pause the others: the work runs on a blocking thread.
    pub async fn load(&self, name: &str) -> Result<Arc<Serving>, RepositoryError> {
        let _serial = self.changes.lock().await;
        self.rescan();
        let dir = {
            let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
            let slot = models.get_mut(name).ok_or_else(|| {
                RepositoryError::NotFound(format!(
                    "no model {name:?} in the repository {}",
                    self.config.model_repository.display()
                ))
            })?;
            if let ModelState::Ready(serving) = &slot.state {
                return Ok(serving.clone());
            }
            slot.state = ModelState::Loading;
            slot.dir.clone()
        };
        tracing::info!("loading model {name:?} from {}", dir.display());
        let started = Instant::now();
        let loaded = self.load_from(&dir).await;
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        let slot = models
            .get_mut(name)
            .expect("slots are removed only under the lock");
        match loaded {
            Ok(serving) if serving.manifest.name == name => {
                let serving = Arc::new(serving);
                self.serve(slot, serving.clone());
                tracing::info!(
                    "model {name:?} ready ({} ms)",
                    started.elapsed().as_millis()
                );
                Ok(serving)
            }
            Ok(serving) => {
                let reason = format!(
                    "its manifest now names it {:?}; load it under that name",
                    serving.manifest.name
                );
                slot.state = ModelState::Unavailable(reason.clone());
                Err(RepositoryError::Refused(reason))
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!("model {name:?} failed to load: {reason}");
                slot.state = ModelState::Unavailable(reason.clone());
                Err(RepositoryError::Refused(format!(
                    "model {name:?} failed to load: {reason}"
                )))
            }
        }
    }

    /// Puts a loaded model in service in its slot, with its prototype watchers.
    fn serve(&self, slot: &mut Slot, serving: Arc<Serving>) {
        let poll = Duration::from_millis(self.config.reload_poll_ms);
        let hangup = reload::listen_for_hangup();
        slot.watchers = Some(reload::spawn_watchers(
            serving.reloader.clone(),
            poll,
            hangup,
        ));
        slot.stamp = Some(stamp(&serving.dir, &serving.manifest));
        slot.state = ModelState::Ready(serving);
    }

    /// Loads a model folder on a blocking thread (the others keep serving meanwhile).
    async fn load_from(&self, dir: &Path) -> anyhow::Result<Serving> {
        let (config, metrics, admission, shared) = (
            self.config.clone(),
            self.metrics.clone(),
            self.admission.clone(),
            self.shared_store.clone(),
        );
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            serving::load(&config, &dir, metrics, admission, shared)
        })
        .await
        .map_err(|e| anyhow::anyhow!("model loading panicked: {e}"))
        .and_then(|r| r)
    }

    /// Takes `name` out of service at once, then frees it once its admitted requests are
    /// answered (or `shutdown_timeout_ms` has passed). The default model is not unloaded.
    pub async fn unload(&self, name: &str) -> Result<(), RepositoryError> {
        let _serial = self.changes.lock().await;
        if self.default_name().as_deref() == Some(name) {
            return Err(RepositoryError::Refused(format!(
                "model {name:?} is the default model (model_dir): it serves the routes that name no model and cannot be unloaded"
            )));
        }
        let (serving, watchers) = {
            let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
            let slot = models
                .get_mut(name)
                .ok_or_else(|| RepositoryError::NotFound(format!("unknown model {name:?}")))?;
            let previous =
                std::mem::replace(&mut slot.state, ModelState::Unavailable("unloaded".into()));
            match previous {
                ModelState::Ready(serving) => (serving, slot.watchers.take()),
                other => {
                    slot.state = other;
                    return Ok(()); // not loaded: nothing to do
                }
            }
        };
        drop(watchers);
        self.retire(name, serving, true).await;
        tracing::info!("model {name:?} unloaded");
        Ok(())
    }

    /// Frees a model taken out of service: waits for its admitted requests (they hold the other
    /// references) up to `shutdown_timeout_ms`, joins its inference thread, removes its metric
    /// series when `forget_series`, and hands the memory back.
    async fn retire(&self, name: &str, serving: Arc<Serving>, forget_series: bool) {
        let grace = Duration::from_millis(self.config.shutdown_timeout_ms);
        let started = Instant::now();
        while Arc::strong_count(&serving) > 1 && started.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if Arc::strong_count(&serving) > 1 {
            tracing::warn!(
                "model {name:?} retired with requests still holding it after {} ms; it is freed after them",
                grace.as_millis()
            );
        }
        let retired = tokio::task::spawn_blocking(move || {
            serving.infer.shutdown();
            if forget_series {
                serving.metrics.forget();
            }
            drop(serving);
            release_freed_memory();
        })
        .await;
        if let Err(e) = retired {
            tracing::error!("freeing model {name:?} failed: {e}");
        }
    }

    /// Joins the inference threads of every loaded model (at shutdown, after the last request).
    pub fn shutdown(&self) {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        for slot in models.values() {
            if let ModelState::Ready(serving) = &slot.state {
                serving.infer.shutdown();
            }
        }
    }

    /// The names `load_models` asks for at start (besides the default).
    fn wanted_at_start(&self) -> Vec<String> {
        let setting = self.config.load_models.trim();
        let default = self.default_name();
        let names: Vec<String> = match setting {
            "" | "none" => Vec::new(),
            "all" => self
                .models
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect(),
            list => list.split(',').map(|n| n.trim().to_string()).collect(),
        };
        names
            .into_iter()
            .filter(|n| !n.is_empty() && default.as_deref() != Some(n.as_str()))
            .collect()
    }

    /// Adds the model folders that appeared in the repository (not loaded), and forgets those
    /// that disappeared and are not loaded.
    fn rescan(&self) {
        let found = scan(&self.config.model_repository);
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        let default = self.default_name();
        models.retain(|name, slot| {
            !matches!(slot.state, ModelState::Unavailable(_))
                || default.as_deref() == Some(name.as_str())
                || found.iter().any(|(_, dir)| same_dir(dir, &slot.dir))
        });
        for (name, dir) in found {
            let taken = models.get(&name).map(|slot| slot.dir.clone());
            match taken {
                None => {
                    models.insert(name, unloaded(dir, NOT_LOADED));
                }
                Some(other) if !same_dir(&other, &dir) => {
                    tracing::debug!(
                        "{} names its model {name:?}, as {} does: only the first is served",
                        dir.display(),
                        other.display()
                    );
                }
                Some(_) => {}
            }
        }
    }
}

/// Hands the memory a model freed back to the system. glibc keeps freed blocks in its arenas
/// (one per thread that allocated), so without this an unloaded model's encoder session and
/// tensors would stay resident; `malloc_trim` releases what is free at the top of every arena.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas and takes their locks.
        unsafe {
            malloc_trim(0);
        }
    }
}

fn unloaded(dir: PathBuf, reason: &str) -> Slot {
    Slot {
        dir,
        stamp: None,
        state: ModelState::Unavailable(reason.into()),
        watchers: None,
    }
}

/// The model folders of `root` (its subfolders with a `model.toml`), named by their manifest;
/// a folder whose manifest cannot be read is named by the folder.
fn scan(root: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|dir| dir.join("model.toml").is_file())
        .map(|dir| {
            let name = ModelManifest::load(&dir)
                .map(|m| m.name)
                .unwrap_or_else(|_| {
                    dir.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                });
            (name, dir)
        })
        .collect();
    found.sort();
    found
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
