//! The labelled image folder `eval` reads, and the label-shift subsampling of `--shift`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::prototypes::Prototypes;

/// Images per class in a list of labels.
pub fn label_counts(labels: &[usize], c: usize) -> Vec<usize> {
    let mut counts = vec![0; c];
    for &y in labels {
        counts[y] += 1;
    }
    counts
}

/// `<root>/<label>/*.{jpg,jpeg,png}`, sorted; every sub-folder must name a class of the model.
pub fn scan(root: &Path, labels: &[String]) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot read {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut items = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(y) = labels.iter().position(|l| *l == name) else {
            bail!(
                "folder {} is not a class of the model; its classes are: {}",
                dir.display(),
                labels.join(", ")
            );
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                p.is_file() && matches!(ext.as_str(), "jpg" | "jpeg" | "png")
            })
            .collect();
        files.sort();
        items.extend(files.into_iter().map(|f| (f, y)));
    }
    if items.is_empty() {
        bail!(
            "no images under {} (expected <label>/*.jpg|*.jpeg|*.png)",
            root.display()
        );
    }
    Ok(items)
}

pub fn cap_per_class(items: Vec<(PathBuf, usize)>, max: usize, c: usize) -> Vec<(PathBuf, usize)> {
    let mut seen = vec![0; c];
    items
        .into_iter()
        .filter(|(_, y)| {
            seen[*y] += 1;
            seen[*y] <= max
        })
        .collect()
}

/// Target class distribution of `--shift`.
pub fn shift_weights(spec: &str, protos: &Prototypes) -> anyhow::Result<Vec<f64>> {
    let c = protos.classes.num_classes();
    let w = match spec {
        "train" => protos.classes.train_prior(),
        "uniform" => vec![1.0; c],
        list => {
            let w = list
                .split(',')
                .map(|s| s.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| {
                    format!(
                        "--shift {list:?}: expected train, uniform or {c} comma-separated weights"
                    )
                })?;
            if w.len() != c {
                bail!("--shift has {} weights; the model has {c} classes", w.len());
            }
            w
        }
    };
    if w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) || w.iter().sum::<f64>() <= 0.0 {
        bail!("--shift weights must be finite, non-negative and not all zero");
    }
    let total: f64 = w.iter().sum();
    Ok(w.iter().map(|v| v / total).collect())
}

/// Images to keep per class so that the counts are proportional to `weights`: the class that is
/// most constrained (smallest available / weight; for a balanced set, the largest weight) is kept
/// whole, the others get floor(scale * weight) (at least 1 if their weight is positive).
pub fn shifted_counts(available: &[usize], weights: &[f64]) -> Vec<usize> {
    let scale = available
        .iter()
        .zip(weights)
        .filter(|(_, &w)| w > 0.0)
        .map(|(&a, &w)| a as f64 / w)
        .fold(f64::INFINITY, f64::min);
    available
        .iter()
        .zip(weights)
        .map(|(&a, &w)| {
            if w <= 0.0 {
                0
            } else {
                ((scale * w + 1e-9).floor() as usize)
                    .clamp(1, a.max(1))
                    .min(a)
            }
        })
        .collect()
}

/// Keeps `keep[y]` images of each class y, chosen by a seeded shuffle; the input order is kept.
pub fn subsample(items: Vec<(PathBuf, usize)>, keep: &[usize], seed: u64) -> Vec<(PathBuf, usize)> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut selected = vec![false; items.len()];
    for (y, &k) in keep.iter().enumerate() {
        let mut idx: Vec<usize> = (0..items.len()).filter(|&i| items[i].1 == y).collect();
        // Fisher-Yates.
        for i in (1..idx.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        for &i in idx.iter().take(k) {
            selected[i] = true;
        }
    }
    items
        .into_iter()
        .zip(selected)
        .filter(|(_, s)| *s)
        .map(|(item, _)| item)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_keeps_the_most_constrained_class_whole() {
        assert_eq!(
            shifted_counts(&[1000, 1000, 1000], &[0.5, 0.3, 0.2]),
            vec![1000, 600, 400]
        );
        assert_eq!(
            shifted_counts(&[100, 1000, 1000], &[0.5, 0.3, 0.2]),
            vec![100, 60, 40]
        );
        assert_eq!(shifted_counts(&[10, 10], &[1.0, 0.0]), vec![10, 0]);
        let items: Vec<(PathBuf, usize)> = (0..20)
            .map(|i| (PathBuf::from(format!("{i}")), i % 2))
            .collect();
        let a = subsample(items.clone(), &[3, 5], 7);
        assert_eq!(a.iter().filter(|i| i.1 == 0).count(), 3);
        assert_eq!(a.iter().filter(|i| i.1 == 1).count(), 5);
        assert_eq!(a, subsample(items, &[3, 5], 7), "deterministic for a seed");
    }
}
