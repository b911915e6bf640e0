//! The ONNX encoder: loading ONNX Runtime, choosing the execution provider, running batches.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`) from, in order:
//! `ORT_DYLIB_PATH`; `libonnxruntime.so.1.31.1` next to the executable (or one directory up,
//! for test executables in `target/<profile>/deps`); the copy `build.rs` provisioned. We call
//! `ort::init_from`, which returns an error for a bad path (`ort::init` would panic).
//!
//! Execution provider: ONNX Runtime silently falls back to CPU when CUDA cannot be used, so
//! we register CUDA with `error_on_failure()` and report the provider that actually got
//! registered, with the reason when it is not the one asked for.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context};
use ndarray::{Array2, ArrayView4, Ix2};
use ort::ep::{self, ExecutionProvider};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::TensorRef;

use crate::manifest::ModelManifest;

/// Where the encoder runs. `auto` tries CUDA and falls back to CPU (and says so);
/// `cuda` refuses to start without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    Auto,
    Cuda,
    Cpu,
}

impl std::fmt::Display for ProviderChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderChoice::Auto => "auto",
            ProviderChoice::Cuda => "cuda",
            ProviderChoice::Cpu => "cpu",
        })
    }
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown execution provider {s:?}: expected auto, cuda or cpu"))
    }
}

/// What the batcher needs of an encoder: run one batch `[N, 3, H, W]`. A trait so that the
/// batcher can be tested with a fake, without ONNX Runtime.
pub trait Encode: Send + 'static {
    fn run(&mut self, batch: ArrayView4<f32>) -> anyhow::Result<EncoderOutput>;
}

/// The ONNX Runtime version build.rs provisions.
pub const ORT_LIBRARY: &str = "libonnxruntime.so.1.31.1";

/// ONNX Runtime thread settings; 0 lets ONNX Runtime decide.
#[derive(Clone, Copy, Debug, Default)]
pub struct Threads {
    pub intra: usize,
    pub inter: usize,
    /// Let ONNX Runtime's idle threads spin waiting for work (lower latency between
    /// back-to-back runs) instead of sleeping (no CPU burnt while the server waits for requests).
    pub spin: bool,
}

/// One batch of encoder outputs, row i for input image i.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    /// `[N, p]` unit feature z.
    pub feature: Array2<f32>,
    /// `[N, C]` linear head.
    pub logits: Array2<f32>,
}

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// Candidate paths for the ONNX Runtime library, best first.
fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
        return out; // an explicit override is never second-guessed
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join(ORT_LIBRARY));
            if let Some(up) = dir.parent() {
                out.push(up.join(ORT_LIBRARY));
            }
        }
    }
    let built = env!("PROCO_ORT_DYLIB_BUILD");
    if !built.is_empty() {
        out.push(PathBuf::from(built));
    }
    out
}

/// Loads ONNX Runtime once per process; returns the library path in use.
pub fn init_runtime() -> anyhow::Result<PathBuf> {
    let result = ENVIRONMENT.get_or_init(|| {
        let candidates = library_candidates();
        let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
            return Err(format!(
                "ONNX Runtime library not found (looked for {}). Build with `cargo build` \
                 (build.rs downloads it with python3 -m pip) or set ORT_DYLIB_PATH to a {ORT_LIBRARY}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let builder = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let env = builder
            .with_name("proco-serve")
            // A server should not write ONNX Runtime's usage telemetry database to ~/.cache.
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
        Ok((env, path))
    });
    match result {
        Ok((_, path)) => Ok(path.clone()),
        Err(e) => Err(anyhow!("{e}")),
    }
}

fn environment() -> anyhow::Result<&'static ort::environment::Environment> {
    init_runtime()?;
    match ENVIRONMENT.get() {
        Some(Ok((env, _))) => Ok(env),
        _ => bail!("ONNX Runtime is not initialised"),
    }
}

/// The encoder session, owned by the batcher thread (`Session::run` takes `&mut self`).
pub struct Encoder {
    session: Session,
    /// Asks ONNX Runtime for the feature and logits outputs only: the backbone embedding is
    /// never read, so it is neither copied out nor kept.
    run_options: RunOptions<HasSelectedOutputs>,
    input_name: String,
    feature_name: String,
    logits_name: String,
    height: usize,
    width: usize,
    provider: String,
    fallback_reason: Option<String>,
    feature_dim: usize,
    num_classes: usize,
}

impl Encoder {
    /// Loads the manifest's encoder on the requested provider and runs one warm-up batch,
    /// which also tells us the output widths.
    pub fn load(
        manifest: &ModelManifest,
        provider: ProviderChoice,
        threads: Threads,
    ) -> anyhow::Result<Self> {
        let env = environment()?;
        let path = &manifest.encoder_path;
        if !path.is_file() {
            bail!("encoder {} does not exist", path.display());
        }
        let builder = |eps: Vec<ep::ExecutionProviderDispatch>| -> anyhow::Result<Session> {
            let mut b = Session::builder(env)
                .map_err(|e| anyhow!("{e}"))?
                .with_intra_op_spinning(threads.spin)
                .map_err(|e| anyhow!("{e}"))?
                .with_inter_op_spinning(threads.spin)
                .map_err(|e| anyhow!("{e}"))?;
            if threads.intra > 0 {
                b = b
                    .with_intra_threads(threads.intra)
                    .map_err(|e| anyhow!("{e}"))?;
            }
            if threads.inter > 0 {
                b = b
                    .with_inter_threads(threads.inter)
                    .map_err(|e| anyhow!("{e}"))?;
            }
            if !eps.is_empty() {
                b = b
                    .with_execution_providers(eps)
                    .map_err(|e| anyhow!("{e}"))?;
            }
            b.commit_from_file(path)
                .map_err(|e| anyhow!("cannot load {}: {e}", path.display()))
        };

        let (session, active, fallback_reason) = match provider {
            ProviderChoice::Cpu => (builder(vec![])?, "cpu", None),
            ProviderChoice::Cuda | ProviderChoice::Auto => {
                let cuda = try_cuda(&builder);
                match (cuda, provider) {
                    (Ok(s), _) => (s, "cuda", None),
                    (Err(reason), ProviderChoice::Cuda) => {
                        bail!("execution_provider = \"cuda\" but CUDA cannot be used: {reason}")
                    }
                    (Err(reason), _) => (builder(vec![])?, "cpu", Some(reason)),
                }
            }
        };

        let run_options = RunOptions::new().map_err(|e| anyhow!("{e}"))?.with_outputs(
            OutputSelector::no_default()
                .with(manifest.outputs.feature.as_str())
                .with(manifest.outputs.logits.as_str()),
        );
        let mut encoder = Encoder {
            session,
            run_options,
            input_name: manifest.input.name.clone(),
            feature_name: manifest.outputs.feature.clone(),
            logits_name: manifest.outputs.logits.clone(),
            height: manifest.input.height as usize,
            width: manifest.input.width as usize,
            provider: active.to_string(),
            fallback_reason,
            feature_dim: 0,
            num_classes: 0,
        };
        encoder.check_io()?;
        let warm = encoder
            .run(ndarray::Array4::<f32>::zeros((1, 3, encoder.height, encoder.width)).view())
            .context("warm-up inference failed")?;
        encoder.feature_dim = warm.feature.ncols();
        encoder.num_classes = warm.logits.ncols();
        Ok(encoder)
    }

    /// Checks that the graph has the input and outputs the manifest names.
    fn check_io(&self) -> anyhow::Result<()> {
        let inputs: Vec<String> = self
            .session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        if !inputs.iter().any(|n| n == &self.input_name) {
            bail!(
                "the encoder has no input {:?} (model.toml); it has {inputs:?}",
                self.input_name
            );
        }
        let outputs: Vec<String> = self
            .session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        for name in [&self.feature_name, &self.logits_name] {
            if !outputs.iter().any(|n| n == name) {
                bail!("the encoder has no output {name:?} (model.toml); it has {outputs:?}");
            }
        }
        Ok(())
    }

    /// Runs one batch `[N, 3, H, W]`; only the two outputs the rules read are fetched.
    pub fn run(&mut self, batch: ArrayView4<f32>) -> anyhow::Result<EncoderOutput> {
        let n = batch.shape()[0];
        let batch = batch.as_standard_layout();
        let tensor = TensorRef::from_array_view(batch.view()).map_err(|e| anyhow!("{e}"))?;
        let outputs = self
            .session
            .run_with_options(
                ort::inputs![self.input_name.as_str() => tensor],
                &self.run_options,
            )
            .map_err(|e| anyhow!("encoder run failed: {e}"))?;
        let take = |name: &str| -> anyhow::Result<Array2<f32>> {
            let value = outputs
                .get(name)
                .ok_or_else(|| anyhow!("the encoder produced no output {name:?}"))?;
            let view = value
                .try_extract_array::<f32>()
                .map_err(|e| anyhow!("output {name:?}: {e}"))?;
            let arr = view
                .into_dimensionality::<Ix2>()
                .map_err(|e| anyhow!("output {name:?} is not 2-D: {e}"))?
                .to_owned();
            if arr.nrows() != n {
                bail!("output {name:?} has {} rows for {n} images", arr.nrows());
            }
            Ok(arr)
        };
        let feature = take(&self.feature_name)?;
        let logits = take(&self.logits_name)?;
        Ok(EncoderOutput { feature, logits })
    }

    /// The provider actually in use: "cuda" or "cpu".
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Why `auto` ended up on CPU, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Width p of the feature output.
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// Width C of the linear head.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Input size (height, width).
    pub fn input_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }
}

impl Encode for Encoder {
    fn run(&mut self, batch: ArrayView4<f32>) -> anyhow::Result<EncoderOutput> {
        Encoder::run(self, batch)
    }
}

/// Builds a session with CUDA registered strictly; the error says why CUDA is unusable.
fn try_cuda(
    builder: &dyn Fn(Vec<ep::ExecutionProviderDispatch>) -> anyhow::Result<Session>,
) -> Result<Session, String> {
    match ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            return Err("this ONNX Runtime library was built without CUDA (build with PROCO_ORT_WHEEL=onnxruntime-gpu)".into())
        }
        Err(e) => return Err(format!("cannot query ONNX Runtime's providers: {e}")),
    }
    builder(vec![ep::CUDA::default().build().error_on_failure()]).map_err(|e| format!("{e:#}"))
}
