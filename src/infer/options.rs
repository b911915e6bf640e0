//! Request options, from the values a protocol received to the engine's [`RequestOptions`].
//!
//! Every adapter (`/v1` query, OIP v2 parameters over REST and gRPC) fills a [`RawOptions`] with
//! the text it was given and nothing else; [`resolve`] applies the server's defaults and checks
//! every value against the prototypes served now ([`Served`]). Pure, so the fuzz targets run it.

use crate::engine::{abstain_threshold, Prior, PriorName, RequestOptions, SetError, SetRequest};
use crate::vmf::Rule;

use super::InferError;

/// Classes in an answer's top list when the request does not say.
pub const DEFAULT_TOP_K: usize = 5;

/// A request's options as received, unparsed. `None` means "not given": the server's default.
#[derive(Clone, Debug, Default)]
pub struct RawOptions {
    /// linear | proco | vmf | ensemble.
    pub rule: Option<String>,
    /// uniform | train | adaptive | C comma-separated positive weights.
    pub prior: Option<String>,
    /// A positive integer, clamped to the class count.
    pub top_k: Option<String>,
    /// A coverage level in (0, 1): add a conformal prediction set.
    pub coverage: Option<String>,
    /// class | marginal (needs `coverage`).
    pub set: Option<String>,
    /// A probability in [0, 1]: mark answers whose top probability is below it.
    pub abstain_below: Option<String>,
    /// Milliseconds the request may take, decoding and queueing included (a positive number);
    /// past it the request is answered "deadline exceeded" and its images are not encoded.
    pub timeout_ms: Option<String>,
    /// Return the full posterior vector, the rule's logits, the unit feature.
    pub posterior: bool,
    pub logits: bool,
    pub features: bool,
}

/// What a request's options are resolved against: the server's defaults and the prototypes
/// served now (learning may have added or removed classes since start-up).
#[derive(Clone, Debug)]
pub struct Served {
    pub default_rule: Rule,
    pub default_prior: PriorName,
    /// Classes of the prototypes served.
    pub classes: usize,
    /// The rules those prototypes can answer with.
    pub available_rules: Vec<Rule>,
    /// Named in the error when a rule cannot answer.
    pub prototypes_version: String,
}

/// The engine options for `raw` under `served`. Whether the prototypes hold the conformal scores
/// a set needs is checked afterwards, against the snapshot ([`super::Infer::resolve`]).
pub fn resolve(raw: &RawOptions, served: &Served) -> Result<RequestOptions, InferError> {
    let c = served.classes;
    let available = &served.available_rules;
    let rule = match &raw.rule {
        Some(text) => {
            let rule = text
                .parse::<Rule>()
                .map_err(|e| InferError::InvalidRule(e.to_string()))?;
            if !available.contains(&rule) {
                let names: Vec<&str> = available.iter().map(|r| r.as_str()).collect();
                return Err(InferError::RuleUnavailable(format!(
                    "rule {rule} needs the encoder's linear head, which does not know every class of prototypes version {}; use one of: {}",
                    served.prototypes_version,
                    names.join(", ")
                )));
            }
            rule
        }
        None if available.contains(&served.default_rule) => served.default_rule,
        // The server's default rule reads the linear head, which does not know every class (a
        // class was learned from examples): the proco rule answers instead, and says so.
        None => Rule::Proco,
    };
    let prior = match &raw.prior {
        Some(text) => Prior::parse(text, c).map_err(InferError::InvalidPrior)?,
        None => Prior::Named(served.default_prior),
    };
    let top_k = match &raw.top_k {
        Some(text) => parse_top_k(text)?.min(c),
        None => DEFAULT_TOP_K.min(c),
    };
    let set = SetRequest::from_parameters(raw.coverage.as_deref(), raw.set.as_deref())
        .map_err(InferError::from)?;
    let abstain_below = raw
        .abstain_below
        .as_deref()
        .map(parse_threshold)
        .transpose()?;
    Ok(RequestOptions {
        rule,
        rule_fallback: raw.rule.is_none().then_some(Rule::Proco),
        prior,
        top_k,
        posterior: raw.posterior,
        logits: raw.logits,
        features: raw.features,
        set,
        abstain_below,
    })
}

fn parse_top_k(text: &str) -> Result<usize, InferError> {
    let k: usize = text.trim().parse().map_err(|_| {
        InferError::InvalidTopK(format!("top_k {text:?} is not a positive integer"))
    })?;
    if k == 0 {
        return Err(InferError::InvalidTopK("top_k must be at least 1".into()));
    }
    Ok(k)
}

/// `timeout_ms`: a positive, finite number of milliseconds.
pub fn parse_timeout(text: &str) -> Result<std::time::Duration, InferError> {
    let ms: f64 = text.trim().parse().map_err(|_| {
        InferError::InvalidParameter(format!(
            "timeout_ms {text:?} is not a number of milliseconds"
        ))
    })?;
    if !(ms > 0.0 && ms.is_finite() && ms <= 86_400_000.0) {
        return Err(InferError::InvalidParameter(format!(
            "timeout_ms {text:?} must be more than 0 and at most a day"
        )));
    }
    Ok(std::time::Duration::from_secs_f64(ms / 1e3))
}

/// `abstain_below`: a number, then a probability in [0, 1].
fn parse_threshold(text: &str) -> Result<f64, InferError> {
    let t = text.trim().parse::<f64>().map_err(|_| {
        InferError::InvalidParameter(format!(
            "abstain_below {text:?} is not a probability between 0 and 1"
        ))
    })?;
    abstain_threshold(t).map_err(InferError::InvalidParameter)
}

impl From<SetError> for InferError {
    fn from(e: SetError) -> Self {
        match e {
            SetError::Invalid(m) => InferError::InvalidCoverage(m),
            SetError::Unavailable(m) => InferError::ConformalUnavailable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(available: Vec<Rule>) -> Served {
        Served {
            default_rule: Rule::Ensemble,
            default_prior: PriorName::Uniform,
            classes: 10,
            available_rules: available,
            prototypes_version: "v1".into(),
        }
    }

    fn raw(f: impl FnOnce(&mut RawOptions)) -> RawOptions {
        let mut raw = RawOptions::default();
        f(&mut raw);
        raw
    }

    #[test]
    fn defaults_apply_and_values_are_checked() {
        let all = served(Rule::ALL.to_vec());
        let options = resolve(&RawOptions::default(), &all).unwrap();
        assert_eq!(options.rule, Rule::Ensemble);
        assert_eq!(options.prior.name(), "uniform");
        assert_eq!(options.top_k, DEFAULT_TOP_K);
        assert!(options.set.is_none() && options.abstain_below.is_none());
        let options = resolve(&raw(|r| r.top_k = Some("50".into())), &all).unwrap();
        assert_eq!(options.top_k, 10, "clamped to the class count");
        for (bad, want) in [
            (raw(|r| r.top_k = Some("0".into())), "InvalidTopK"),
            (raw(|r| r.rule = Some("softmax".into())), "InvalidRule"),
            (raw(|r| r.prior = Some("1,2".into())), "InvalidPrior"),
            (raw(|r| r.set = Some("class".into())), "InvalidCoverage"),
            (
                raw(|r| r.coverage = Some("ninety".into())),
                "InvalidCoverage",
            ),
            (
                raw(|r| r.abstain_below = Some("2".into())),
                "InvalidParameter",
            ),
        ] {
            let e = resolve(&bad, &all).unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{e:?}");
            assert!(e.is_client_error());
        }
    }

    /// A learned class leaves the linear head behind: the default rule falls back to proco,
    /// a rule asked for by name is refused, naming the version and the rules that can answer.
    #[test]
    fn rules_the_prototypes_cannot_serve() {
        let head_free = served(vec![Rule::Proco, Rule::Vmf]);
        let options = resolve(&RawOptions::default(), &head_free).unwrap();
        assert_eq!(options.rule, Rule::Proco);
        let e = resolve(&raw(|r| r.rule = Some("linear".into())), &head_free).unwrap_err();
        let InferError::RuleUnavailable(message) = e else {
            panic!("{e:?}");
        };
        assert!(
            message.contains("v1") && message.contains("proco, vmf"),
            "{message}"
        );
    }
}
