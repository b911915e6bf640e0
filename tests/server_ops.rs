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

/// `encoder_instances = 2`: two inference threads, each with its own session, take batches from
/// one queue; concurrent requests are all answered, with the same probabilities as one instance.
#[test]
fn two_encoder_instances_serve_one_queue() {
    let one = Server::start(&[]);
    let two = std::sync::Arc::new(Server::start(&[
        "--encoder-instances",
        "2",
        "--intra-threads",
        "1",
        "--max-batch-size",
        "1",
    ]));
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", two.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    for thread in ["proco-batcher-0", "proco-batcher-1"] {
        assert!(
            names.iter().any(|n| n == thread),
            "{thread} missing: {names:?}"
        );
    }
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let two = two.clone();
            std::thread::spawn(move || classify(&two, &[], any_jpeg()))
        })
        .collect();
    let (_, _, reference) = classify(&one, &[], any_jpeg());
    for client in clients {
        let (status, _, body) = client.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let (got, want) = (&body["predictions"], &reference["predictions"]);
        assert_eq!(got[0]["label"], want[0]["label"]);
        let (p, q) = (
            got[0]["probability"].as_f64().unwrap(),
            want[0]["probability"].as_f64().unwrap(),
        );
        assert!((p - q).abs() < 1e-6, "{p} vs {q}");
    }
}
