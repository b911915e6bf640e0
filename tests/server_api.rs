//! The HTTP contract of the real server: every kind of bad input gets its documented 4xx
//! JSON error, a full queue answers 503 + Retry-After, the informational endpoints say what
//! is served, and every documented metric family is exported (checked by `promtool` too
//! when it is installed).

mod common;

use std::io::Cursor;
use std::time::Duration;

use common::{any_jpeg, classify, client, get_json, Server};
use reqwest::blocking::multipart;

/// A PNG made of a signature, an IHDR claiming `w` x `h`, and IEND: a header-only bomb.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32fast::hash(&c).to_be_bytes());
    }
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn expect_error(
    status: u16,
    body: &serde_json::Value,
    want_status: u16,
    want_code: &str,
    what: &str,
) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["error"]["code"], want_code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: error message missing: {body}"
    );
}

#[test]
fn bad_inputs_get_documented_errors() {
    let server = Server::start(&["--max-body-bytes", "200000", "--max-pixels", "40000000"]);
    let c = client();
    let jpeg = any_jpeg();

    /// (what, query, content type, body, status, error code)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("empty body", "", "image/jpeg", vec![], 400, "empty_body"),
        (
            "wrong content type",
            "",
            "text/plain",
            jpeg.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "form content type (curl --data-binary's default)",
            "",
            "application/x-www-form-urlencoded",
            jpeg.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "json content type",
            "",
            "application/json",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "garbage bytes",
            "",
            "image/jpeg",
            b"definitely not an image".to_vec(),
            422,
            "invalid_image",
        ),
        (
            "truncated JPEG",
            "",
            "image/jpeg",
            jpeg[..jpeg.len() / 2].to_vec(),
            422,
            "invalid_image",
        ),
        (
            "JPEG header only",
            "",
            "image/jpeg",
            jpeg[..jpeg.len().min(160)].to_vec(),
            422,
            "invalid_image",
        ),
        (
            "PNG header claiming 100000x100000",
            "",
            "image/png",
            png_header(100_000, 100_000),
            413,
            "image_too_large",
        ),
        (
            "PNG header claiming 0x0",
            "",
            "image/png",
            png_header(0, 0),
            422,
            "invalid_image",
        ),
        (
            "PNG header only (no pixel data)",
            "",
            "image/png",
            png_header(32, 32),
            422,
            "invalid_image",
        ),
        (
            "body over max_body_bytes",
            "",
            "image/jpeg",
            vec![0xFF; 300_000],
            413,
            "body_too_large",
        ),
        (
            "unknown rule",
            "?rule=softmax",
            "image/jpeg",
            jpeg.clone(),
            400,
            "invalid_rule",
        ),
        (
            "unknown prior",
            "?prior=zipf",
            "image/jpeg",
            jpeg.clone(),
            400,
            "invalid_prior",
        ),
        (
            "prior with wrong length",
            "?prior=1,2,3",
            "image/jpeg",
            jpeg.clone(),
            400,
            "invalid_prior",
        ),
        (
            "prior with a zero weight",
            "?prior=0,1,1,1,1,1,1,1,1,1",
            "image/jpeg",
            jpeg.clone(),
            400,
            "invalid_prior",
        ),
        (
            "top_k zero",
            "?top_k=0",
            "image/jpeg",
            jpeg.clone(),
            400,
            "invalid_top_k",
        ),
        (
            "top_k not a number",
            "?top_k=three",
            "image/jpeg",
            jpeg.clone(),
            400,
            "invalid_top_k",
        ),
        (
            "top_k negative",
            "?top_k=-1",
            "image/jpeg",
            jpeg.clone(),
            400,
            "invalid_top_k",
        ),
        (
            "unknown parameter",
            "?topk=3",
            "image/jpeg",
            jpeg.clone(),
            400,
            "invalid_parameter",
        ),
    ];
    for (what, query, ct, body, want_status, want_code) in cases {
        let (status, json) = classify(&c, &server, query, ct, body);
        expect_error(status, &json, want_status, want_code, what);
    }

    // No Content-Type at all (`curl -T`): the bytes decide, and bytes that are no image are refused.
    let r = c
        .post(server.url("/v1/classify"))
        .body(b"definitely not an image".to_vec())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let json: serde_json::Value = r.json().unwrap();
    expect_error(
        status,
        &json,
        422,
        "invalid_image",
        "no Content-Type, not an image",
    );

    // Multipart: one bad part fails the request, and the message names the part.
    let form = multipart::Form::new()
        .part(
            "good",
            multipart::Part::bytes(jpeg.clone())
                .file_name("good.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        )
        .part(
            "bad",
            multipart::Part::bytes(jpeg[..jpeg.len() / 2].to_vec())
                .file_name("bad.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        );
    let r = c
        .post(server.url("/v1/classify"))
        .multipart(form)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().unwrap();
    expect_error(
        status,
        &body,
        422,
        "invalid_image",
        "multipart with a truncated part",
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"bad\"") && msg.contains("bad.jpg"), "{msg}");

    // Multipart with no parts.
    let r = c
        .post(server.url("/v1/classify"))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ--\r\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    // The server still works after all that, and no error was a 5xx.
    let (status, body) = classify(&c, &server, "", "image/jpeg", jpeg);
    assert_eq!(status, 200, "{body}");
    let metrics = common::metrics_text(&server);
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("proco_http_requests_total{route=\"/v1/classify\",status=\"5")),
        "a client error was answered with 5xx:\n{metrics}"
    );

    // Unknown endpoint: JSON 404, in each protocol's own error shape.
    let (status, body) = get_json(&c, &server, "/v1/nothing");
    expect_error(status, &body, 404, "not_found", "unknown endpoint");
    let (status, body) = get_json(&c, &server, "/v1/classify");
    expect_error(status, &body, 405, "method_not_allowed", "GET on classify");
    for path in ["/v2/nothing", "/v2/models/x/infer"] {
        let (status, body) = get_json(&c, &server, path);
        assert!([404, 405].contains(&status), "{path}: {status} {body}");
        assert!(
            body["error"].as_str().is_some_and(|m| m.contains("/v2")),
            "{path}: not the OIP error shape {{\"error\": \"<message>\"}}: {body}"
        );
    }
}

#[test]
fn classify_answers_with_everything_documented() {
    let server = Server::start(&[]);
    let c = client();
    let jpeg = any_jpeg();
    let (status, body) = classify(&c, &server, "", "image/jpeg", jpeg.clone());
    assert_eq!(status, 200, "{body}");
    // `curl -T image.jpg`: a PUT with no Content-Type is the same request.
    let put = c
        .put(server.url("/v1/classify"))
        .body(jpeg.clone())
        .send()
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let put: serde_json::Value = put.json().unwrap();
    assert_eq!(put["predictions"], body["predictions"]);
    // Defaults from config/default.toml: rule ensemble, uniform prior, top 5.
    assert_eq!(body["rule"], "ensemble");
    assert_eq!(body["prior"]["name"], "uniform");
    assert_eq!(body["predictions"].as_array().unwrap().len(), 5);
    assert!(body["posterior"].is_null());
    assert_eq!(body["model"], "cifar10-lt-proco-resnet32");
    assert!(body["prototypes_version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert!(body["temperature"].as_f64().is_some_and(|t| t > 0.0));
    for key in ["decode", "queue", "inference", "posterior", "total"] {
        assert!(
            body["timings_ms"][key].as_f64().is_some_and(|t| t >= 0.0),
            "timings_ms.{key}: {body}"
        );
    }
    let probs: Vec<f64> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect();
    assert!(
        probs.windows(2).all(|w| w[0] >= w[1]),
        "top-k is sorted: {probs:?}"
    );
    for p in body["predictions"].as_array().unwrap() {
        assert!(p["label"].is_string() && p["index"].is_u64());
    }

    // top_k clamps to C; posterior=true returns a distribution; explicit prior is echoed normalised.
    let (status, body) = classify(
        &c,
        &server,
        "?top_k=1000&posterior=true&rule=ensemble&prior=1,1,1,1,1,1,1,1,1,3",
        "image/jpeg",
        jpeg.clone(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"].as_array().unwrap().len(), 10);
    let post: Vec<f64> = body["posterior"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!((post.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let w: Vec<f64> = body["prior"]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        (w[9] - 0.25).abs() < 1e-12 && (w[0] - 1.0 / 12.0).abs() < 1e-12,
        "{w:?}"
    );

    // Adaptive prior names the vector it used.
    let (status, body) = classify(&c, &server, "?prior=adaptive", "image/jpeg", jpeg.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prior"]["weights"].as_array().unwrap().len(), 10);

    // Every rule works.
    for rule in ["linear", "proco", "vmf", "ensemble"] {
        let (status, body) = classify(
            &c,
            &server,
            &format!("?rule={rule}&prior=train"),
            "image/png",
            {
                let img = image::load_from_memory(&jpeg).unwrap();
                let mut buf = Cursor::new(Vec::new());
                img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
                buf.into_inner()
            },
        );
        assert_eq!(status, 200, "{rule}: {body}");
        assert_eq!(body["rule"], rule);
    }

    // A large, non-square image is resized and cropped, not refused.
    let big = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    }));
    let mut buf = Cursor::new(Vec::new());
    big.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
    let (status, body) = classify(&c, &server, "", "image/jpeg", buf.into_inner());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn model_health_and_metrics_endpoints() {
    let server = Server::start(&[]);
    let c = client();
    let (status, live) = get_json(&c, &server, "/health/live");
    assert_eq!(status, 200, "{live}");
    let (status, ready) = get_json(&c, &server, "/health/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["provider"], "cpu", "{ready}");

    let (status, model) = get_json(&c, &server, "/v1/model");
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["labels"].as_array().unwrap().len(), 10);
    assert_eq!(model["feature_dim"], 128);
    assert_eq!(
        model["rules"],
        serde_json::json!(["linear", "proco", "vmf", "ensemble"])
    );
    assert_eq!(model["default_rule"], "ensemble");
    assert_eq!(model["default_prior"], "uniform");
    assert_eq!(model["execution_provider"]["active"], "cpu");
    assert_eq!(model["execution_provider"]["requested"], "auto");
    for key in ["kappa", "train_counts", "train_prior"] {
        assert_eq!(model[key].as_array().unwrap().len(), 10, "{key}");
    }
    for rule in ["linear", "proco", "vmf", "ensemble"] {
        assert!(
            model["temperatures"][rule]
                .as_f64()
                .is_some_and(|t| t > 0.0),
            "{rule}"
        );
    }
    assert_eq!(
        model["adaptive_prior"]["estimate"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    assert!(model["prototypes_version"].is_string());

    // Some traffic so every histogram has samples.
    let (status, _) = classify(&c, &server, "", "image/jpeg", any_jpeg());
    assert_eq!(status, 200);
    let r = c.get(server.url("/metrics")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().unwrap();
    let families = [
        ("proco_http_requests_total", "counter"),
        ("proco_request_duration_seconds", "histogram"),
        ("proco_queue_duration_seconds", "histogram"),
        ("proco_decode_duration_seconds", "histogram"),
        ("proco_inference_duration_seconds", "histogram"),
        ("proco_posterior_duration_seconds", "histogram"),
        ("proco_batch_size", "histogram"),
        ("proco_queue_depth", "gauge"),
        ("proco_predictions_total", "counter"),
        ("proco_adaptive_prior", "gauge"),
        ("proco_prototype_reloads_total", "counter"),
        ("proco_prototypes_info", "gauge"),
        ("proco_execution_provider_info", "gauge"),
        ("proco_model_info", "gauge"),
        ("proco_ready", "gauge"),
        ("proco_batch_failures_total", "counter"),
        ("proco_abandoned_images_total", "counter"),
    ];
    for (name, kind) in families {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "missing family {name} ({kind}):\n{text}"
        );
    }
    let version = model["prototypes_version"].as_str().unwrap();
    assert_eq!(
        common::metric(
            &text,
            &format!("proco_prototypes_info{{version=\"{version}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        common::metric(
            &text,
            "proco_execution_provider_info{provider=\"cpu\",requested=\"auto\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        common::metric(&text, "proco_model_info{classes=\"10\",feature_dim=\"128\",model=\"cifar10-lt-proco-resnet32\",variant=\"fp32\"}"),
        Some(1.0)
    );
    assert_eq!(common::metric(&text, "proco_ready"), Some(1.0));
    assert_eq!(
        common::metric(&text, "proco_batch_failures_total"),
        Some(0.0)
    );
    assert!(common::metric(
        &text,
        "proco_http_requests_total{route=\"/v1/classify\",status=\"200\"}"
    )
    .is_some_and(|v| v >= 1.0));
    // Naming rules we promise: prefix, base units, _total only on counters.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(name.starts_with("proco_"), "{name}");
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}"
        );
        assert!(
            !name.contains("millis") && !name.contains("_ms"),
            "{name}: use base units"
        );
    }

    // promtool, when installed, must accept the exposition.
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("promtool check metrics: ok");
    } else {
        println!("promtool not installed; checked metric names in the test only");
    }
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    // One image of queue room, and a batcher that waits 1.5 s for company: while the first
    // request waits, a second cannot be admitted.
    let server = Server::start(&[
        "--queue-capacity",
        "1",
        "--max-images-per-request",
        "1",
        "--max-queue-delay-ms",
        "1500",
    ]);
    let jpeg = any_jpeg();
    let base = server.url("/v1/classify");
    let first = {
        let jpeg = jpeg.clone();
        let base = base.clone();
        std::thread::spawn(move || {
            let r = client()
                .post(&base)
                .header("content-type", "image/jpeg")
                .body(jpeg)
                .send()
                .unwrap();
            r.status().as_u16()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let r = client()
        .post(&base)
        .header("content-type", "image/jpeg")
        .body(jpeg.clone())
        .send()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert!(
        waited < Duration::from_millis(500),
        "503 must be immediate, took {waited:?}"
    );
    assert_eq!(first.join().unwrap(), 200);
    // Room again afterwards.
    let r = client()
        .post(&base)
        .header("content-type", "image/jpeg")
        .body(jpeg)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn admin_reload_needs_the_token() {
    let c = client();
    // No token configured: the endpoint is disabled.
    let server = Server::start(&[]);
    let r = c.post(server.url("/admin/reload")).send().unwrap();
    assert_eq!(r.status(), 403);
    drop(server);

    let server = Server::start_with_env(&[], &[("PROCO_ADMIN_TOKEN", "s3cret")]);
    let r = c.post(server.url("/admin/reload")).send().unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = c
        .post(server.url("/admin/reload"))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(server.url("/admin/reload"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["result"], "unchanged");
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proco-serve"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--listen", "127.0.0.1:0", "--default-rule", "softmax"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("default_rule") && err.contains("softmax"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proco-serve"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "off",
            "--model-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.toml"), "{err}");

    // execution_provider = "cuda" with the CPU-only ONNX Runtime (the default build):
    // refuses to start, and says why.
    if env!("PROCO_ORT_WHEEL_BUILD") == "onnxruntime"
        && std::env::var_os("ORT_DYLIB_PATH").is_none()
    {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_proco-serve"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "off",
                "--execution-provider",
                "cuda",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CUDA cannot be used"), "{err}");
    }

    // A bad ORT_DYLIB_PATH is an error message, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proco-serve"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "off"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ORT_DYLIB_PATH") || err.contains("/nonexistent"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn adaptive_prior_follows_the_traffic() {
    // Small window so a few requests are enough: EM after 8 images, every 8 images.
    let server = Server::start(&[
        "--adaptive-min-samples",
        "8",
        "--adaptive-refresh-every",
        "8",
        "--adaptive-window",
        "64",
    ]);
    let c = client();
    let (_, model) = get_json(&c, &server, "/v1/model");
    let train: Vec<f64> = model["train_prior"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // Traffic of tail classes only: the fixtures of the five rarest classes.
    let manifest = common::parity_manifest();
    let tail: Vec<&serde_json::Value> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["label"].as_u64().unwrap() >= 5)
        .collect();
    assert!(tail.len() >= 8);
    for img in tail.iter().cycle().take(24) {
        let bytes = common::fixture(img["file"].as_str().unwrap());
        let (status, body) = classify(&c, &server, "", "image/jpeg", bytes);
        assert_eq!(status, 200, "{body}");
    }
    // The EM runs on its own thread: wait until it has taken in all 24 images.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let model = loop {
        let (_, model) = get_json(&c, &server, "/v1/model");
        if model["adaptive_prior"]["samples"] == 24 || std::time::Instant::now() > deadline {
            break model;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let adaptive: Vec<f64> = model["adaptive_prior"]["estimate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(model["adaptive_prior"]["samples"], 24);
    let tail_mass = |q: &[f64]| q[5..].iter().sum::<f64>();
    assert!(
        tail_mass(&adaptive) > tail_mass(&train) + 0.3,
        "the estimate should move to the tail classes: {adaptive:?} (train {train:?})"
    );
    assert!((adaptive.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    // The request-level prior=adaptive uses that estimate, and the gauge exports it.
    let (_, body) = classify(&c, &server, "?prior=adaptive", "image/jpeg", any_jpeg());
    let used: Vec<f64> = body["prior"]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (u, a) in used.iter().zip(&adaptive) {
        assert!((u - a).abs() < 1e-12);
    }
    let text = common::metrics_text(&server);
    let label = model["labels"][9].as_str().unwrap();
    let gauge =
        common::metric(&text, &format!("proco_adaptive_prior{{label=\"{label}\"}}")).unwrap();
    assert!(gauge > train[9], "gauge {gauge} vs train {}", train[9]);
}
