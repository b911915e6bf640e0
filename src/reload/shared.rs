//! The reloader with a shared store (`prototype_store = "postgres://..."`): changes are made
//! against the version current in the store, in one transaction, then served here; the other
//! replicas follow through `LISTEN` ([`Reloader::follow_store`]). The file of the model folder
//! only seeds an empty store, and content written to it later is published as a new version.

use std::sync::Arc;

use super::{ChangeFailed, Changed, Reloader};
use crate::pgstore::{Committed, Current, NewVersion, SharedStore, StoreError};
use crate::prototypes::durable::{Cause, VersionEntry};
use crate::prototypes::{PrototypeStore, Prototypes};
use crate::reload::{Change, ReloadOutcome};

/// One model's place in the shared store.
pub struct Shared {
    pub store: Arc<SharedStore>,
    pub model: String,
    /// The runtime the store's connections live on; the reloader runs on blocking threads.
    runtime: tokio::runtime::Handle,
}

impl Shared {
    /// Call from a thread of the runtime (or a blocking thread it started).
    pub fn new(store: Arc<SharedStore>, model: &str) -> Self {
        Shared {
            store,
            model: model.to_string(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    /// The version to serve at start: the store's, after seeding it with the model folder's
    /// prototypes if it has none for this model. Blocking.
    pub fn open(&self, prototypes: &PrototypeStore, file_bytes: &[u8]) -> anyhow::Result<()> {
        let seed = prototypes.snapshot();
        let document = String::from_utf8(file_bytes.to_vec())?;
        let current = self.block_on(
            self.store
                .seed(&self.model, &proposal(&seed, document, Cause::File)),
        )?;
        if current.version == seed.version {
            return Ok(());
        }
        let protos = prototypes.check(current.document.as_bytes()).map_err(|e| {
            anyhow::anyhow!(
                "prototype_store: version {} of model {} in {} does not fit this model's encoder: {e}",
                current.version,
                self.model,
                self.store.shown()
            )
        })?;
        tracing::info!(
            "model {}: serving prototypes version {} from the shared store ({} by {}); the model folder holds {}",
            self.model,
            current.version,
            current.cause,
            current.replica,
            seed.version
        );
        prototypes.swap(protos);
        Ok(())
    }

    /// The store's history of this model, oldest first. Blocking.
    pub(super) fn versions(&self) -> Result<Vec<VersionEntry>, ChangeFailed> {
        let stored = self.block_on(self.store.versions(&self.model))?;
        Ok(stored
            .into_iter()
            .map(|v| VersionEntry {
                cause: Cause::from_key(&v.cause).unwrap_or(Cause::File),
                version: v.version,
                time: v.time,
                classes: v.classes.max(0) as usize,
                parent: v.parent,
                replica: Some(v.replica),
            })
            .collect())
    }
}

/// The proposal of a new version in the store.
fn proposal(protos: &Prototypes, document: String, cause: Cause) -> NewVersion {
    NewVersion {
        document,
        version: protos.version.clone(),
        cause: cause.key(),
        classes: protos.classes.num_classes(),
    }
}

impl Reloader {
    /// `change` made against the store's current version in one transaction, then served here.
    /// The caller holds the reloader's lock.
    pub(super) fn apply_shared(
        &self,
        shared: &Shared,
        change: Change,
    ) -> Result<Changed, ChangeFailed> {
        let rollback_to = match &change {
            Change::Rollback { version } => Some(
                shared
                    .block_on(shared.store.document(&shared.model, version))?
                    .ok_or_else(|| ChangeFailed::UnknownVersion(version.clone()))?,
            ),
            _ => None,
        };
        let mut made = None;
        let committed = shared.block_on(shared.store.change(
            &shared.model,
            |current: &Current| -> Result<Option<NewVersion>, ChangeFailed> {
                let (bytes, cause, created, learned) = match rollback_to {
                    Some(document) => (document.into_bytes(), Cause::Rollback, false, None),
                    None => {
                        let base = self.store.check(current.document.as_bytes())?;
                        self.changed_bytes(&base, change)?
                    }
                };
                let protos = self.store.check(&bytes)?;
                let document = String::from_utf8(bytes).map_err(|e| {
                    ChangeFailed::Storage(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                })?;
                let next = proposal(&protos, document, cause);
                made = Some((protos, cause, created, learned));
                Ok(Some(next))
            },
        ))?;
        let (protos, cause, created, learned) = made.expect("the change was proposed");
        let version = protos.version.clone();
        let classes = protos.classes.num_classes();
        let local = self.store.swap(protos);
        let saved = format!("saved to the shared store {}", shared.store.shown());
        self.announce(&local, cause, created, learned, &saved);
        let outcome = match committed {
            Committed::Written { previous } => ReloadOutcome::Swapped {
                previous,
                current: version,
            },
            Committed::Unchanged => ReloadOutcome::Unchanged { version },
        };
        Ok(Changed {
            outcome,
            classes,
            created,
        })
    }

    /// Publishes new content of the model folder's file as the store's next version.
    /// The caller holds the reloader's lock.
    pub(super) fn publish_file(
        &self,
        shared: &Shared,
        bytes: &[u8],
    ) -> Result<ReloadOutcome, ChangeFailed> {
        let protos = self.store.check(bytes)?;
        let document = String::from_utf8(bytes.to_vec())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let next = proposal(&protos, document, Cause::File);
        let committed = shared.block_on(shared.store.change(&shared.model, |_: &Current| {
            Ok::<_, ChangeFailed>(Some(next))
        }))?;
        let version = protos.version.clone();
        self.metrics
            .classes
            .set(protos.classes.num_classes() as i64);
        let local = self.store.swap(protos);
        Ok(match (committed, local) {
            (Committed::Written { previous }, _) => ReloadOutcome::Swapped {
                previous,
                current: version,
            },
            (Committed::Unchanged, local) => local,
        })
    }

    /// Serves the store's current version if it is not the one served here: a change made by
    /// another replica, or while this one was away. Blocking (it takes the reloader's lock).
    pub fn follow_store(&self) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let _lock = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
        let current = shared.block_on(shared.store.current(&shared.model))?;
        let served = self.store.snapshot();
        if current.version == served.version {
            return Ok(());
        }
        let protos = match self.store.check(current.document.as_bytes()) {
            Ok(protos) => protos,
            Err(e) => {
                tracing::error!(
                    "model {}: version {} in the shared store does not fit this replica's encoder ({e}); still serving version {}",
                    shared.model,
                    current.version,
                    served.version
                );
                return Ok(());
            }
        };
        let classes = protos.classes.num_classes();
        if let ReloadOutcome::Swapped {
            previous,
            current: now,
        } = self.store.swap(protos)
        {
            self.metrics.classes.set(classes as i64);
            self.metrics.set_prototypes_version(Some(&previous), &now);
            self.metrics
                .prototype_reloads
                .with_label_values(&["shared_store"])
                .inc();
            tracing::info!(
                "model {}: now serving prototypes version {now} (was {previous}), {classes} classes, from the shared store ({} by {})",
                shared.model,
                Cause::from_key(&current.cause).map_or(current.cause.clone(), |c| c.to_string()),
                current.replica
            );
        }
        Ok(())
    }

    /// Starts following the shared store, if there is one.
    pub(super) fn spawn_follower(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let shared = self.shared.as_ref()?;
        let reloader = self.clone();
        Some(crate::pgstore::spawn_follower(
            shared.store.clone(),
            shared.model.clone(),
            self.metrics.prototype_store_up(),
            Arc::new(move || reloader.follow_store()),
        ))
    }
}
