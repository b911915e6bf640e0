//! Server configuration, layered: built-in defaults < `config/default.toml` (or `--config`)
//! < environment variables (`PROCO_*`) < command-line flags.
//!
//! Each setting has exactly one name, spelled the same way everywhere: the TOML key
//! `max_batch_size` is the flag `--max-batch-size` and the variable `PROCO_MAX_BATCH_SIZE`.
//! clap merges flags and environment (flag wins); the TOML file fills what neither gave.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::vmf::Rule;

/// Where the encoder runs. `auto` tries CUDA and falls back to CPU (and says so);
/// `cuda` refuses to start without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
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

/// Command-line flags of the `serve` command (the default command). Every field is optional
/// so that "not given" falls through to the TOML file and then to the built-in default.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file [default: config/default.toml, skipped if absent]
    #[arg(long, env = "PROCO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port)
    #[arg(long, env = "PROCO_LISTEN")]
    pub listen: Option<String>,
    /// Directory with model.toml, the ONNX encoder and prototypes.json
    #[arg(long, env = "PROCO_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Rule used when a request gives none: linear | proco | vmf | ensemble
    #[arg(long, env = "PROCO_DEFAULT_RULE")]
    pub default_rule: Option<String>,
    /// Prior used when a request gives none: uniform | train | adaptive
    #[arg(long, env = "PROCO_DEFAULT_PRIOR")]
    pub default_prior: Option<String>,
    /// Most images the encoder runs in one batch
    #[arg(long, env = "PROCO_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Longest a queued image waits for others to join its batch, in ms (0: never wait)
    #[arg(long, env = "PROCO_MAX_QUEUE_DELAY_MS")]
    pub max_queue_delay_ms: Option<u64>,
    /// Images admitted and not yet answered (decoding, queued or in the encoder); beyond this, requests get 503 + Retry-After
    #[arg(long, env = "PROCO_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Largest accepted request body, in bytes
    #[arg(long, env = "PROCO_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest accepted image, in pixels (width x height), checked before decoding
    #[arg(long, env = "PROCO_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// Most images in one multipart request
    #[arg(long, env = "PROCO_MAX_IMAGES_PER_REQUEST")]
    pub max_images_per_request: Option<usize>,
    /// Images the adaptive prior remembers (sliding window)
    #[arg(long, env = "PROCO_ADAPTIVE_WINDOW")]
    pub adaptive_window: Option<usize>,
    /// Images seen before the adaptive prior departs from the training prior
    #[arg(long, env = "PROCO_ADAPTIVE_MIN_SAMPLES")]
    pub adaptive_min_samples: Option<usize>,
    /// Smallest probability the adaptive prior gives any class
    #[arg(long, env = "PROCO_ADAPTIVE_FLOOR")]
    pub adaptive_floor: Option<f64>,
    /// Re-estimate the adaptive prior every this many images
    #[arg(long, env = "PROCO_ADAPTIVE_REFRESH_EVERY")]
    pub adaptive_refresh_every: Option<usize>,
    /// Bearer token for POST /admin/reload (unset: the endpoint answers 403)
    #[arg(long, env = "PROCO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// auto | cuda | cpu
    #[arg(long, env = "PROCO_EXECUTION_PROVIDER")]
    pub execution_provider: Option<ProviderChoice>,
    /// ONNX Runtime threads inside one operator (0: ONNX Runtime decides)
    #[arg(long, env = "PROCO_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// ONNX Runtime threads across operators (0: ONNX Runtime decides)
    #[arg(long, env = "PROCO_INTER_THREADS")]
    pub inter_threads: Option<usize>,
    /// How often the prototypes file is checked for changes, in ms (0: never)
    #[arg(long, env = "PROCO_RELOAD_POLL_MS")]
    pub reload_poll_ms: Option<u64>,
    /// Log filter: error | warn | info | debug | trace, or a tracing directive
    #[arg(long, env = "PROCO_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// The TOML file: the same names, all optional. Unknown keys are an error, so a typo
/// does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    model_dir: Option<PathBuf>,
    default_rule: Option<String>,
    default_prior: Option<String>,
    max_batch_size: Option<usize>,
    max_queue_delay_ms: Option<u64>,
    queue_capacity: Option<usize>,
    max_body_bytes: Option<usize>,
    max_pixels: Option<u64>,
    max_images_per_request: Option<usize>,
    adaptive_window: Option<usize>,
    adaptive_min_samples: Option<usize>,
    adaptive_floor: Option<f64>,
    adaptive_refresh_every: Option<usize>,
    admin_token: Option<String>,
    execution_provider: Option<ProviderChoice>,
    intra_threads: Option<usize>,
    inter_threads: Option<usize>,
    reload_poll_ms: Option<u64>,
    log_level: Option<String>,
}

/// A prior that can be a server default (explicit weights are per request only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPrior {
    Uniform,
    Train,
    Adaptive,
}

impl std::str::FromStr for DefaultPrior {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Self::Uniform),
            "train" => Ok(Self::Train),
            "adaptive" => Ok(Self::Adaptive),
            other => Err(format!(
                "unknown prior {other:?}: expected uniform, train or adaptive"
            )),
        }
    }
}

/// The resolved configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub model_dir: PathBuf,
    pub default_rule: Rule,
    pub default_prior: DefaultPrior,
    pub max_batch_size: usize,
    pub max_queue_delay_ms: u64,
    pub queue_capacity: usize,
    pub max_body_bytes: usize,
    pub max_pixels: u64,
    pub max_images_per_request: usize,
    pub adaptive_window: usize,
    pub adaptive_min_samples: usize,
    pub adaptive_floor: f64,
    pub adaptive_refresh_every: usize,
    pub admin_token: Option<String>,
    pub execution_provider: ProviderChoice,
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub reload_poll_ms: u64,
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().unwrap(),
            model_dir: PathBuf::from("models/cifar10-lt"),
            default_rule: Rule::Proco,
            default_prior: DefaultPrior::Uniform,
            max_batch_size: 64,
            max_queue_delay_ms: 0,
            queue_capacity: 256,
            max_body_bytes: 8 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_images_per_request: 64,
            adaptive_window: 2048,
            adaptive_min_samples: 256,
            adaptive_floor: 1e-4,
            adaptive_refresh_every: 64,
            admin_token: None,
            execution_provider: ProviderChoice::Auto,
            intra_threads: 0,
            inter_threads: 0,
            reload_poll_ms: 500,
            log_level: "info".to_string(),
        }
    }
}

const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

impl Config {
    /// Resolves flags/env (already merged by clap) over the TOML file over the defaults.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                read_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        macro_rules! pick {
            ($name:ident) => {
                args.$name.clone().or(file.$name.clone())
            };
        }
        let listen = pick!(listen).unwrap_or_else(|| d.listen.to_string());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("listen: {listen:?} is not an address like 127.0.0.1:8080"))?;
        let default_rule = match pick!(default_rule) {
            Some(s) => s
                .parse::<Rule>()
                .map_err(|e| anyhow::anyhow!("default_rule: {e}"))?,
            None => d.default_rule,
        };
        let default_prior = match pick!(default_prior) {
            Some(s) => s
                .parse::<DefaultPrior>()
                .map_err(|e| anyhow::anyhow!("default_prior: {e}"))?,
            None => d.default_prior,
        };
        let cfg = Config {
            listen,
            model_dir: pick!(model_dir).unwrap_or(d.model_dir),
            default_rule,
            default_prior,
            max_batch_size: pick!(max_batch_size).unwrap_or(d.max_batch_size),
            max_queue_delay_ms: pick!(max_queue_delay_ms).unwrap_or(d.max_queue_delay_ms),
            queue_capacity: pick!(queue_capacity).unwrap_or(d.queue_capacity),
            max_body_bytes: pick!(max_body_bytes).unwrap_or(d.max_body_bytes),
            max_pixels: pick!(max_pixels).unwrap_or(d.max_pixels),
            max_images_per_request: pick!(max_images_per_request)
                .unwrap_or(d.max_images_per_request),
            adaptive_window: pick!(adaptive_window).unwrap_or(d.adaptive_window),
            adaptive_min_samples: pick!(adaptive_min_samples).unwrap_or(d.adaptive_min_samples),
            adaptive_floor: pick!(adaptive_floor).unwrap_or(d.adaptive_floor),
            adaptive_refresh_every: pick!(adaptive_refresh_every)
                .unwrap_or(d.adaptive_refresh_every),
            admin_token: pick!(admin_token).filter(|t| !t.is_empty()),
            execution_provider: pick!(execution_provider).unwrap_or(d.execution_provider),
            intra_threads: pick!(intra_threads).unwrap_or(d.intra_threads),
            inter_threads: pick!(inter_threads).unwrap_or(d.inter_threads),
            reload_poll_ms: pick!(reload_poll_ms).unwrap_or(d.reload_poll_ms),
            log_level: pick!(log_level).unwrap_or(d.log_level),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_batch_size == 0 {
            bail!("max_batch_size must be at least 1");
        }
        if self.queue_capacity == 0 {
            bail!("queue_capacity must be at least 1");
        }
        if self.max_images_per_request == 0 {
            bail!("max_images_per_request must be at least 1");
        }
        if self.max_images_per_request > self.queue_capacity {
            bail!(
                "max_images_per_request ({}) cannot exceed queue_capacity ({}): such a request could never be admitted",
                self.max_images_per_request,
                self.queue_capacity
            );
        }
        if self.max_body_bytes == 0 || self.max_pixels == 0 {
            bail!("max_body_bytes and max_pixels must be positive");
        }
        // Zero would let EM drive a class to exactly 0 and then to 0/0 = NaN.
        if !(self.adaptive_floor > 0.0 && self.adaptive_floor < 1.0) {
            bail!("adaptive_floor must be in (0, 1)");
        }
        if self.max_queue_delay_ms > 60_000 {
            bail!("max_queue_delay_ms must be at most 60000 (one minute)");
        }
        if self.adaptive_window == 0 || self.adaptive_refresh_every == 0 {
            bail!("adaptive_window and adaptive_refresh_every must be at least 1");
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_batch_size = 8\nqueue_capacity = 100\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            queue_capacity: Some(99),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.queue_capacity, 99);
        assert_eq!(c.max_pixels, 40_000_000);
    }

    #[test]
    fn settings_that_would_break_serving_are_refused() {
        for (args, what) in [
            (
                ServeArgs {
                    adaptive_floor: Some(0.0),
                    ..Default::default()
                },
                "adaptive_floor",
            ),
            (
                ServeArgs {
                    max_queue_delay_ms: Some(u64::MAX),
                    ..Default::default()
                },
                "max_queue_delay_ms",
            ),
        ] {
            let err = format!("{:#}", Config::resolve(&args).unwrap_err());
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn unknown_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_bach_size = 8\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = format!("{:#}", Config::resolve(&args).unwrap_err());
        assert!(err.contains("max_bach_size"), "{err}");
    }
}
