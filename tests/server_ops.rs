//! Operating the server: request ids, the access log, and a handler fault that is contained.

mod common;

use common::{any_jpeg, client, metric, Server};
use serde_json::Value;

fn classify(server: &Server, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String, Value) {
    let mut r = client()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/jpeg");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.body(body).send().unwrap();
    let status = r.status().as_u16();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    (status, id, r.json().unwrap())
}

#[test]
fn request_ids_and_access_log_lines() {
    let server = Server::start(&[]);
    let (status, id, _) = classify(&server, &[("x-request-id", "client-42.a")], any_jpeg());
    assert_eq!((status, id.as_str()), (200, "client-42.a"));
    // An id that is not a sensible token is replaced; errors carry the id in their body.
    let (status, id, body) = classify(
        &server,
        &[("x-request-id", "no spaces, please")],
        Vec::new(),
    );
    assert_eq!(status, 400);
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(body["error"]["request_id"], id.as_str());

    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("id=client-42.a"))
        .unwrap_or_else(|| panic!("no access line:\n{logs}"));
    for part in [
        "POST /v1/classify 200",
        "model=cifar10-lt-proco-resnet32",
        "images=1",
        "batch=1",
        "rule=ensemble",
        "prior=uniform",
        "prototypes=",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("POST /v1/classify 400") && l.contains(&id)),
        "{logs}"
    );
}

#[test]
fn json_access_log_and_off() {
    let server = Server::start(&["--access-log", "json"]);
    classify(&server, &[("x-request-id", "json-1")], any_jpeg());
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("json-1"))
        .unwrap_or_else(|| panic!("{logs}"));
    let json: Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(json["status"], 200);
    assert_eq!(json["route"], "/v1/classify");
    assert_eq!(json["images"], 1);

    let quiet = Server::start(&["--access-log", "off"]);
    classify(&quiet, &[("x-request-id", "quiet-1")], any_jpeg());
    assert!(!quiet.logs().contains("quiet-1"), "{}", quiet.logs());
}

#[test]
fn a_panicking_handler_gets_a_500_and_the_server_goes_on() {
    let server = Server::start_with_env(&[], &[("PROCO_FAULT_INJECTION", "true")]);
    let (status, id, body) = classify(&server, &[("x-proco-fault", "panic")], any_jpeg());
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal");
    assert_eq!(body["error"]["request_id"], id.as_str());
    let (status, _, _) = classify(&server, &[], any_jpeg());
    assert_eq!(status, 200, "the server keeps serving");
    let text = common::metrics_text(&server);
    assert_eq!(metric(&text, "proco_panics_total"), Some(1.0));
    assert!(
        server.logs().contains("a request handler panicked"),
        "{}",
        server.logs()
    );
}
