//! Traces over OTLP (`otlp_endpoint`): one trace per request, with child spans for its queue
//! wait, decoding, the encoder run (with the batch it rode in), the posterior and the response.
//!
//! The spans are ordinary `tracing` spans with the target [`TARGET`]; `tracing-opentelemetry`
//! turns them into OpenTelemetry spans, and the SDK's batch processor exports them over
//! OTLP/HTTP (protobuf) from a thread of its own, so a slow or absent collector never holds up
//! a request (spans beyond its queue are dropped). The log never shows these spans. With no
//! endpoint the spans are disabled at their call sites, which costs next to nothing.
//!
//! An incoming W3C `traceparent` (an HTTP header, or gRPC metadata) makes the request's span
//! its child, and the caller's sampling decision is followed; a request without one starts a
//! trace, kept with probability `trace_sample_ratio`. The decision is made before any span is
//! created ([`should_trace`]): a request not traced creates no span at all, so that 1% sampling
//! costs about what no tracing costs.

use std::cell::Cell;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span exported as a trace.
pub const TARGET: &str = "proco_serve::trace";

/// What `otlp_endpoint` and `trace_sample_ratio` ask for.
#[derive(Clone, Debug)]
pub struct TraceExport {
    /// Base URL of an OTLP/HTTP receiver (`http://collector:4318`); spans go to `/v1/traces`.
    pub endpoint: String,
    /// Share of the traces started here that are kept, in [0, 1].
    pub sample_ratio: f64,
}

/// `trace_sample_ratio`, once traces are exported; unset: nothing is traced.
static SAMPLE_RATIO: OnceLock<f64> = OnceLock::new();

/// Whether to trace a request: as its caller decided (the `traceparent`'s sampled flag), or
/// else with probability `trace_sample_ratio`; never without an exporter.
pub fn should_trace(carrier: &Carrier) -> bool {
    let Some(&ratio) = SAMPLE_RATIO.get() else {
        return false;
    };
    match carrier.sampled_flag() {
        Some(sampled) => sampled,
        None => ratio >= 1.0 || uniform() < ratio,
    }
}

/// A uniform draw in [0, 1) from a per-thread xorshift generator (sampling needs no more).
fn uniform() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let here = &STATE as *const _ as u64;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            (here ^ now) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// A span of one stage of the current request, or none when the request is not traced.
#[macro_export]
macro_rules! stage_span {
    ($name:literal $(, $($field:tt)*)?) => {
        if tracing::Span::current().is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(target: $crate::telemetry::traces::TARGET, $name $(, $($field)*)?)
        }
    };
}

/// Flushes the spans not yet exported when dropped (the server is stopping).
pub struct TraceGuard(SdkTracerProvider);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("proco-serve: cannot flush the last traces: {e}");
        }
    }
}

/// The exporting provider and the layer that feeds it.
pub(super) fn provider(export: &TraceExport) -> anyhow::Result<SdkTracerProvider> {
    let endpoint = signal_url(&export.endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("otlp_endpoint: cannot set up the exporter: {e}"))?;
    let _ = SAMPLE_RATIO.set(export.sample_ratio);
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("proco-serve")
        .build();
    Ok(SdkTracerProvider::builder()
        // Sampled already: only the requests should_trace chose have spans.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// The tracer the layer uses, and the guard that flushes at exit.
pub(super) fn tracer(
    provider: SdkTracerProvider,
) -> (opentelemetry_sdk::trace::Tracer, TraceGuard) {
    let tracer = provider.tracer("proco-serve");
    (tracer, TraceGuard(provider))
}

/// `http://host:4318` becomes `http://host:4318/v1/traces`; a URL with a path is kept.
fn signal_url(endpoint: &str) -> anyhow::Result<String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            anyhow::anyhow!("otlp_endpoint: {endpoint:?} is not an http:// or https:// URL")
        })?;
    Ok(match rest.find('/') {
        Some(i) if rest.len() > i + 1 => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    })
}

/// The caller's W3C trace context, read once from a request's `traceparent` (and `tracestate`):
/// present only when the `traceparent` is well formed.
#[derive(Default)]
pub struct Carrier {
    caller: Option<opentelemetry::Context>,
}

impl Carrier {
    pub fn new(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        let Some(traceparent) = traceparent else {
            return Carrier::default();
        };
        let cx = TraceContextPropagator::new().extract(&Headers {
            traceparent,
            tracestate,
        });
        let valid = cx.span().span_context().is_valid();
        Carrier {
            caller: valid.then_some(cx),
        }
    }

    /// The `traceparent`'s sampled flag.
    fn sampled_flag(&self) -> Option<bool> {
        let cx = self.caller.as_ref()?;
        Some(cx.span().span_context().is_sampled())
    }

    /// The trace id the `traceparent` names.
    fn trace_id(&self) -> Option<String> {
        let cx = self.caller.as_ref()?;
        Some(cx.span().span_context().trace_id().to_string())
    }
}

/// The two headers the W3C propagator reads.
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec!["traceparent"];
        keys.extend(self.tracestate.map(|_| "tracestate"));
        keys
    }
}

/// Makes `span` (a request's span, not yet entered) the child of the caller's trace, if any.
pub fn adopt(span: &tracing::Span, carrier: &Carrier) {
    if let (false, Some(cx)) = (span.is_disabled(), &carrier.caller) {
        let _ = span.set_parent(cx.clone());
    }
}

/// The trace a request belongs to, for its access-log line: its span's trace when traces are
/// exported, otherwise the one its `traceparent` names.
pub fn trace_id(span: &tracing::Span, carrier: &Carrier) -> Option<String> {
    if !span.is_disabled() {
        let cx = span.context();
        let otel = cx.span();
        let sc = otel.span_context();
        if sc.is_valid() {
            return Some(sc.trace_id().to_string());
        }
    }
    carrier.trace_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path() {
        assert_eq!(
            signal_url("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            signal_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            signal_url("https://x.example/otlp/v1/traces").unwrap(),
            "https://x.example/otlp/v1/traces"
        );
        assert!(signal_url("collector:4318").is_err());
    }

    #[test]
    fn a_traceparent_names_its_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let carrier = Carrier::new(Some(tp), None);
        assert_eq!(
            carrier.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(Carrier::new(Some("garbage"), None).trace_id(), None);
        assert_eq!(
            trace_id(&tracing::Span::none(), &carrier).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
