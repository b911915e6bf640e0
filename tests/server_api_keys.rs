//! API keys (`api_keys_file`): inference and feedback need a key, over `/v1` and `/v2` (401 in
//! each protocol's error shape without one or with a wrong one); the rest of the API does not;
//! the key's name is in the access log and the key is not; a changed file is read again.

mod common;

use common::{any_jpeg, client, write_atomically, Server};
use serde_json::Value;

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-9876543210ab";

fn classify(server: &Server, key: Option<&str>) -> (u16, Value) {
    let mut request = client()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/jpeg")
        .body(any_jpeg());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let r = request.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn inference_needs_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("# who may call\nalice {ALICE}\n")).unwrap();
    let server = Server::start(&[
        "--api-keys-file",
        file.to_str().unwrap(),
        "--reload-poll-ms",
        "100",
    ]);

    let (status, body) = classify(&server, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert_eq!(classify(&server, Some("wrong-key-0123456789")).0, 401);
    let (status, body) = classify(&server, Some(ALICE));
    assert_eq!(status, 200, "{body}");

    // /v2 answers in its own shape.
    let r = client()
        .post(server.url("/v2/models/cifar10-lt-proco-resnet32/infer"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().unwrap();
    assert!(body["error"].is_string(), "{body}");

    // Everything else stays open.
    for path in [
        "/health/ready",
        "/metrics",
        "/v1/model",
        "/v2/models/cifar10-lt-proco-resnet32",
    ] {
        let r = client().get(server.url(path)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }

    let logs = server.logs();
    assert!(logs.contains("key=alice"), "{logs}");
    assert!(!logs.contains(ALICE), "the key itself was logged");

    // A new file: bob in, alice out.
    write_atomically(&file, format!("bob {BOB}\n").as_bytes());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while classify(&server, Some(BOB)).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new keys were never read"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(classify(&server, Some(ALICE)).0, 401);

    // A broken file is refused: bob's key stays in force.
    write_atomically(&file, b"no key on this line\n");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(classify(&server, Some(BOB)).0, 200);
    assert!(
        server.logs().contains("API keys not reloaded"),
        "{}",
        server.logs()
    );
}
