//! Command line: `proco-serve` (serve, the default; also `proco-serve serve`) and
//! `proco-serve eval` (offline evaluation, `src/eval/`) and `proco-serve preprocess` (the
//! pixels the encoder is given, `src/preprocess/dump.rs`).
//!
//! Every serve setting is a flag, an environment variable and a key of the TOML config,
//! with one name (see `config.rs`); `proco-serve --help` lists them.

use clap::{Parser, Subcommand};

use proco_serve::app;
use proco_serve::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(
    name = "proco-serve",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the model over HTTP (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Evaluate rules and priors on a labelled image folder (accuracy, calibration, label shift).
    Eval(Box<proco_serve::eval::EvalArgs>),
    /// Write the pixels the encoder is given for each image (decode, EXIF orientation, resize).
    Preprocess(proco_serve::preprocess::dump::PreprocessArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => *args,
        Some(Command::Eval(args)) => {
            proco_serve::telemetry::init_logging("info");
            return match proco_serve::eval::run(*args) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("proco-serve eval: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Some(Command::Preprocess(args)) => {
            return match proco_serve::preprocess::dump::run(args) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("proco-serve preprocess: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => cli.serve,
    };
    let config = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proco-serve: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let traces = match proco_serve::telemetry::init_telemetry(
        &config.log_level,
        config.trace_export().as_ref(),
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("proco-serve: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("proco-serve: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listeners = app::Listeners::bind(&config).await?;
        listeners.announce()?;
        app::serve(config, listeners, app::shutdown_signal()).await
    });
    // In-flight requests are answered by now; don't wait on idle background tasks.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    // Exports the spans still queued.
    drop(traces);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("proco-serve: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
