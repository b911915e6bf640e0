//! `proco-serve preprocess`: the pixels the encoder is given, written out, so that a model's
//! preprocessing can be checked against the one it was trained and evaluated with (for example
//! torchvision's `Resize` + `CenterCrop`; `scripts/preprocess_parity.py` does that).

use std::path::PathBuf;

use anyhow::Context;

use crate::manifest::ModelManifest;
use crate::preprocess::{decode, resize_for, DecodeLimits};

/// Options of `proco-serve preprocess`.
#[derive(Clone, Debug, clap::Args)]
pub struct PreprocessArgs {
    /// Model directory whose model.toml says how images are resized
    #[arg(long, default_value = "models/cifar10-lt")]
    pub model_dir: PathBuf,
    /// Folder to write `<image file name>.rgb` into: height x width x 3 bytes, RGB, row by row
    #[arg(long)]
    pub out: PathBuf,
    /// Images to prepare
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Decodes, orients and resizes each image exactly as the server does, and writes its pixels.
pub fn run(args: PreprocessArgs) -> anyhow::Result<()> {
    let manifest = ModelManifest::load(&args.model_dir)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let limits = DecodeLimits::default();
    for path in &args.images {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let img = decode(&bytes, &limits).with_context(|| format!("{}", path.display()))?;
        let resized = resize_for(&img, &manifest);
        let name = path
            .file_name()
            .context("an image path without a file name")?;
        let mut out = args.out.join(name);
        out.as_mut_os_string().push(".rgb");
        std::fs::write(&out, resized.as_raw())
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!(
            "{}: {}x{} -> {}x{}",
            path.display(),
            img.width(),
            img.height(),
            resized.width(),
            resized.height()
        );
    }
    Ok(())
}
