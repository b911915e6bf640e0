//! `prototypes.json` (schema "proco-prototypes" v1, see docs/prototypes.md and its JSON
//! Schema, docs/prototypes.schema.json): parsing and validation ([`Prototypes`]), the store the
//! server reads them from ([`store`]), and the content-derived version id ([`version`]).
//!
//! The reader is as strict as the schema: every required field must be there, and an unknown
//! key is refused with its name, so that a typo (`kapa`) is an error and not a silently
//! ignored field.

pub mod store;
pub mod version;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::vmf::{ClassModel, Rule};
pub use store::{PrototypeStore, ReloadOutcome};
pub use version::prototypes_version;

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
#[serde(deny_unknown_fields)]
struct RawClass {
    index: usize,
    label: String,
    count: f64,
    kappa: f64,
    mean_resultant_length: f64,
    mu: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrototypes {
    schema: String,
    schema_version: u32,
    version: String,
    model: String,
    feature_dim: usize,
    tau: f64,
    alpha: f64,
    labels: Vec<String>,
    default_rule: Rule,
    temperatures: HashMap<String, f64>,
    classes: Vec<RawClass>,
}

/// One validated set of class prototypes, immutable once built.
#[derive(Debug)]
pub struct Prototypes {
    /// The version the file states (its content-derived id when written by our tools).
    pub version: String,
    /// Name of the encoder the prototypes belong to.
    pub model: String,
    pub classes: ClassModel,
    /// Calibration temperature per rule.
    pub temperatures: HashMap<Rule, f64>,
    /// The rule the trainer recommends.
    pub default_rule: Rule,
    /// Mean resultant length R per class, as the trainer measured it.
    pub mean_resultant_length: Vec<f64>,
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
        if raw.version.trim().is_empty() || raw.model.trim().is_empty() {
            return invalid("version and model must not be empty".into());
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
            if !(0.0..=1.0).contains(&class.mean_resultant_length) {
                return invalid(format!(
                    "classes[{i}].mean_resultant_length is {}; it must be in [0, 1]",
                    class.mean_resultant_length
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
        Ok(Prototypes {
            version: raw.version,
            model: raw.model,
            classes,
            temperatures,
            default_rule: raw.default_rule,
            mean_resultant_length: mrl,
        })
    }

    /// Temperature of a rule (every rule has one after validation).
    pub fn temperature(&self, rule: Rule) -> f64 {
        self.temperatures.get(&rule).copied().unwrap_or(1.0)
    }

    /// Checks that these prototypes belong to the loaded encoder: the model they name, and
    /// the widths of its outputs.
    pub fn check_fits(&self, encoder: &EncoderShape) -> Result<(), PrototypeError> {
        let EncoderShape {
            model,
            feature_dim,
            num_classes,
        } = encoder;
        let (feature_dim, num_classes) = (*feature_dim, *num_classes);
        if &self.model != model {
            return Err(PrototypeError::Invalid(format!(
                "the prototypes are for model {:?}, but the encoder being served is {model:?} (model.toml)",
                self.model
            )));
        }
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

/// What prototypes must match: the served model's name (model.toml) and its output widths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderShape {
    pub model: String,
    pub feature_dim: usize,
    pub num_classes: usize,
}

/// Writes `source` with new temperatures and a recomputed `version`; returns the version.
pub fn write_with_temperatures(
    source: &Path,
    out: &Path,
    temperatures: &HashMap<Rule, f64>,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let mut doc: Value =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", source.display()))?;
    let obj = doc
        .as_object_mut()
        .context("prototypes.json is not a JSON object")?;
    obj.insert(
        "temperatures".into(),
        Value::Object(
            Rule::ALL
                .iter()
                .map(|r| (r.to_string(), json!(temperatures[r])))
                .collect(),
        ),
    );
    let version = prototypes_version(&doc);
    doc["version"] = json!(version);
    // Check the result is a valid prototypes file before writing it.
    let pretty = serde_json::to_string_pretty(&doc)? + "\n";
    Prototypes::from_slice(pretty.as_bytes())
        .map_err(|e| anyhow::anyhow!("refusing to write invalid prototypes: {e}"))?;
    std::fs::write(out, pretty).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(version)
}

#[cfg(test)]
mod tests;

/// A valid two-class document with 2-D features (model "tiny"), for unit tests across the crate.
#[cfg(test)]
pub(crate) fn tiny_document(version: &str) -> Value {
    json!({
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "version": version, "model": "tiny",
        "feature_dim": 2, "tau": 0.1, "alpha": 1.0, "labels": ["a", "b"], "default_rule": "vmf",
        "temperatures": {"linear": 1.0, "proco": 1.0, "vmf": 1.0, "ensemble": 1.0},
        "classes": [
            {"index": 0, "label": "a", "count": 30, "kappa": 5.0, "mean_resultant_length": 0.7, "mu": [1.0, 0.0]},
            {"index": 1, "label": "b", "count": 10, "kappa": 5.0, "mean_resultant_length": 0.7, "mu": [0.0, 1.0]}
        ]
    })
}
