//! Log setup, and how access lines are written.

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
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let directive = match level {
        "error" | "warn" | "info" | "debug" | "trace" => format!("{level},ort=warn"),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directive))
        .unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
