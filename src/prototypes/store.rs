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
    /// The file holds the version already served; nothing changed.
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

    /// Parses and checks a candidate document, and swaps it in if it is a new version. On
    /// any error the served prototypes are untouched.
    pub fn replace_from_bytes(&self, bytes: &[u8]) -> Result<ReloadOutcome, PrototypeError> {
        let protos = Prototypes::from_slice(bytes)?;
        protos.check_fits(&self.encoder)?;
        let previous = self.current.load();
        if previous.version == protos.version {
            return Ok(ReloadOutcome::Unchanged {
                version: protos.version,
            });
        }
        let previous = previous.version.clone();
        let current = protos.version.clone();
        self.current.store(Arc::new(protos));
        Ok(ReloadOutcome::Swapped { previous, current })
    }
}
