//! The prototypes being served, swappable atomically.
//!
//! Why a store with an atomic swap: prototypes are hot-reloaded while requests are in
//! flight. Each batch takes one `Arc` snapshot ([`PrototypeStore::snapshot`]) and uses it
//! for every image in the batch, so no response ever mixes two versions, and a reload
//! never blocks or fails a request. A file that fails validation never replaces the
//! prototypes being served. Who may swap, and in which order, is the reloader's business
//! (`crate::reload`): the store only checks and swaps.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{EncoderShape, PrototypeError, Prototypes};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new version is now served.
    Swapped { previous: String, current: String },
    /// The content is the version already served; nothing changed.
    Unchanged { version: String },
}

pub struct PrototypeStore {
    path: PathBuf,
    encoder: EncoderShape,
    current: ArcSwap<Prototypes>,
}

impl PrototypeStore {
    /// Loads the file and checks it against the encoder.
    pub fn open(path: &Path, encoder: EncoderShape) -> anyhow::Result<Self> {
        let protos = Prototypes::load(path)?;
        protos.check_fits(&encoder)?;
        Ok(Self::new(path, encoder, protos))
    }

    /// A store that starts with prototypes already checked.
    pub fn new(path: &Path, encoder: EncoderShape, protos: Prototypes) -> Self {
        PrototypeStore {
            path: path.to_path_buf(),
            encoder,
            current: ArcSwap::from_pointee(protos),
        }
    }

    /// The file the store reloads from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The prototypes to use for one whole batch or request.
    pub fn snapshot(&self) -> Arc<Prototypes> {
        self.current.load_full()
    }

    /// Parses a candidate document and checks it against the encoder, without serving it.
    pub fn check(&self, bytes: &[u8]) -> Result<Prototypes, PrototypeError> {
        let protos = Prototypes::from_slice(bytes)?;
        protos.check_fits(&self.encoder)?;
        Ok(protos)
    }

    /// Serves `protos` from the next batch on, unless they are the version already served.
    pub fn swap(&self, protos: Prototypes) -> ReloadOutcome {
        let previous = self.current.load();
        if previous.version == protos.version {
            return ReloadOutcome::Unchanged {
                version: protos.version,
            };
        }
        let previous = previous.version.clone();
        let current = protos.version.clone();
        self.current.store(Arc::new(protos));
        ReloadOutcome::Swapped { previous, current }
    }

    /// [`check`](Self::check), then [`swap`](Self::swap). On any error the served prototypes
    /// are untouched.
    pub fn replace_from_bytes(&self, bytes: &[u8]) -> Result<ReloadOutcome, PrototypeError> {
        Ok(self.swap(self.check(bytes)?))
    }
}
