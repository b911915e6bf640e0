//! `prototypes.json` (schema "proco-prototypes" v1 to v3, see docs/prototypes.md and its JSON
//! Schema, docs/prototypes.schema.json): the file's form ([`Document`]), parsing and validation
//! ([`Prototypes`]), changes learned from examples ([`change`]), the store the server reads
//! them from ([`store`]), durable versions on disk ([`durable`]), and the content-derived version
//! id ([`version`]).
//!
//! The reader is as strict as the schema: every required field must be there, and an unknown
//! key is refused with its name, so that a typo (`kapa`) is an error and not a silently
//! ignored field. The version served is always the id of the content: a file whose stated
//! `version` is stale is served under its real id, and the disagreement is reported.

pub mod change;
mod columns;
pub mod durable;
pub mod store;
pub mod version;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::vmf::{ClassModel, ConformalScores, Rule};
use columns::class_columns;
pub use store::{PrototypeStore, ReloadOutcome};
pub use version::prototypes_version;

pub const SCHEMA: &str = "proco-prototypes";
/// The schema version this server writes; it reads 1 to 3 (3 added conformal scores).
pub const SCHEMA_VERSION: u32 = 3;
/// The conformal score the server computes (see `crate::vmf::conformal`).
pub const CONFORMAL_SCORE: &str = "1-p_balanced";

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

/// Where a class's statistics come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The training run (possibly with examples added since).
    Training,
    /// Only examples taught to the server.
    Examples,
}

/// One class as the file holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassEntry {
    pub index: usize,
    pub label: String,
    /// Written as an integer when it is one (as the exporter writes it), so that re-serialising
    /// a document keeps its content id.
    #[serde(serialize_with = "integral_as_integer")]
    pub count: f64,
    pub kappa: f64,
    pub mean_resultant_length: f64,
    pub mu: Vec<f64>,
    /// v2: the vector sum of the class's unit features, the sufficient statistic with `count`
    /// (v1: derived as count R mu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<Vec<f64>>,
    /// v2: where the statistics come from (v1: training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// v2: the column of the encoder's linear head for this class; absent for a class the
    /// head does not know (v1: `index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_index: Option<usize>,
}

fn integral_as_integer<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// The file's form, as read and as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub schema: String,
    pub schema_version: u32,
    pub version: String,
    pub model: String,
    pub feature_dim: usize,
    pub tau: f64,
    pub alpha: f64,
    pub labels: Vec<String>,
    pub default_rule: Rule,
    pub temperatures: BTreeMap<String, f64>,
    pub classes: Vec<ClassEntry>,
    /// v3: split-conformal calibration scores, so that prediction sets can be served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conformal: Option<ConformalSection>,
}

/// Conformal calibration as the file holds it: per rule, per class (in `classes` order), the
/// ascending scores 1 - p(y | x) of the calibration images of that class, with p the balanced
/// probabilities at the temperature stated here.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConformalSection {
    /// The score's name: `1-p_balanced`.
    pub score: String,
    /// What the scores were computed on (the validation split; never the test set).
    pub calibration_data: String,
    /// Per rule: the temperature the scores were computed at, and the scores.
    pub rules: BTreeMap<String, ConformalRule>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConformalRule {
    pub temperature: f64,
    pub scores: Vec<Vec<f64>>,
}

impl Document {
    /// The document in schema v2 with every field filled (what the server writes).
    pub fn upgraded(mut self) -> Document {
        let v1 = self.schema_version == 1;
        self.schema_version = SCHEMA_VERSION;
        for class in &mut self.classes {
            if class.sum.is_none() {
                // mu is unit only within 1e-6 (what the reader allows), but a v2 sum must agree
                // with R to 1e-9: scale the unit direction, not mu itself.
                let norm = class.mu.iter().map(|m| m * m).sum::<f64>().sqrt();
                let scale = class.count * class.mean_resultant_length / norm;
                class.sum = Some(class.mu.iter().map(|m| m * scale).collect());
            }
            class.source.get_or_insert(Source::Training);
            if v1 {
                class.head_index = Some(class.index);
            }
        }
        self
    }

    /// The bytes of this document with `version` set to the id of its content.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        self.version = String::new();
        let value = serde_json::to_value(&*self).expect("a document is plain JSON");
        self.version = prototypes_version(&value);
        let mut bytes = serde_json::to_vec_pretty(&*self).expect("a document is plain JSON");
        bytes.push(b'\n');
        bytes
    }
}

/// One validated set of class prototypes, immutable once built.
#[derive(Debug)]
pub struct Prototypes {
    /// The id of the content: what every answer names (docs/prototypes.md).
    pub version: String,
    /// The `version` the file states; differs from `version` when the file was edited by hand.
    pub stated_version: String,
    /// Name of the encoder the prototypes belong to.
    pub model: String,
    pub classes: ClassModel,
    /// Calibration temperature per rule.
    pub temperatures: HashMap<Rule, f64>,
    /// The rule the trainer recommends.
    pub default_rule: Rule,
    /// Mean resultant length R per class.
    pub mean_resultant_length: Vec<f64>,
    /// Where each class's statistics come from.
    pub sources: Vec<Source>,
    /// The linear-head column of each class, if the head knows it.
    pub head_index: Vec<Option<usize>>,
    /// Conformal calibration scores per rule, when the file has them (schema v3).
    pub conformal: HashMap<Rule, ConformalScores>,
    /// Rules whose stored scores are not served, and why (their temperature changed since).
    pub conformal_stale: HashMap<Rule, String>,
    /// The parsed file, the starting point of every change.
    pub document: Document,
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
        let value: Value = serde_json::from_slice(bytes)?;
        let content_version = prototypes_version(&value);
        let raw: Document = serde_json::from_value(value)?;
        let invalid = |m: String| Err(PrototypeError::Invalid(m));
        if raw.schema != SCHEMA {
            return invalid(format!("schema is {:?}, expected {SCHEMA:?}", raw.schema));
        }
        if !(1..=SCHEMA_VERSION).contains(&raw.schema_version) {
            return invalid(format!(
                "schema_version is {}, this server reads versions 1 to {SCHEMA_VERSION}",
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
        let columns = class_columns(&raw)?;
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
        let (conformal, conformal_stale) = conformal_scores(&raw, &temperatures)?;
        let classes = ClassModel::new(
            raw.labels.clone(),
            raw.feature_dim,
            raw.tau,
            raw.alpha,
            columns.mu,
            columns.kappa,
            columns.counts,
        )?;
        Ok(Prototypes {
            version: content_version,
            stated_version: raw.version.clone(),
            model: raw.model.clone(),
            classes,
            temperatures,
            default_rule: raw.default_rule,
            mean_resultant_length: columns.mean_resultant_length,
            sources: columns.sources,
            head_index: columns.head_index,
            conformal,
            conformal_stale,
            document: raw,
        })
    }

    /// The temperature a rule's conformal scores were computed at, when it has usable ones.
    pub fn conformal_temperature(&self, rule: Rule) -> Option<f64> {
        self.conformal.get(&rule)?;
        let section = self.document.conformal.as_ref()?;
        section.rules.get(rule.as_str()).map(|r| r.temperature)
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
        if self.document.schema_version == 1 && self.classes.num_classes() != num_classes {
            return Err(PrototypeError::Invalid(format!(
                "{} labels but the encoder's linear head has width {num_classes}",
                self.classes.num_classes()
            )));
        }
        let mut seen = vec![false; num_classes];
        for (i, head) in self.head_index.iter().enumerate() {
            let Some(h) = *head else { continue };
            if h >= num_classes || std::mem::replace(&mut seen[h], true) {
                return Err(PrototypeError::Invalid(format!(
                    "classes[{i}].head_index {h} is not a free column of the linear head (width {num_classes})"
                )));
            }
        }
        Ok(())
    }

    /// The linear-head column of every class, when the head knows them all: the `linear` and
    /// `ensemble` rules can answer only then.
    pub fn head_columns(&self) -> Option<Vec<usize>> {
        self.head_index.iter().copied().collect()
    }

    /// The rules that can answer with these prototypes.
    pub fn available_rules(&self) -> Vec<Rule> {
        let head = self.head_columns().is_some();
        Rule::ALL
            .into_iter()
            .filter(|r| head || !r.needs_linear_head())
            .collect()
    }
}

/// The conformal section, checked: schema v3, the known score, one list per class per rule,
/// scores ascending in [0, 1]. Scores computed at another temperature than the file now serves
/// are not used (a temperature edited by hand would silently void their guarantee): the rule
/// is listed as stale, with the reason, and serves no sets until they are refitted.
type ConformalParts = (HashMap<Rule, ConformalScores>, HashMap<Rule, String>);

fn conformal_scores(
    doc: &Document,
    temperatures: &HashMap<Rule, f64>,
) -> Result<ConformalParts, PrototypeError> {
    let invalid = |m: String| Err(PrototypeError::Invalid(m));
    let mut stale = HashMap::new();
    let Some(section) = &doc.conformal else {
        return Ok((HashMap::new(), stale));
    };
    if doc.schema_version < 3 {
        return invalid("conformal needs schema_version 3".into());
    }
    if section.score != CONFORMAL_SCORE {
        return invalid(format!(
            "conformal.score is {:?}; this server computes {CONFORMAL_SCORE:?}",
            section.score
        ));
    }
    let mut out = HashMap::new();
    for (name, entry) in &section.rules {
        let Ok(rule) = name.parse::<Rule>() else {
            return invalid(format!("conformal.rules has unknown rule {name:?}"));
        };
        if entry.scores.len() != doc.classes.len() {
            return invalid(format!(
                "conformal.rules.{rule}.scores has {} lists for {} classes",
                entry.scores.len(),
                doc.classes.len()
            ));
        }
        let scores = ConformalScores::new(entry.scores.clone())
            .map_err(|e| PrototypeError::Invalid(format!("conformal.rules.{rule}: {e}")))?;
        let served = temperatures[&rule];
        // Written so that a NaN temperature counts as a mismatch.
        let same = (entry.temperature - served).abs() <= 1e-12 * served;
        if !same {
            stale.insert(
                rule,
                format!(
                    "its conformal scores were computed at temperature {} but temperatures.{rule} is {served}",
                    entry.temperature
                ),
            );
            continue;
        }
        out.insert(rule, scores);
    }
    Ok((out, stale))
}

/// Writes `source` with (optionally) new temperatures and new conformal scores, in the
/// current schema, with a recomputed `version`; returns the version. The result is validated
/// before it is written.
pub fn write_calibrated(
    source: &Path,
    out: &Path,
    temperatures: &HashMap<Rule, f64>,
    conformal: Option<ConformalSection>,
) -> anyhow::Result<String> {
    let current = Prototypes::load(source)?;
    let mut doc = current.document.upgraded();
    doc.temperatures = Rule::ALL
        .iter()
        .map(|r| (r.to_string(), temperatures[r]))
        .collect();
    doc.conformal = conformal;
    let bytes = doc.to_bytes();
    Prototypes::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("refusing to write invalid prototypes: {e}"))?;
    std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(doc.version)
}

/// What prototypes must match: the served model's name (model.toml) and its output widths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderShape {
    pub model: String,
    pub feature_dim: usize,
    pub num_classes: usize,
}

#[cfg(test)]
mod tests;

/// A valid two-class v1 document with 2-D features (model "tiny"); `vmf_temperature` tells
/// versions apart. Its stated version is the id of its content. For unit tests across the crate.
#[cfg(test)]
pub(crate) fn tiny_document(vmf_temperature: f64) -> Value {
    let mut doc = serde_json::json!({
        "schema": SCHEMA, "schema_version": 1, "version": "", "model": "tiny",
        "feature_dim": 2, "tau": 0.1, "alpha": 1.0, "labels": ["a", "b"], "default_rule": "vmf",
        "temperatures": {"linear": 1.0, "proco": 1.0, "vmf": vmf_temperature, "ensemble": 1.0},
        "classes": [
            {"index": 0, "label": "a", "count": 30, "kappa": 5.0, "mean_resultant_length": 0.7, "mu": [1.0, 0.0]},
            {"index": 1, "label": "b", "count": 10, "kappa": 5.0, "mean_resultant_length": 0.7, "mu": [0.0, 1.0]}
        ]
    });
    doc["version"] = serde_json::json!(prototypes_version(&doc));
    doc
}
