//! Traces over OTLP, against a real receiver: an HTTP server built here that decodes what the
//! server posts to `/v1/traces` with the official OpenTelemetry protocol definitions
//! (`opentelemetry-proto`, generated from opentelemetry-proto's `.proto` files).
//!
//! A `/v1/classify` request carrying a W3C `traceparent` becomes a child of the caller's span, in
//! the caller's trace; its own children are the stages of its path (decode, queue, inference,
//! posterior, response), with the batch it rode in as attributes; the access log names the
//! trace. A request without a `traceparent` starts a trace of its own; so does an OIP `/v2`
//! request.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{any_jpeg, client, Server};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Every span received so far.
type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver on a free port: decodes each POST as an ExportTraceServiceRequest.
fn receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans: Received = Arc::default();
    let keep = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || serve_connection(stream, keep));
        }
    });
    (url, spans)
}

fn serve_connection(stream: std::net::TcpStream, spans: Received) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        let export = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        let mut all = spans.lock().unwrap();
        for resource in export.resource_spans {
            for scope in resource.scope_spans {
                all.extend(scope.spans);
            }
        }
        drop(all);
        writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// Waits until a span named `name` of trace `trace` has arrived (with its siblings).
fn wait_for_trace(spans: &Received, trace: &str, names: &[&str]) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mine: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .cloned()
            .collect();
        if names.iter().all(|n| mine.iter().any(|s| s.name == *n)) {
            return mine;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace}: got {:?}",
            mine.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const STAGES: [&str; 5] = ["decode", "queue", "inference", "posterior", "response"];

#[test]
fn requests_are_traced_over_otlp() {
    let (endpoint, spans) = receiver();
    let server = Server::start_with_env(
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let c = client();

    // A caller's trace: the request joins it.
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let r = c
        .post(server.url("/v1/classify"))
        .header("content-type", "image/jpeg")
        .header("traceparent", &traceparent)
        .body(any_jpeg())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut names = vec!["POST /v1/classify"];
    names.extend(STAGES);
    let trace = wait_for_trace(&spans, TRACE, &names);
    let request = trace
        .iter()
        .find(|s| s.name == "POST /v1/classify")
        .unwrap();
    assert_eq!(
        hex(&request.parent_span_id),
        CALLER_SPAN,
        "a child of the caller's span"
    );
    assert_eq!(request.kind, 2, "SPAN_KIND_SERVER");
    let a = attributes(request);
    assert_eq!(a["http.route"], "/v1/classify");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["proco.model"], "cifar10-lt-proco-resnet32");
    assert_eq!(a["proco.images"], "1");
    for stage in STAGES {
        let span = trace.iter().find(|s| s.name == stage).unwrap();
        assert_eq!(
            span.parent_span_id, request.span_id,
            "{stage} is a child of the request"
        );
        assert!(span.start_time_unix_nano >= request.start_time_unix_nano);
        assert!(span.end_time_unix_nano <= request.end_time_unix_nano);
    }
    let inference = attributes(trace.iter().find(|s| s.name == "inference").unwrap());
    assert!(inference["proco.batch.size"].parse::<u32>().unwrap() >= 1);
    assert!(inference["proco.batch.jobs"].parse::<u32>().unwrap() >= 1);

    // No traceparent: a trace of its own, whose id the access log gives; /v2 likewise.
    for (path, body) in [
        ("/v1/classify", None),
        (
            "/v2/models/cifar10-lt-proco-resnet32/infer",
            Some(
                serde_json::json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                "data": [base64(&any_jpeg())]}]}),
            ),
        ),
    ] {
        let r = match &body {
            None => c
                .post(server.url(path))
                .header("content-type", "image/jpeg")
                .body(any_jpeg()),
            Some(json) => c.post(server.url(path)).json(json),
        }
        .send()
        .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().unwrap());
        let line = wait_for_log(&server, &format!("id={id}"));
        let trace_id = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("trace="))
            .unwrap()
            .to_string();
        assert_eq!(trace_id.len(), 32, "{line}");
        assert_ne!(trace_id, TRACE);
        let name = format!(
            "POST {}",
            path.replace("cifar10-lt-proco-resnet32", "{name}")
        );
        let trace = wait_for_trace(&spans, &trace_id, &[name.as_str(), "inference"]);
        let root = trace.iter().find(|s| s.name == name).unwrap();
        assert!(root.parent_span_id.is_empty(), "{name} starts its trace");
    }
    assert!(server.logs().contains(&format!("trace={TRACE}")));
}

fn wait_for_log(server: &Server, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = server.logs().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no log line with {needle}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn without_an_exporter_the_access_log_still_names_the_callers_trace() {
    let server = Server::start(&[]);
    let r = client()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/jpeg")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(any_jpeg())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let line = wait_for_log(&server, &format!("id={id}"));
    assert!(line.ends_with(&format!("trace={TRACE}")), "{line}");
    // A malformed traceparent is ignored, not refused.
    let r = client()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/jpeg")
        .header("traceparent", "00-not-a-trace")
        .body(any_jpeg())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(wait_for_log(&server, &format!("id={id}")).ends_with("trace=-"));
}

#[test]
fn sampling_is_decided_before_any_span_is_made() {
    let (endpoint, spans) = receiver();
    let server = Server::start_with_env(
        &["--otlp-endpoint", &endpoint, "--trace-sample-ratio", "0"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let sampled = "5bf92f3577b34da6a3ce929d0e0e4737";
    for traceparent in [
        None,                                           // ratio 0: not traced
        Some(format!("00-{TRACE}-{CALLER_SPAN}-00")),   // the caller did not sample
        Some(format!("00-{sampled}-{CALLER_SPAN}-01")), // the caller sampled: traced
    ] {
        let mut request = client()
            .post(server.url("/v1/classify"))
            .header("content-type", "image/jpeg")
            .body(any_jpeg());
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        assert_eq!(request.send().unwrap().status(), 200);
    }
    let trace = wait_for_trace(&spans, sampled, &["POST /v1/classify", "inference"]);
    assert_eq!(trace.len(), 1 + STAGES.len());
    std::thread::sleep(Duration::from_millis(300));
    let all = spans.lock().unwrap();
    assert!(
        all.iter().all(|s| hex(&s.trace_id) == sampled),
        "only the sampled request was exported: {:?}",
        all.iter()
            .map(|s| (&s.name, hex(&s.trace_id)))
            .collect::<Vec<_>>()
    );
}
