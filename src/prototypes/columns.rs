//! The per-class fields of a document, checked against its labels, feature_dim and schema
//! version, and laid out as columns.

use super::{ClassEntry, Document, PrototypeError, Source};

/// The per-class fields, checked against the labels, feature_dim and schema version, as
/// columns.
pub(super) struct ClassColumns {
    pub(super) mu: Vec<Vec<f64>>,
    pub(super) kappa: Vec<f64>,
    pub(super) counts: Vec<f64>,
    pub(super) mean_resultant_length: Vec<f64>,
    pub(super) sources: Vec<Source>,
    pub(super) head_index: Vec<Option<usize>>,
}

pub(super) fn class_columns(doc: &Document) -> Result<ClassColumns, PrototypeError> {
    let invalid = |m: String| Err(PrototypeError::Invalid(m));
    let n = doc.classes.len();
    let mut columns = ClassColumns {
        mu: Vec::with_capacity(n),
        kappa: Vec::with_capacity(n),
        counts: Vec::with_capacity(n),
        mean_resultant_length: Vec::with_capacity(n),
        sources: Vec::with_capacity(n),
        head_index: Vec::with_capacity(n),
    };
    let mut labels = std::collections::HashSet::new();
    for (i, class) in doc.classes.iter().enumerate() {
        if class.index != i {
            return invalid(format!("classes[{i}].index is {}", class.index));
        }
        if class.label != doc.labels[i] {
            return invalid(format!(
                "classes[{i}].label is {:?} but labels[{i}] is {:?}",
                class.label, doc.labels[i]
            ));
        }
        if !labels.insert(class.label.as_str()) {
            return invalid(format!("label {:?} appears twice", class.label));
        }
        if class.mu.len() != doc.feature_dim {
            return invalid(format!(
                "classes[{i}].mu has {} numbers, feature_dim is {}",
                class.mu.len(),
                doc.feature_dim
            ));
        }
        if !(0.0..=1.0).contains(&class.mean_resultant_length) {
            return invalid(format!(
                "classes[{i}].mean_resultant_length is {}; it must be in [0, 1]",
                class.mean_resultant_length
            ));
        }
        check_schema_fields(doc, i, class)?;
        columns.mu.push(class.mu.clone());
        columns.kappa.push(class.kappa);
        columns.counts.push(class.count);
        columns
            .mean_resultant_length
            .push(class.mean_resultant_length);
        columns
            .sources
            .push(class.source.unwrap_or(Source::Training));
        columns.head_index.push(if doc.schema_version == 1 {
            Some(i)
        } else {
            class.head_index
        });
    }
    Ok(columns)
}

/// v1 classes have none of the v2 fields; v2 classes have `sum` and `source`, and their `sum`
/// agrees with `count`, `mean_resultant_length` and `mu`.
fn check_schema_fields(doc: &Document, i: usize, class: &ClassEntry) -> Result<(), PrototypeError> {
    let invalid = |m: String| Err(PrototypeError::Invalid(m));
    if doc.schema_version == 1 {
        if class.sum.is_some() || class.source.is_some() || class.head_index.is_some() {
            return invalid(format!(
                "classes[{i}] has sum, source or head_index, which need schema_version 2"
            ));
        }
        return Ok(());
    }
    let (Some(sum), Some(_)) = (&class.sum, class.source) else {
        return invalid(format!(
            "classes[{i}] needs sum and source (schema_version 2)"
        ));
    };
    if sum.len() != doc.feature_dim {
        return invalid(format!(
            "classes[{i}].sum has {} numbers, feature_dim is {}",
            sum.len(),
            doc.feature_dim
        ));
    }
    let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    let r = norm / class.count;
    let gap = (r - class.mean_resultant_length).abs();
    if gap.is_nan() || gap > 1e-9 * r.max(1.0) {
        return invalid(format!(
            "classes[{i}]: |sum| / count is {r}, but mean_resultant_length is {}",
            class.mean_resultant_length
        ));
    }
    Ok(())
}
