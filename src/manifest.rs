//! `model.toml`: what the encoder expects and produces.
//!
//! The manifest is the one place that says how pixels become the encoder's input tensor
//! (size, resize policy, filter, channel order) and which ONNX outputs carry the unit
//! feature, the linear logits and the backbone embedding. The server and the `eval`
//! subcommand both read it, so they preprocess identically.
//!
//! It also lists the encoder's variants: `encoder` is the fp32 graph, and a
//! `[variants.int8]` table names a quantised graph of the same model, optionally with its own
//! temperatures (fitted on its features). [`ModelManifest::load_variant`] resolves the one
//! chosen by the `encoder_variant` setting.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::vmf::Rule;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    encoder: PathBuf,
    prototypes: PathBuf,
    input: InputSpec,
    outputs: OutputSpec,
    #[serde(default)]
    variants: BTreeMap<EncoderVariant, RawVariant>,
}

/// A `[variants.NAME]` table: another graph of the same encoder (same input and outputs).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    encoder: PathBuf,
    /// Temperatures fitted on this variant's features; they replace the prototypes file's
    /// (which were fitted on the fp32 features) while this variant is served.
    #[serde(default)]
    temperatures: Option<BTreeMap<String, f64>>,
}

/// Which graph of the encoder runs: the fp32 export (`encoder`) or the INT8 one
/// (`[variants.int8]`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum EncoderVariant {
    #[default]
    Fp32,
    Int8,
}

impl EncoderVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            EncoderVariant::Fp32 => "fp32",
            EncoderVariant::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for EncoderVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EncoderVariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown encoder variant {s:?}: expected fp32 or int8"))
    }
}

/// The encoder's input: float32 `[N, 3, height, width]`, RGB, pixels / 255.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub height: u32,
    pub width: u32,
    #[serde(default = "default_color_order")]
    pub color_order: String,
    #[serde(default = "default_resize")]
    pub resize: String,
    /// With `shorter_side_then_center_crop`: the shorter side is resized to this before the
    /// centre crop of `width` x `height` (torchvision's `Resize(256)` + `CenterCrop(224)`);
    /// default: the larger of `width` and `height`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<u32>,
    #[serde(default = "default_filter")]
    pub filter: String,
}

fn default_color_order() -> String {
    "rgb".into()
}
fn default_resize() -> String {
    "shorter_side_then_center_crop".into()
}
fn default_filter() -> String {
    "triangle".into()
}

/// Names of the ONNX outputs.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// `[N, p]` unit-norm contrastive feature z.
    pub feature: String,
    /// `[N, C]` linear head (logit-adjusted training, so balanced).
    pub logits: String,
    /// `[N, d]` backbone feature; optional. It documents the graph: the server never asks
    /// ONNX Runtime for it.
    #[serde(default)]
    pub embedding: Option<String>,
}

/// How an image is brought to the encoder's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizePolicy {
    /// Resize the shorter side to the target, keeping the aspect ratio, then centre-crop.
    ShorterSideThenCenterCrop,
    /// Resize both sides to the target, ignoring the aspect ratio.
    Stretch,
}

/// A parsed and checked `model.toml`, with paths made absolute against the model directory,
/// resolved for one encoder variant.
#[derive(Clone, Debug)]
pub struct ModelManifest {
    pub name: String,
    /// The variant resolved: `encoder_path` is its graph.
    pub variant: EncoderVariant,
    pub encoder_path: PathBuf,
    /// The variant's own temperatures, when the manifest gives them: they override the
    /// prototypes file's while this variant is served (every rule is present).
    pub temperatures: Option<HashMap<Rule, f64>>,
    /// The variants the manifest lists (fp32 always).
    pub variants: Vec<EncoderVariant>,
    pub prototypes_path: PathBuf,
    pub input: InputSpec,
    pub outputs: OutputSpec,
    pub resize: ResizePolicy,
    /// The shorter side before the centre crop (`ShorterSideThenCenterCrop`).
    pub resize_shorter: u32,
    pub filter: image::imageops::FilterType,
    /// The bilinear filter as PIL computes it (torchvision's Resize), not the image crate's.
    pub pil_bilinear: bool,
    /// true when the encoder wants BGR channel order.
    pub bgr: bool,
}

impl ModelManifest {
    /// Reads `<model_dir>/model.toml` for the fp32 encoder.
    pub fn load(model_dir: &Path) -> anyhow::Result<Self> {
        Self::load_variant(model_dir, EncoderVariant::Fp32)
    }

    /// Reads `<model_dir>/model.toml` for the given encoder variant.
    pub fn load_variant(model_dir: &Path, variant: EncoderVariant) -> anyhow::Result<Self> {
        let path = model_dir.join("model.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read model manifest {}", path.display()))?;
        Self::parse_variant(&text, model_dir, variant)
            .with_context(|| format!("invalid {}", path.display()))
    }

    /// Parses manifest text for the fp32 encoder; relative paths are resolved against `model_dir`.
    pub fn parse(text: &str, model_dir: &Path) -> anyhow::Result<Self> {
        Self::parse_variant(text, model_dir, EncoderVariant::Fp32)
    }

    /// Parses manifest text for one encoder variant.
    pub fn parse_variant(
        text: &str,
        model_dir: &Path,
        variant: EncoderVariant,
    ) -> anyhow::Result<Self> {
        let raw: RawManifest = toml::from_str(text)?;
        if raw.input.height == 0 || raw.input.width == 0 {
            bail!("input.height and input.width must be positive");
        }
        let resize = match raw.input.resize.as_str() {
            "shorter_side_then_center_crop" => ResizePolicy::ShorterSideThenCenterCrop,
            "stretch" => ResizePolicy::Stretch,
            other => bail!(
                "input.resize {other:?} is not supported (shorter_side_then_center_crop, stretch)"
            ),
        };
        let crop_side = raw.input.width.max(raw.input.height);
        let resize_shorter = raw.input.resize_shorter.unwrap_or(crop_side);
        if resize_shorter < crop_side {
            bail!("input.resize_shorter {resize_shorter} is smaller than the {crop_side} px crop");
        }
        use image::imageops::FilterType;
        let filter = match raw.input.filter.as_str() {
            "triangle" | "bilinear" | "image-triangle" => FilterType::Triangle,
            "nearest" => FilterType::Nearest,
            "catmullrom" | "bicubic" => FilterType::CatmullRom,
            "lanczos3" => FilterType::Lanczos3,
            "gaussian" => FilterType::Gaussian,
            other => bail!("input.filter {other:?} is not supported"),
        };
        // "image-triangle": the image crate's own triangle filter, which is not PIL's (kept to
        // measure what PIL's resampling changes; see scripts/preprocess_parity.py).
        let pil_bilinear = matches!(raw.input.filter.as_str(), "triangle" | "bilinear");
        let bgr = match raw.input.color_order.as_str() {
            "rgb" => false,
            "bgr" => true,
            other => bail!("input.color_order {other:?} is not supported (rgb, bgr)"),
        };
        if raw.variants.contains_key(&EncoderVariant::Fp32) {
            bail!("variants.fp32: the fp32 graph is `encoder`; list only other variants");
        }
        let mut variants = vec![EncoderVariant::Fp32];
        variants.extend(raw.variants.keys().copied());
        let (encoder, temperatures) = match variant {
            EncoderVariant::Fp32 => (raw.encoder.clone(), None),
            other => {
                let Some(v) = raw.variants.get(&other) else {
                    bail!("encoder_variant = \"{other}\" but the manifest has no [variants.{other}] (it lists: {})",
                        variants.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "));
                };
                let temperatures = v
                    .temperatures
                    .as_ref()
                    .map(|t| variant_temperatures(other, t))
                    .transpose()?;
                (v.encoder.clone(), temperatures)
            }
        };
        Ok(ModelManifest {
            name: raw.name,
            variant,
            encoder_path: model_dir.join(&encoder),
            temperatures,
            variants,
            prototypes_path: model_dir.join(&raw.prototypes),
            input: raw.input,
            outputs: raw.outputs,
            resize,
            resize_shorter,
            filter,
            pil_bilinear,
            bgr,
        })
    }
}

/// A variant's temperature table: every rule, each finite and positive, no unknown rule.
fn variant_temperatures(
    variant: EncoderVariant,
    table: &BTreeMap<String, f64>,
) -> anyhow::Result<HashMap<Rule, f64>> {
    if let Some(unknown) = table.keys().find(|k| k.parse::<Rule>().is_err()) {
        bail!("variants.{variant}.temperatures has unknown rule {unknown:?}");
    }
    Rule::ALL
        .iter()
        .map(|&rule| match table.get(rule.as_str()) {
            Some(&t) if t.is_finite() && t > 0.0 => Ok((rule, t)),
            Some(t) => {
                bail!("variants.{variant}.temperatures.{rule} is {t}; it must be finite and > 0")
            }
            None => bail!("variants.{variant}.temperatures has no {rule}: give every rule or none"),
        })
        .collect()
}

/// The bundled CIFAR-10-LT manifest, for tests across the crate.
#[cfg(test)]
pub(crate) const EXAMPLE: &str = r#"
name = "cifar10-lt-proco-resnet32"
encoder = "encoder.onnx"
prototypes = "prototypes.json"
[input]
name = "image"
height = 32
width = 32
color_order = "rgb"
resize = "shorter_side_then_center_crop"
filter = "triangle"
[outputs]
feature = "feature"
logits = "logits"
embedding = "embedding"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contract_example() {
        let m = ModelManifest::parse(EXAMPLE, Path::new("/m")).unwrap();
        assert_eq!(m.encoder_path, Path::new("/m/encoder.onnx"));
        assert_eq!(m.input.height, 32);
        assert_eq!(m.resize, ResizePolicy::ShorterSideThenCenterCrop);
        assert!(!m.bgr);
        assert_eq!(m.variant, EncoderVariant::Fp32);
        assert!(m.temperatures.is_none());
    }

    #[test]
    fn variants_resolve_their_graph_and_temperatures() {
        let text = format!(
            "{EXAMPLE}[variants.int8]\nencoder = \"encoder.int8.onnx\"\n\
             temperatures = {{ linear = 1.5, proco = 1.4, vmf = 50.0, ensemble = 2.9 }}\n"
        );
        let m = ModelManifest::parse_variant(&text, Path::new("/m"), EncoderVariant::Int8).unwrap();
        assert_eq!(m.encoder_path, Path::new("/m/encoder.int8.onnx"));
        assert_eq!(m.temperatures.as_ref().unwrap()[&Rule::Vmf], 50.0);
        assert_eq!(m.variants, vec![EncoderVariant::Fp32, EncoderVariant::Int8]);
        // The fp32 variant of the same manifest keeps the fp32 graph and no override.
        let f = ModelManifest::parse(&text, Path::new("/m")).unwrap();
        assert_eq!(f.encoder_path, Path::new("/m/encoder.onnx"));
        assert!(f.temperatures.is_none());
    }

    #[test]
    fn bad_variants_are_refused_with_the_reason() {
        let missing = ModelManifest::parse_variant(EXAMPLE, Path::new("/m"), EncoderVariant::Int8)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("[variants.int8]"), "{missing}");
        for (table, what) in [
            ("temperatures = { linear = 1.5 }", "has no proco"),
            ("temperatures = { linear = 1.5, proco = 1.4, vmf = 50.0, ensemble = 0.0 }", "ensemble is 0"),
            ("temperatures = { linear = 1.5, proco = 1.4, vmf = 5.0, ensemble = 2.0, soft = 1.0 }", "unknown rule \"soft\""),
        ] {
            let text = format!("{EXAMPLE}[variants.int8]\nencoder = \"e.onnx\"\n{table}\n");
            let err = format!(
                "{:#}",
                ModelManifest::parse_variant(&text, Path::new("/m"), EncoderVariant::Int8)
                    .unwrap_err()
            );
            assert!(err.contains(what), "{err}");
        }
        let fp32 = format!("{EXAMPLE}[variants.fp32]\nencoder = \"e.onnx\"\n");
        assert!(ModelManifest::parse(&fp32, Path::new("/m")).is_err());
    }
}
