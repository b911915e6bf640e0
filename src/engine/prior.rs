//! The class prior q a posterior is computed under.
//!
//! [`PriorName`] is the one list of named priors, shared by the configuration (the server's
//! default), the request parser and `eval`; [`Prior`] adds the explicit weights a single request
//! may give.

use std::fmt;
use std::str::FromStr;

/// A prior that has a name: one the server can use as its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorName {
    /// Balanced: every class equally likely.
    Uniform,
    /// The training distribution (counts / total).
    Train,
    /// The current EM estimate of the deployment distribution.
    Adaptive,
}

impl PriorName {
    pub const ALL: [PriorName; 3] = [PriorName::Uniform, PriorName::Train, PriorName::Adaptive];

    pub fn as_str(self) -> &'static str {
        match self {
            PriorName::Uniform => "uniform",
            PriorName::Train => "train",
            PriorName::Adaptive => "adaptive",
        }
    }
}

impl fmt::Display for PriorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for PriorName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PriorName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown prior {s:?}: expected uniform, train or adaptive"))
    }
}

/// The prior one request is scored under.
#[derive(Clone, Debug, PartialEq)]
pub enum Prior {
    Named(PriorName),
    /// Explicit weights, already checked (C positive numbers) and normalised.
    Explicit(Vec<f64>),
}

impl Prior {
    pub fn name(&self) -> &'static str {
        match self {
            Prior::Named(name) => name.as_str(),
            Prior::Explicit(_) => "explicit",
        }
    }

    /// Parses `uniform`, `train`, `adaptive`, or `C` comma-separated positive weights
    /// (normalised here).
    pub fn parse(s: &str, num_classes: usize) -> Result<Prior, String> {
        if let Ok(name) = s.parse::<PriorName>() {
            return Ok(Prior::Named(name));
        }
        if !s.contains(',') && s.parse::<f64>().is_err() {
            return Err(format!(
                "unknown prior {s:?}: expected uniform, train, adaptive, or {num_classes} comma-separated positive weights"
            ));
        }
        let weights: Vec<f64> = s
            .split(',')
            .map(|w| w.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("prior weights {s:?} are not all numbers"))?;
        if weights.len() != num_classes {
            return Err(format!(
                "prior has {} weights, the model has {num_classes} classes",
                weights.len()
            ));
        }
        if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return Err(format!("prior weight {w} is not a finite positive number"));
        }
        // Scale by the largest first: the plain sum of weights near f64::MAX overflows.
        let largest = weights.iter().copied().fold(0.0, f64::max);
        let total: f64 = weights.iter().map(|w| w / largest).sum();
        Ok(Prior::Explicit(
            weights.iter().map(|w| w / largest / total).collect(),
        ))
    }
}

impl From<PriorName> for Prior {
    fn from(name: PriorName) -> Self {
        Prior::Named(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_parsing() {
        assert_eq!(Prior::parse("train", 3), Ok(Prior::Named(PriorName::Train)));
        assert_eq!(
            Prior::parse("1,1,2", 3),
            Ok(Prior::Explicit(vec![0.25, 0.25, 0.5]))
        );
        assert!(Prior::parse("1,2", 3).is_err());
        assert!(Prior::parse("1,0,2", 3).is_err());
        assert!(Prior::parse("1,x,2", 3).is_err());
        // Huge but finite weights normalise instead of overflowing to NaN.
        let Prior::Explicit(q) = Prior::parse("1e308,1e308,1e308", 3).unwrap() else {
            panic!("explicit")
        };
        assert!(q.iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-15), "{q:?}");
        assert!(Prior::parse("bogus", 3)
            .unwrap_err()
            .contains("unknown prior"));
    }
}
