//! Log setup (and trace export), and how access lines are written.

use super::traces::{TraceExport, TraceGuard};

/// How access lines are written (`access_log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    Json,
    Off,
}

impl std::str::FromStr for AccessLogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(AccessLogFormat::Text),
            "json" => Ok(AccessLogFormat::Json),
            "off" => Ok(AccessLogFormat::Off),
            other => Err(format!(
                "unknown access log format {other:?}: expected text, json or off"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for AccessLogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Installs the log subscriber: human-readable lines on stderr, filtered by `level`
/// (`RUST_LOG` wins when set). stdout stays free for the "listening on" line.
///
/// A plain level (`info`, `debug`...) keeps ONNX Runtime's own chatter (dozens of lines
/// per session) at `warn`; give a full directive (e.g. `debug,ort=info`) to see it.
pub fn init_logging(level: &str) {
    let _ = init_telemetry(level, None);
}

/// [`init_logging`], and with `traces` the OpenTelemetry layer that exports the request spans
/// over OTLP; keep the guard until the process ends (dropping it flushes the last spans).
pub fn init_telemetry(
    level: &str,
    traces: Option<&TraceExport>,
) -> anyhow::Result<Option<TraceGuard>> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let directive = match level {
        "error" | "warn" | "info" | "debug" | "trace" => format!("{level},ort=warn"),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directive))
        .unwrap_or_else(|_| EnvFilter::new("info,ort=warn"))
        // The request spans are for the exporter only, never in the log.
        .add_directive(format!("{}=off", super::traces::TARGET).parse()?);
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let (export, guard) = match traces {
        Some(traces) => {
            let (tracer, guard) = super::traces::tracer(super::traces::provider(traces)?);
            let only_traces = tracing_subscriber::filter::Targets::new()
                .with_target(super::traces::TARGET, tracing::Level::TRACE);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_filter(only_traces);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(export)
        .try_init();
    Ok(guard)
}
