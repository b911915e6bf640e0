//! The Open Inference Protocol v2 over REST, byte for byte as a client sends it: the raw binary
//! form, the binary tensor extension, JSON with base64 images and FP32 pixels, the errors, and
//! the same probabilities as `/v1`. (The Triton client itself drives /v2 and gRPC in tests/oip.)

mod common;

use common::{client, fixture, fixture_files, get_json, metric, Server};
use serde_json::{json, Value};

const MODEL: &str = "cifar10-lt-proco-resnet32";

fn infer_url(server: &Server) -> String {
    server.url(&format!("/v2/models/{MODEL}/infer"))
}

/// Splits a binary-extension answer into its JSON header and binary part.
fn split_answer(r: reqwest::blocking::Response) -> (u16, Value, Vec<u8>) {
    let status = r.status().as_u16();
    let header_len = r
        .headers()
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    let body = r.bytes().unwrap().to_vec();
    match header_len {
        Some(n) => (
            status,
            serde_json::from_slice(&body[..n]).unwrap(),
            body[n..].to_vec(),
        ),
        None => (status, serde_json::from_slice(&body).unwrap(), Vec::new()),
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The binary data of each output, by name, from an answer's header and binary part.
fn binary_outputs(header: &Value, binary: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut at = 0;
    header["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let n = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
            let part = binary[at..at + n].to_vec();
            at += n;
            (o["name"].as_str().unwrap().to_string(), part)
        })
        .collect()
}

fn v1_posterior(server: &Server, file: &str, query: &str) -> Vec<f64> {
    let (status, out) = common::classify(
        &client(),
        server,
        &format!("?posterior=true{query}"),
        "image/jpeg",
        fixture(file),
    );
    assert_eq!(status, 200, "{out}");
    out["posterior"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_close(have: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(have.len(), want.len(), "{what}");
    let worst = have
        .iter()
        .zip(want)
        .map(|(h, w)| (f64::from(*h) - w).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-6, "{what}: largest difference {worst}");
    worst
}

fn files() -> Vec<String> {
    fixture_files().into_iter().take(3).collect()
}

#[test]
fn raw_binary_form_and_binary_tensors_answer_as_v1() {
    let server = Server::start(&[]);
    let c = client();
    let files = files();

    // Raw binary form: header length 0, the body is the image itself.
    let r = c
        .post(infer_url(&server))
        .header("Inference-Header-Content-Length", "0")
        .body(fixture(&files[0]))
        .send()
        .unwrap();
    let (status, header, binary) = split_answer(r);
    assert_eq!(status, 200, "{header}");
    assert_eq!(header["model_name"], MODEL);
    let outputs = binary_outputs(&header, &binary);
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["probabilities", "logits", "feature"]);
    assert_eq!(f32s(&outputs[2].1).len(), 128);
    let default_rule = header["parameters"]["rule"].as_str().unwrap().to_string();
    assert_close(
        &f32s(&outputs[0].1),
        &v1_posterior(&server, &files[0], ""),
        "raw form",
    );

    // The binary tensor extension: three images as BYTES, rule and prior as parameters,
    // the probabilities and a classification output back.
    let mut data = Vec::new();
    for f in &files {
        let img = fixture(f);
        data.extend_from_slice(&(img.len() as u32).to_le_bytes());
        data.extend_from_slice(&img);
    }
    let request = json!({
        "id": "three",
        "parameters": {"rule": "vmf", "prior": "train"},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3, 1],
                    "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}},
                    {"name": "logits", "parameters": {"classification": 2}}],
    });
    let header_bytes = serde_json::to_vec(&request).unwrap();
    let mut body = header_bytes.clone();
    body.extend_from_slice(&data);
    let r = c
        .post(infer_url(&server))
        .header(
            "Inference-Header-Content-Length",
            header_bytes.len().to_string(),
        )
        .body(body)
        .send()
        .unwrap();
    let (status, header, binary) = split_answer(r);
    assert_eq!(status, 200, "{header}");
    assert_eq!(header["id"], "three");
    assert_eq!(header["parameters"]["rule"], "vmf");
    assert_eq!(header["parameters"]["prior"], "train");
    let probs = f32s(&binary);
    assert_eq!(probs.len(), 30);
    for (i, f) in files.iter().enumerate() {
        let want = v1_posterior(&server, f, "&rule=vmf&prior=train");
        assert_close(&probs[i * 10..(i + 1) * 10], &want, f);
    }
    let classes = &header["outputs"][1];
    assert_eq!(classes["datatype"], "BYTES");
    assert_eq!(classes["shape"], json!([3, 2]));
    let first: Vec<&str> = classes["data"][0].as_str().unwrap().split(':').collect();
    assert_eq!(first.len(), 3, "value:index:label");
    assert!(default_rule == "ensemble" || default_rule == "proco");
}

#[test]
fn json_form_with_base64_images_and_pixels() {
    use base64::Engine as _;
    let server = Server::start(&[]);
    let c = client();
    let file = &files()[1];
    let b64 = base64::engine::general_purpose::STANDARD.encode(fixture(file));
    let r = c
        .post(infer_url(&server))
        .json(
            &json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}],
                      "outputs": [{"name": "probabilities"}]}),
        )
        .send()
        .unwrap();
    let (status, header, _) = split_answer(r);
    assert_eq!(status, 200, "{header}");
    let probs: Vec<f32> = header["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let want = v1_posterior(&server, file, "");
    assert_close(&probs, &want, "base64 image");

    // The same image as the encoder's input, nested [1,3,32,32].
    let model = proco_serve::manifest::ModelManifest::load(std::path::Path::new(common::MODEL_DIR))
        .unwrap();
    let chw =
        proco_serve::preprocess::prepare(&fixture(file), &Default::default(), &model).unwrap();
    let nested: Vec<Vec<Vec<f32>>> = chw
        .chunks(32 * 32)
        .map(|plane| plane.chunks(32).map(<[f32]>::to_vec).collect())
        .collect();
    let r = c
        .post(server.url(&format!("/v2/models/{MODEL}/versions/{}/infer", header["model_version"].as_str().unwrap())))
        .json(&json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [nested]}],
                      "outputs": [{"name": "probabilities"}]}))
        .send()
        .unwrap();
    let (status, header, _) = split_answer(r);
    assert_eq!(status, 200, "{header}");
    let probs: Vec<f32> = header["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_close(&probs, &want, "pixels");
}

#[test]
fn errors_are_oip_errors_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    let c = client();
    let good = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        fixture(&files()[0]),
    );
    let bad_image =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"not an image");
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "unknown model",
            server.url("/v2/models/nope/infer"),
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [good]}]}),
            404,
            "unknown model",
        ),
        (
            "unknown version",
            server.url(&format!("/v2/models/{MODEL}/versions/0000/infer")),
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [good]}]}),
            404,
            "no version",
        ),
        (
            "wrong datatype",
            infer_url(&server),
            json!({"inputs": [{"name": "image", "datatype": "INT32", "shape": [1], "data": [1]}]}),
            400,
            "cannot be INT32",
        ),
        (
            "wrong shape",
            infer_url(&server),
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": vec![0.5; 768]}]}),
            400,
            "[N,3,32,32]",
        ),
        (
            "shape and data disagree",
            infer_url(&server),
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [good]}]}),
            400,
            "elements",
        ),
        (
            "corrupt image",
            infer_url(&server),
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [good, bad_image]}]}),
            400,
            "image[1]",
        ),
        (
            "unknown output",
            infer_url(&server),
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [good]}], "outputs": [{"name": "softmax"}]}),
            400,
            "softmax",
        ),
        (
            "bad rule",
            infer_url(&server),
            json!({"parameters": {"rule": "softmax"}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [good]}]}),
            400,
            "softmax",
        ),
        (
            "two inputs",
            infer_url(&server),
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [good]},
                           {"name": "image", "datatype": "BYTES", "shape": [1], "data": [good]}]}),
            400,
            "exactly one",
        ),
    ];
    for (what, url, body, want_status, want_text) in cases {
        let r = c.post(&url).json(&body).send().unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().unwrap();
        assert_eq!(status, want_status, "{what}: {answer}");
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: error is a string: {answer}"));
        assert!(message.contains(want_text), "{what}: {message}");
    }
    // A body that is not JSON, and binary sizes that do not add up.
    let r = c.post(infer_url(&server)).body("{nope").send().unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(infer_url(&server))
        .header("Inference-Header-Content-Length", "1000")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    // Still serving, and /v2 is in the request metrics.
    let (status, ready) = get_json(&c, &server, "/v2/health/ready");
    assert_eq!((status, ready["ready"].clone()), (200, json!(true)));
    let (status, _) = get_json(&c, &server, &format!("/v2/models/{MODEL}/ready"));
    assert_eq!(status, 200);
    let text = common::metrics_text(&server);
    assert!(
        metric(
            &text,
            "proco_http_requests_total{route=\"/v2/models/{name}/infer\",status=\"400\"}"
        )
        .is_some_and(|v| v >= 6.0),
        "{text}"
    );
    assert!(!text.contains("status=\"500\""), "no 5xx:\n{text}");
}
