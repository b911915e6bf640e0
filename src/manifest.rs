//! `model.toml`: what the encoder expects and produces.
//!
//! The manifest is the one place that says how pixels become the encoder's input tensor
//! (size, resize policy, filter, channel order) and which ONNX outputs carry the unit
//! feature, the linear logits and the backbone embedding. The server and the `eval`
//! subcommand both read it, so they preprocess identically.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    encoder: PathBuf,
    prototypes: PathBuf,
    input: InputSpec,
    outputs: OutputSpec,
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

/// A parsed and checked `model.toml`, with paths made absolute against the model directory.
#[derive(Clone, Debug)]
pub struct ModelManifest {
    pub name: String,
    pub encoder_path: PathBuf,
    pub prototypes_path: PathBuf,
    pub input: InputSpec,
    pub outputs: OutputSpec,
    pub resize: ResizePolicy,
    pub filter: image::imageops::FilterType,
    /// true when the encoder wants BGR channel order.
    pub bgr: bool,
}

impl ModelManifest {
    /// Reads `<model_dir>/model.toml`.
    pub fn load(model_dir: &Path) -> anyhow::Result<Self> {
        let path = model_dir.join("model.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read model manifest {}", path.display()))?;
        Self::parse(&text, model_dir).with_context(|| format!("invalid {}", path.display()))
    }

    /// Parses manifest text; relative paths are resolved against `model_dir`.
    pub fn parse(text: &str, model_dir: &Path) -> anyhow::Result<Self> {
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
        use image::imageops::FilterType;
        let filter = match raw.input.filter.as_str() {
            "triangle" | "bilinear" => FilterType::Triangle,
            "nearest" => FilterType::Nearest,
            "catmullrom" | "bicubic" => FilterType::CatmullRom,
            "lanczos3" => FilterType::Lanczos3,
            "gaussian" => FilterType::Gaussian,
            other => bail!("input.filter {other:?} is not supported"),
        };
        let bgr = match raw.input.color_order.as_str() {
            "rgb" => false,
            "bgr" => true,
            other => bail!("input.color_order {other:?} is not supported (rgb, bgr)"),
        };
        Ok(ModelManifest {
            name: raw.name,
            encoder_path: model_dir.join(&raw.encoder),
            prototypes_path: model_dir.join(&raw.prototypes),
            input: raw.input,
            outputs: raw.outputs,
            resize,
            filter,
            bgr,
        })
    }
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
    }
}
