//! Deadlines: `timeout_ms` on `/v1`, the OIP `timeout` parameter (microseconds) on `/v2`, and the
//! server's `request_timeout_ms` default. A request whose deadline passes while it is queued is
//! answered 504 `deadline_exceeded` at once, and the batcher drops its images unencoded (counted
//! in `proco_abandoned_images_total`; no batch runs for them).

mod common;

use std::time::{Duration, Instant};

use common::{any_jpeg, client, metric, metrics_text, Server};
use serde_json::{json, Value};

/// The batcher waits up to 2 s for company: a lone request sits in its queue that long.
fn slow_queue(extra: &[&str]) -> Server {
    let mut args = vec!["--max-queue-delay-ms", "2000"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn wait_for_abandoned(server: &Server, images: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(server);
        if metric(&text, "proco_abandoned_images_total") == Some(images) {
            assert_eq!(
                metric(&text, "proco_batch_size_count"),
                Some(0.0),
                "a batch ran for abandoned images"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never counted as abandoned:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_queued_request_past_its_deadline_is_answered_504_and_never_encoded() {
    let server = slow_queue(&[]);
    let started = Instant::now();
    let r = client()
        .post(server.url("/v1/classify?timeout_ms=300"))
        .header("content-type", "image/jpeg")
        .body(any_jpeg())
        .send()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status().as_u16(), 504);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "deadline_exceeded", "{body}");
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    wait_for_abandoned(&server, 1.0);

    let r = client()
        .post(server.url("/v1/classify?timeout_ms=soon"))
        .header("content-type", "image/jpeg")
        .body(any_jpeg())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn the_server_default_and_the_oip_timeout() {
    let server = slow_queue(&["--request-timeout-ms", "300"]);
    let r = client()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/jpeg")
        .body(any_jpeg())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 504);

    // OIP v2: `timeout` in microseconds; the answer in the protocol's error shape.
    use base64::Engine as _;
    let image = base64::engine::general_purpose::STANDARD.encode(any_jpeg());
    let request = json!({
        "parameters": {"timeout": 200_000},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}],
    });
    let r = client()
        .post(server.url("/v2/models/cifar10-lt-proco-resnet32/infer"))
        .json(&request)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 504);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("deadline"),
        "{body}"
    );
    wait_for_abandoned(&server, 2.0);
}
