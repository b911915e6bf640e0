//! Changes that come from the folders: reloading a model whose manifest or encoder changed, and
//! the repository poll (Triton's POLL mode).

use std::path::Path;
use std::sync::Arc;

use super::{same_dir, scan, ModelState, Repository, RepositoryError, Slot, NOT_LOADED};
use crate::manifest::ModelManifest;

impl Repository {
    /// Loads `name` again from its folder (a changed manifest or encoder) and swaps it in: the
    /// old one serves until the new one is ready, then finishes its admitted requests and is
    /// freed. A new version that fails to load leaves the old one serving.
    pub async fn reload(&self, name: &str) -> Result<(), RepositoryError> {
        let _serial = self.changes.lock().await;
        let dir = match self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            Some(Slot {
                dir,
                state: ModelState::Ready(_),
                ..
            }) => dir.clone(),
            _ => {
                return Err(RepositoryError::NotLoaded(format!(
                    "model {name:?} is not loaded"
                )))
            }
        };
        let loaded = self.load_from(&dir).await;
        let fresh = match loaded {
            Ok(serving) if serving.manifest.name == name => Arc::new(serving),
            Ok(serving) => {
                return Err(RepositoryError::Refused(format!(
                    "its manifest now names it {:?}; the old version keeps serving",
                    serving.manifest.name
                )))
            }
            Err(e) => {
                tracing::error!(
                    "model {name:?} could not be reloaded, the old version keeps serving: {e:#}"
                );
                return Err(RepositoryError::Refused(format!("{e:#}")));
            }
        };
        let (old, old_watchers) = {
            let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
            let slot = models
                .get_mut(name)
                .expect("slots are removed only under the lock");
            let old_watchers = slot.watchers.take();
            let old = std::mem::replace(&mut slot.state, ModelState::Loading);
            self.serve(slot, fresh);
            (old, old_watchers)
        };
        drop(old_watchers);
        if let ModelState::Ready(old) = old {
            // Its series are the new version's too: they stay.
            self.retire(name, old, false).await;
        }
        tracing::info!("model {name:?} reloaded from {}", dir.display());
        Ok(())
    }

    /// One look at the repository (Triton's POLL mode): loads the model folders that appeared,
    /// reloads those whose manifest or encoder changed, and unloads those that disappeared. The
    /// default model is reloaded when it changes, never unloaded.
    pub async fn poll_once(&self) {
        let found = scan(&self.config.model_repository);
        let default = self.default_name();
        let (mut load, mut reload, mut unload) = (Vec::new(), Vec::new(), Vec::new());
        {
            let models = self.models.read().unwrap_or_else(|e| e.into_inner());
            for (name, dir) in &found {
                let Some(slot) = models.get(name) else {
                    load.push(name.clone());
                    continue;
                };
                if !same_dir(&slot.dir, dir) {
                    continue;
                }
                match &slot.state {
                    ModelState::Ready(s)
                        if slot.stamp.as_ref() != Some(&stamp(dir, &s.manifest)) =>
                    {
                        reload.push(name.clone())
                    }
                    ModelState::Unavailable(reason) if reason == NOT_LOADED => {
                        load.push(name.clone())
                    }
                    _ => {}
                }
            }
            for (name, slot) in models.iter() {
                let gone = !found.iter().any(|(_, dir)| same_dir(dir, &slot.dir));
                let ready = matches!(slot.state, ModelState::Ready(_));
                if gone && ready && default.as_deref() != Some(name.as_str()) {
                    unload.push(name.clone());
                }
            }
        }
        for name in load {
            if let Err(e) = self.load(&name).await {
                tracing::warn!("repository poll: {e}");
            }
        }
        for name in reload {
            let _ = self.reload(&name).await;
        }
        for name in unload {
            tracing::info!("repository poll: the folder of model {name:?} is gone; unloading it");
            let _ = self.unload(&name).await;
        }
    }
}

/// What tells a model folder changed: the size and modification time of its manifest and of
/// the encoder it serves (the prototypes have their own hot reload).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Stamp(Vec<Option<(u64, std::time::SystemTime)>>);

pub(super) fn stamp(dir: &Path, manifest: &ModelManifest) -> Stamp {
    let of = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    };
    Stamp(vec![
        of(&dir.join("model.toml")),
        of(&manifest.encoder_path),
    ])
}
