//! Server configuration, layered: built-in defaults < `config/default.toml` (or `--config`)
//! < environment variables (`PROCO_*`) < command-line flags.
//!
//! Each setting has exactly one name, spelled the same way everywhere: the TOML key
//! `max_batch_size` is the flag `--max-batch-size` and the variable `PROCO_MAX_BATCH_SIZE`.
//! The settings are listed once, in the [`settings!`] table below: it makes the flags
//! (clap merges flags and environment, flag wins), the TOML reader (the same struct, unknown
//! keys refused) and the resolved [`Config`] with its defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::encoder::ProviderChoice;
use crate::engine::PriorName;
use crate::manifest::EncoderVariant;
use crate::telemetry::AccessLogFormat;
use crate::vmf::Rule;

/// A clap value parser whose error names the setting by its key (`default_rule: unknown
/// rule "softmax" ...`), the way the TOML reader and the validation do.
fn parse_as<T>(key: &'static str) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    move |s: &str| s.parse::<T>().map_err(|e| format!("{key}: {e}"))
}

/// One row per setting: doc (the `--help` text), optional extra clap attributes in brackets,
/// `name: type = default, env "PROCO_NAME"`.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $([$($arg:tt)*])?
        $name:ident : $ty:ty = $default:expr, env $env:literal;
    )*) => {
        /// Flags of the `serve` command, and the keys of its TOML file. Every field is optional,
        /// so that "not given" falls through to the file and then to the built-in default.
        #[derive(Clone, Debug, Default, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ServeArgs {
            /// TOML configuration file [default: config/default.toml, skipped if absent]
            #[arg(long, env = "PROCO_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, value_parser = parse_as::<$ty>(stringify!($name)) $(, $($arg)*)?)]
                pub $name: Option<$ty>,
            )*
        }

        /// The resolved configuration the server runs with.
        #[derive(Clone, Debug)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }

        impl Config {
            /// Flags and environment (merged by clap) over `file` over the defaults.
            fn layer(args: &ServeArgs, file: ServeArgs) -> Config {
                let d = Config::default();
                Config { $( $name: args.$name.clone().or(file.$name).unwrap_or(d.$name), )* }
            }
        }
    };
}

settings! {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port)
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)), env "PROCO_LISTEN";
    /// Address of the gRPC listener (the Open Inference Protocol's GRPCInferenceService); "off" for none
    grpc_listen: String = "127.0.0.1:8001".to_string(), env "PROCO_GRPC_LISTEN";
    /// Directory with model.toml, the ONNX encoder and prototypes.json: the default model, which serves the routes that name no model
    model_dir: PathBuf = PathBuf::from("models/cifar10-lt"), env "PROCO_MODEL_DIR";
    /// Folder of model folders (each with its model.toml) that can be loaded and unloaded at run time
    model_repository: PathBuf = PathBuf::from("models"), env "PROCO_MODEL_REPOSITORY";
    /// Repository models loaded at start besides the default: none | all | comma-separated model names
    load_models: String = "none".to_string(), env "PROCO_LOAD_MODELS";
    /// How often the repository is looked at, in ms, to load added model folders, reload changed ones and unload removed ones (0: never; loads and unloads come from the API)
    repository_poll_ms: u64 = 0, env "PROCO_REPOSITORY_POLL_MS";
    /// Rule used when a request gives none: linear | proco | vmf | ensemble
    default_rule: Rule = Rule::Proco, env "PROCO_DEFAULT_RULE";
    /// Prior used when a request gives none: uniform | train | adaptive
    default_prior: PriorName = PriorName::Uniform, env "PROCO_DEFAULT_PRIOR";
    /// Most images the encoder runs in one batch
    max_batch_size: usize = 64, env "PROCO_MAX_BATCH_SIZE";
    /// Longest a queued image waits for others to join its batch, in ms (0: never wait)
    max_queue_delay_ms: u64 = 0, env "PROCO_MAX_QUEUE_DELAY_MS";
    /// Images admitted and not yet answered (decoding, queued or in the encoder), all models together; beyond this, requests get 503 + Retry-After
    queue_capacity: usize = 256, env "PROCO_QUEUE_CAPACITY";
    /// Largest accepted request body, in bytes
    max_body_bytes: usize = 8 * 1024 * 1024, env "PROCO_MAX_BODY_BYTES";
    /// Largest accepted image, in pixels (width x height), checked before decoding
    max_pixels: u64 = 40_000_000, env "PROCO_MAX_PIXELS";
    /// Most HTTP connections open at once; more are closed as they arrive
    max_connections: usize = 1024, env "PROCO_MAX_CONNECTIONS";
    /// Time a client has to send a request's headers (also the idle limit between requests on a kept-alive connection), in ms
    header_read_timeout_ms: u64 = 10_000, env "PROCO_HEADER_READ_TIMEOUT_MS";
    /// Time a client has to send a request's whole body, in ms (then 408)
    body_read_timeout_ms: u64 = 30_000, env "PROCO_BODY_READ_TIMEOUT_MS";
    /// Longest a request may take, decoding and queueing included, when it does not say (timeout_ms, the OIP timeout parameter, grpc-timeout); then 504 / DEADLINE_EXCEEDED, and its queued images are not encoded (0: no limit)
    request_timeout_ms: u64 = 0, env "PROCO_REQUEST_TIMEOUT_MS";
    /// Most images in one multipart request
    max_images_per_request: usize = 64, env "PROCO_MAX_IMAGES_PER_REQUEST";
    /// Images the adaptive prior remembers (sliding window)
    adaptive_window: usize = 2048, env "PROCO_ADAPTIVE_WINDOW";
    /// Images seen before the adaptive prior departs from the training prior
    adaptive_min_samples: usize = 256, env "PROCO_ADAPTIVE_MIN_SAMPLES";
    /// Smallest probability the adaptive prior gives any class
    adaptive_floor: f64 = 1e-4, env "PROCO_ADAPTIVE_FLOOR";
    /// Re-estimate the adaptive prior every this many images
    adaptive_refresh_every: usize = 64, env "PROCO_ADAPTIVE_REFRESH_EVERY";
    /// Total-variation distance between the adaptive and the training prior above which the log warns of drift
    drift_warn: f64 = 0.25, env "PROCO_DRIFT_WARN";
    /// Answers kept waiting for feedback (POST /v1/feedback); the oldest are forgotten first (0: none)
    feedback_capacity: usize = 10_000, env "PROCO_FEEDBACK_CAPACITY";
    /// Labelled answers the feedback metrics are computed over (sliding window)
    feedback_window: usize = 1000, env "PROCO_FEEDBACK_WINDOW";
    /// Origins a browser may call the API from (CORS): empty for none, * for any, or comma-separated origins such as https://app.example.com
    cors_allow_origin: String = String::new(), env "PROCO_CORS_ALLOW_ORIGIN";
    /// File of API keys (one NAME KEY a line) that inference and feedback require, over HTTP and gRPC (unset: no keys needed); read again when it changes
    api_keys_file: String = String::new(), env "PROCO_API_KEYS_FILE";
    /// Bearer token for the /admin endpoints (unset or empty: they answer 403)
    [hide_env_values = true]
    admin_token: String = String::new(), env "PROCO_ADMIN_TOKEN";
    /// Encoder graph to serve: fp32 | int8 (the variants model.toml lists; int8 uses its own temperatures when model.toml gives them)
    encoder_variant: EncoderVariant = EncoderVariant::Fp32, env "PROCO_ENCODER_VARIANT";
    /// auto | cuda | cpu
    execution_provider: ProviderChoice = ProviderChoice::Auto, env "PROCO_EXECUTION_PROVIDER";
    /// ONNX Runtime threads inside one operator (0: ONNX Runtime decides)
    intra_threads: usize = 0, env "PROCO_INTRA_THREADS";
    /// ONNX Runtime threads across operators (0: ONNX Runtime decides)
    inter_threads: usize = 0, env "PROCO_INTER_THREADS";
    /// Encoder sessions per model, each on its own inference thread, fed by one batcher (Triton's instance_group count); each gets intra_threads threads
    encoder_instances: usize = 1, env "PROCO_ENCODER_INSTANCES";
    /// Let ONNX Runtime's idle threads spin for work (a little lower latency under steady load) instead of sleeping (no CPU burnt between requests)
    ort_spinning: bool = true, env "PROCO_ORT_SPINNING";
    /// Most classes the prototypes may have after learning new classes from examples
    max_classes: usize = 10_000, env "PROCO_MAX_CLASSES";
    /// Prototype versions kept beside the prototypes file for rollback (0: keep none)
    prototype_history: usize = 10, env "PROCO_PROTOTYPE_HISTORY";
    /// Where the prototypes and their versions live: file (each model folder's prototypes.json, for one machine) or a PostgreSQL URL (postgres://user:password@host:5432/database) that every replica shares and follows
    [hide_env_values = true]
    prototype_store: String = "file".to_string(), env "PROCO_PROTOTYPE_STORE";
    /// How often the prototypes file is checked for changes, in ms (0: never)
    reload_poll_ms: u64 = 500, env "PROCO_RELOAD_POLL_MS";
    /// On SIGTERM/Ctrl-C: ms between turning /health/ready to 503 and closing the listener, so that load balancers notice
    drain_delay_ms: u64 = 1000, env "PROCO_DRAIN_DELAY_MS";
    /// On SIGTERM/Ctrl-C: ms after closing the listener that admitted requests get to finish before the process exits
    shutdown_timeout_ms: u64 = 30_000, env "PROCO_SHUTDOWN_TIMEOUT_MS";
    /// Tests only: a request with the header X-Proco-Fault: panic makes its handler panic, to show that a fault is contained (500, the server goes on)
    fault_injection: bool = false, env "PROCO_FAULT_INJECTION";
    /// Base URL of an OTLP/HTTP trace receiver, e.g. http://collector:4318 (spans go to /v1/traces): one trace per request, child of an incoming W3C traceparent (empty: no traces)
    otlp_endpoint: String = String::new(), env "PROCO_OTLP_ENDPOINT";
    /// Share of the traces started here that are exported, in [0, 1]; a request with a traceparent follows its caller's sampling decision
    trace_sample_ratio: f64 = 1.0, env "PROCO_TRACE_SAMPLE_RATIO";
    /// One line per request in the log: text | json | off
    access_log: AccessLogFormat = AccessLogFormat::Text, env "PROCO_ACCESS_LOG";
    /// Log filter: error | warn | info | debug | trace, or a tracing directive
    log_level: String = "info".to_string(), env "PROCO_LOG_LEVEL";
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
            None => ServeArgs::default(),
        };
        let cfg = Config::layer(args, file);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The admin bearer token, if the admin endpoints are enabled.
    pub fn admin_token(&self) -> Option<&str> {
        Some(self.admin_token.as_str()).filter(|t| !t.is_empty())
    }

    /// The gRPC address, or `None` when gRPC is off.
    pub fn grpc_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.grpc_listen.trim() {
            "" | "off" => Ok(None),
            addr => addr.parse().map(Some).with_context(|| {
                format!("grpc_listen: {addr:?} is not an address like 127.0.0.1:8001 (or \"off\")")
            }),
        }
    }

    /// The PostgreSQL URL of the shared prototype store, or `None` for the file store.
    pub fn prototype_store_url(&self) -> anyhow::Result<Option<&str>> {
        match self.prototype_store.trim() {
            "" | "file" => Ok(None),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                // Checked here so that a typo is a start-up error; the URL is never echoed (it
                // may hold a password).
                url.parse::<tokio_postgres::Config>().map_err(|e| {
                    anyhow::anyhow!("prototype_store: not a valid PostgreSQL URL ({e})")
                })?;
                Ok(Some(url))
            }
            _ => bail!(
                "prototype_store: expected \"file\" or a PostgreSQL URL like postgres://user:password@host:5432/database"
            ),
        }
    }

    /// The trace export `otlp_endpoint` asks for, if any.
    pub fn trace_export(&self) -> Option<crate::telemetry::traces::TraceExport> {
        let endpoint = self.otlp_endpoint.trim();
        (!endpoint.is_empty()).then(|| crate::telemetry::traces::TraceExport {
            endpoint: endpoint.to_string(),
            sample_ratio: self.trace_sample_ratio,
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.grpc_addr()?;
        let endpoint = self.otlp_endpoint.trim();
        let web = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !web {
            bail!("otlp_endpoint: expected an http:// or https:// URL like http://collector:4318");
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            bail!("trace_sample_ratio must be in [0, 1]");
        }
        self.prototype_store_url()?;
        if self.encoder_instances == 0 {
            bail!("encoder_instances must be at least 1");
        }
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
        if self.max_connections == 0
            || self.header_read_timeout_ms == 0
            || self.body_read_timeout_ms == 0
        {
            bail!(
                "max_connections, header_read_timeout_ms and body_read_timeout_ms must be positive"
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
        if !(self.drift_warn > 0.0 && self.drift_warn <= 1.0) {
            bail!("drift_warn must be in (0, 1] (a total-variation distance)");
        }
        if self.feedback_window == 0 {
            bail!("feedback_window must be at least 1");
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "max_batch_size = 8\nqueue_capacity = 100\ndefault_rule = \"vmf\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            queue_capacity: Some(99),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.queue_capacity, 99);
        assert_eq!(c.default_rule, Rule::Vmf);
        assert_eq!(c.max_pixels, 40_000_000);
        assert_eq!(c.admin_token(), None);
    }

    #[test]
    fn flags_are_parsed_with_the_setting_named() {
        let cli = Cli::try_parse_from([
            "proco-serve",
            "--default-prior",
            "train",
            "--execution-provider",
            "cpu",
            "--encoder-variant",
            "int8",
        ])
        .unwrap();
        assert_eq!(cli.serve.default_prior, Some(PriorName::Train));
        assert_eq!(cli.serve.execution_provider, Some(ProviderChoice::Cpu));
        assert_eq!(cli.serve.encoder_variant, Some(EncoderVariant::Int8));
        let err = Cli::try_parse_from(["proco-serve", "--encoder-variant", "int4"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("encoder_variant") && err.contains("int4"),
            "{err}"
        );
        let err = Cli::try_parse_from(["proco-serve", "--default-rule", "softmax"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("default_rule") && err.contains("softmax"),
            "{err}"
        );
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
        for text in ["max_bach_size = 8\n", "config = \"other.toml\"\n"] {
            std::fs::write(&path, text).unwrap();
            let args = ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            };
            let err = format!("{:#}", Config::resolve(&args).unwrap_err());
            let key = text.split(' ').next().unwrap();
            assert!(err.contains(key), "{err}");
        }
    }
}
