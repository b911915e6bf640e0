//! Changes that labelled examples make to the prototypes: fold unit features into a class's
//! vMF estimate (creating the class when asked), or remove a class. Pure: a document in, a
//! document out; the reloader writes and swaps the result.
//!
//! Each class keeps its sufficient statistics, the count n and the vector sum s of its unit
//! features (schema v2; a v1 class starts from s = n R mu). After a change the class's mean
//! direction is s / |s|, its mean resultant length R = |s| / n, and its concentration the
//! training's estimator kappa = p R / (1 - R^2) (`vmf::kappa_official`, capped at 1e5, which a
//! class of one example reaches), so that taught classes and trained classes are estimated
//! alike. Adding N images one at a time or in one request performs the same additions in the
//! same order, so both give the same prototypes.

use super::{ClassEntry, Document, Source};
use crate::vmf::kappa_official;

/// Longest label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

/// Why a change was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    InvalidLabel(String),
    #[error("there is no class {0:?}; add create=true to create it")]
    UnknownLabel(String),
    #[error("there is no class {0:?}")]
    NoSuchClass(String),
    #[error("the prototypes already have {max} classes, the most max_classes allows")]
    TooManyClasses { max: usize },
    #[error("{0:?} is the only class; a model needs at least one")]
    LastClass(String),
    #[error("{0}")]
    BadFeatures(String),
}

/// Refuses empty labels, labels over [`MAX_LABEL_BYTES`] and labels with control characters.
pub fn check_label(label: &str) -> Result<(), ChangeError> {
    if label.is_empty() {
        return Err(ChangeError::InvalidLabel("the label is empty".into()));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(ChangeError::InvalidLabel(format!(
            "the label is {} bytes long, more than {MAX_LABEL_BYTES}",
            label.len()
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(ChangeError::InvalidLabel(
            "the label contains control characters".into(),
        ));
    }
    Ok(())
}

/// Folds `features` (unit vectors of length `feature_dim`) into class `label`. A missing
/// class is created only with `create`, as a class the linear head does not know. Returns the
/// new document and whether the class was created.
pub fn learn(
    doc: &Document,
    label: &str,
    features: &[Vec<f32>],
    create: bool,
    max_classes: usize,
) -> Result<(Document, bool), ChangeError> {
    check_label(label)?;
    let mut doc = doc.clone().upgraded();
    // Conformal scores were measured on the old class model; they would not hold for the new one.
    doc.conformal = None;
    let p = doc.feature_dim;
    if let Some(bad) = features.iter().position(|z| {
        z.len() != p || z.iter().any(|v| !v.is_finite()) || z.iter().all(|v| *v == 0.0)
    }) {
        return Err(ChangeError::BadFeatures(format!(
            "feature {bad} is not {p} finite numbers, not all zero"
        )));
    }
    let created = !doc.labels.iter().any(|l| l == label);
    if created {
        if !create {
            return Err(ChangeError::UnknownLabel(label.to_string()));
        }
        if doc.classes.len() >= max_classes {
            return Err(ChangeError::TooManyClasses { max: max_classes });
        }
        doc.labels.push(label.to_string());
        doc.classes.push(ClassEntry {
            index: doc.classes.len(),
            label: label.to_string(),
            count: 0.0,
            kappa: 0.0,
            mean_resultant_length: 0.0,
            mu: vec![0.0; p],
            sum: Some(vec![0.0; p]),
            source: Some(Source::Examples),
            head_index: None,
        });
    }
    let class = doc
        .classes
        .iter_mut()
        .find(|c| c.label == label)
        .expect("found or just created");
    let sum = class.sum.as_mut().expect("an upgraded document has sums");
    for z in features {
        // The encoder's f32 output is unit-norm only to ~1e-7; on the sphere exactly, a single
        // example has R = 1 rather than 1 + 1e-8.
        let norm = z.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        for (s, v) in sum.iter_mut().zip(z) {
            *s += f64::from(*v) / norm;
        }
        class.count += 1.0;
    }
    let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm.is_nan() || norm <= 0.0 {
        return Err(ChangeError::BadFeatures(format!(
            "the features of class {label:?} add up to zero: no mean direction"
        )));
    }
    class.mu = sum.iter().map(|v| v / norm).collect();
    class.mean_resultant_length = (norm / class.count).min(1.0);
    class.kappa = kappa_official(p, class.mean_resultant_length);
    Ok((doc, created))
}

/// Removes class `label`; the others keep their order (and their head columns).
pub fn remove(doc: &Document, label: &str) -> Result<Document, ChangeError> {
    let mut doc = doc.clone().upgraded();
    doc.conformal = None;
    let Some(at) = doc.labels.iter().position(|l| l == label) else {
        return Err(ChangeError::NoSuchClass(label.to_string()));
    };
    if doc.classes.len() == 1 {
        return Err(ChangeError::LastClass(label.to_string()));
    }
    doc.labels.remove(at);
    doc.classes.remove(at);
    for (i, class) in doc.classes.iter_mut().enumerate() {
        class.index = i;
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prototypes::{tiny_document, Prototypes};

    fn tiny() -> Document {
        serde_json::from_value(tiny_document(1.0)).unwrap()
    }

    fn reparse(mut doc: Document) -> Prototypes {
        Prototypes::from_slice(&doc.to_bytes()).expect("a valid document")
    }

    #[test]
    fn one_at_a_time_and_all_at_once_agree() {
        let zs: Vec<Vec<f32>> = (0..7)
            .map(|i| {
                let a = 0.3 + 0.1 * i as f32;
                vec![a.cos(), a.sin()]
            })
            .collect();
        let (all, created) = learn(&tiny(), "c", &zs, true, 10).unwrap();
        assert!(created);
        let mut one = tiny();
        for z in &zs {
            one = learn(&one, "c", std::slice::from_ref(z), true, 10)
                .unwrap()
                .0;
        }
        let (a, b) = (reparse(all), reparse(one));
        assert_eq!(a.version, b.version);
        let (ca, cb) = (&a.document.classes[2], &b.document.classes[2]);
        assert_eq!(ca.count, 7.0);
        for (x, y) in ca.mu.iter().zip(&cb.mu) {
            assert!((x - y).abs() <= 1e-12);
        }
        assert!((ca.kappa - cb.kappa).abs() <= 1e-12 * ca.kappa);
        assert_eq!(a.sources[2], Source::Examples);
        assert_eq!(a.head_index, vec![Some(0), Some(1), None]);
        assert!(a.head_columns().is_none(), "the head does not know class c");
    }

    #[test]
    fn the_statistics_follow_exactly() {
        // Class a: n = 30, R = 0.7, mu = e1, so s = (21, 0). Add (0, 1): s = (21, 1), n = 31.
        let (doc, created) = learn(&tiny(), "a", &[vec![0.0, 1.0]], false, 10).unwrap();
        assert!(!created);
        let a = &reparse(doc).document.classes[0];
        let norm = (21.0f64 * 21.0 + 1.0).sqrt();
        assert_eq!(a.count, 31.0);
        assert!((a.mean_resultant_length - norm / 31.0).abs() < 1e-15);
        assert!((a.mu[0] - 21.0 / norm).abs() < 1e-15 && (a.mu[1] - 1.0 / norm).abs() < 1e-15);
        assert!((a.kappa - kappa_official(2, norm / 31.0)).abs() < 1e-12);
        assert_eq!(a.source, Some(Source::Training));
    }

    #[test]
    fn refusals() {
        let doc = tiny();
        let z = [vec![1.0, 0.0]];
        assert_eq!(
            learn(&doc, "c", &z, false, 10).unwrap_err(),
            ChangeError::UnknownLabel("c".into())
        );
        assert!(matches!(
            learn(&doc, "c", &z, true, 2),
            Err(ChangeError::TooManyClasses { max: 2 })
        ));
        for bad in ["", "a\nb", &"x".repeat(129)] {
            assert!(matches!(
                learn(&doc, bad, &z, true, 10),
                Err(ChangeError::InvalidLabel(_))
            ));
        }
        assert!(matches!(
            learn(&doc, "a", &[vec![1.0]], false, 10),
            Err(ChangeError::BadFeatures(_))
        ));
        let one = remove(&doc, "a").unwrap();
        assert_eq!(one.labels, vec!["b"]);
        assert_eq!(one.classes[0].index, 0);
        assert_eq!(one.classes[0].head_index, Some(1));
        assert_eq!(
            remove(&one, "b").unwrap_err(),
            ChangeError::LastClass("b".into())
        );
        assert_eq!(
            remove(&doc, "zz").unwrap_err(),
            ChangeError::NoSuchClass("zz".into())
        );
    }
}
