//! `prototypes.json` (schema "proco-prototypes" v1, see docs/prototypes.md): parsing,
//! validation, and the store the server reads them from.
//!
//! Why a store with an atomic swap: prototypes are hot-reloaded while requests are in
//! flight. Each batch takes one `Arc` snapshot ([`PrototypeStore::snapshot`]) and uses it
//! for every image in the batch, so no response ever mixes two versions, and a reload
//! never blocks or fails a request. A file that fails validation never replaces the
//! prototypes being served.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::vmf::{ClassModel, Rule};

pub const SCHEMA: &str = "proco-prototypes";
pub const SCHEMA_VERSION: u32 = 1;

/// Why a prototypes document was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrototypeError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not valid prototypes JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("invalid class model: {0}")]
    Model(#[from] crate::vmf::ModelError),
}

#[derive(Deserialize)]
struct RawClass {
    index: usize,
    label: String,
    count: f64,
    kappa: f64,
    #[serde(default)]
    mean_resultant_length: Option<f64>,
    mu: Vec<f64>,
}

#[derive(Deserialize)]
struct RawPrototypes {
    schema: String,
    schema_version: u32,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    model: Option<String>,
    feature_dim: usize,
    tau: f64,
    alpha: f64,
    labels: Vec<String>,
    #[serde(default)]
    default_rule: Option<Rule>,
    temperatures: HashMap<String, f64>,
    classes: Vec<RawClass>,
}

/// One validated set of class prototypes, immutable once built.
#[derive(Debug)]
pub struct Prototypes {
    /// Content-derived id from the file (or the file's SHA-256 prefix if it has none).
    pub version: String,
    /// Name of the encoder the prototypes belong to.
    pub model: String,
    pub classes: ClassModel,
    /// Calibration temperature per rule.
    pub temperatures: HashMap<Rule, f64>,
    /// The rule the trainer recommends.
    pub default_rule: Rule,
    /// Mean resultant length R per class, when the file gives it.
    pub mean_resultant_length: Vec<Option<f64>>,
}

impl Prototypes {
    /// Reads and validates a prototypes file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| PrototypeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_slice(&bytes)?)
    }

    /// Parses and validates a prototypes document: schema and version, labels and indices
    /// consistent, every temperature finite and positive, and the vMF parameters accepted
    /// by [`ClassModel::new`] (unit mu, finite positive kappa and counts).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PrototypeError> {
        let raw: RawPrototypes = serde_json::from_slice(bytes)?;
        let invalid = |m: String| Err(PrototypeError::Invalid(m));
        if raw.schema != SCHEMA {
            return invalid(format!("schema is {:?}, expected {SCHEMA:?}", raw.schema));
        }
        if raw.schema_version != SCHEMA_VERSION {
            return invalid(format!(
                "schema_version is {}, this server reads version {SCHEMA_VERSION}",
                raw.schema_version
            ));
        }
        if raw.classes.len() != raw.labels.len() {
            return invalid(format!(
                "{} labels but {} classes",
                raw.labels.len(),
                raw.classes.len()
            ));
        }
        let mut mu = Vec::with_capacity(raw.classes.len());
        let mut kappa = Vec::with_capacity(raw.classes.len());
        let mut counts = Vec::with_capacity(raw.classes.len());
        let mut mrl = Vec::with_capacity(raw.classes.len());
        for (i, class) in raw.classes.into_iter().enumerate() {
            if class.index != i {
                return invalid(format!("classes[{i}].index is {}", class.index));
            }
            if class.label != raw.labels[i] {
                return invalid(format!(
                    "classes[{i}].label is {:?} but labels[{i}] is {:?}",
                    class.label, raw.labels[i]
                ));
            }
            if class.mu.len() != raw.feature_dim {
                return invalid(format!(
                    "classes[{i}].mu has {} numbers, feature_dim is {}",
                    class.mu.len(),
                    raw.feature_dim
                ));
            }
            mu.push(class.mu);
            kappa.push(class.kappa);
            counts.push(class.count);
            mrl.push(class.mean_resultant_length);
        }
        let mut temperatures = HashMap::new();
        for rule in Rule::ALL {
            let t = raw.temperatures.get(rule.as_str()).copied().unwrap_or(1.0);
            if !(t.is_finite() && t > 0.0) {
                return invalid(format!(
                    "temperatures.{rule} is {t}; it must be finite and > 0"
                ));
            }
            temperatures.insert(rule, t);
        }
        if let Some(unknown) = raw.temperatures.keys().find(|k| k.parse::<Rule>().is_err()) {
            return invalid(format!("temperatures has unknown rule {unknown:?}"));
        }
        let classes = ClassModel::new(
            raw.labels,
            raw.feature_dim,
            raw.tau,
            raw.alpha,
            mu,
            kappa,
            counts,
        )?;
        let version = match raw.version {
            Some(v) if !v.trim().is_empty() => v,
            _ => {
                let digest = Sha256::digest(bytes);
                digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
            }
        };
        Ok(Prototypes {
            version,
            model: raw.model.unwrap_or_default(),
            classes,
            temperatures,
            default_rule: raw.default_rule.unwrap_or(Rule::Proco),
            mean_resultant_length: mrl,
        })
    }

    /// Temperature of a rule (every rule has one after validation).
    pub fn temperature(&self, rule: Rule) -> f64 {
        self.temperatures.get(&rule).copied().unwrap_or(1.0)
    }

    /// Checks that these prototypes fit the loaded encoder.
    pub fn check_fits(&self, feature_dim: usize, num_classes: usize) -> Result<(), PrototypeError> {
        if self.classes.dim() != feature_dim {
            return Err(PrototypeError::Invalid(format!(
                "feature_dim is {} but the encoder's feature output has width {feature_dim}",
                self.classes.dim()
            )));
        }
        if self.classes.num_classes() != num_classes {
            return Err(PrototypeError::Invalid(format!(
                "{} labels but the encoder's linear head has width {num_classes}",
                self.classes.num_classes()
            )));
        }
        Ok(())
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new version is now served.
    Swapped { previous: String, current: String },
    /// The file holds the version already served; nothing changed.
    Unchanged { version: String },
}

/// The prototypes currently served, swappable atomically.
pub struct PrototypeStore {
    path: PathBuf,
    feature_dim: usize,
    num_classes: usize,
    current: ArcSwap<Prototypes>,
    /// Serialises reloads (watcher, SIGHUP and the admin endpoint may race).
    reload_lock: Mutex<()>,
}

impl PrototypeStore {
    /// Loads the file and checks it against the encoder's output widths.
    pub fn open(path: &Path, feature_dim: usize, num_classes: usize) -> anyhow::Result<Self> {
        let protos = Prototypes::load(path)?;
        protos.check_fits(feature_dim, num_classes)?;
        Ok(PrototypeStore {
            path: path.to_path_buf(),
            feature_dim,
            num_classes,
            current: ArcSwap::from_pointee(protos),
            reload_lock: Mutex::new(()),
        })
    }

    /// The file the store reloads from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The prototypes to use for one whole batch or request.
    pub fn snapshot(&self) -> Arc<Prototypes> {
        self.current.load_full()
    }

    /// Re-reads the file; on success with a new version, swaps it in. On any error the
    /// served prototypes are untouched.
    pub fn reload(&self) -> Result<ReloadOutcome, PrototypeError> {
        let bytes = std::fs::read(&self.path).map_err(|source| PrototypeError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.reload_from_bytes(&bytes)
    }

    /// As [`reload`](Self::reload), from bytes already read.
    pub fn reload_from_bytes(&self, bytes: &[u8]) -> Result<ReloadOutcome, PrototypeError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let protos = Prototypes::from_slice(bytes)?;
        protos.check_fits(self.feature_dim, self.num_classes)?;
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
