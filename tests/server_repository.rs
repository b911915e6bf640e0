//! The model repository, over real HTTP with the real model: a repository of three folders (the
//! bundled model as the default, a renamed copy, and a folder whose manifest is broken); the
//! index in `/v1` and OIP form; loading, serving, unloading and loading again the copy (its
//! answers the same bit for bit); refusals (no token, the default model, a broken folder, an
//! unknown model) in each protocol's error shape; and a stream of requests to the default model
//! that sees no failure while the copy is unloaded and loaded again and again.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{any_jpeg, client, copy_model_into, Server};
use serde_json::{json, Value};

const DEFAULT: &str = "cifar10-lt-proco-resnet32";
const COPY: &str = "cifar10-lt-copy";
const TOKEN: &str = "repo-test";

/// `root/default` (the bundled model), `root/copy` (the same files, renamed `COPY`, its
/// prototypes naming it too), `root/broken` (a manifest that is not TOML).
fn repository(root: &Path) {
    for name in ["default", "copy", "broken"] {
        std::fs::create_dir(root.join(name)).unwrap();
    }
    copy_model_into(&root.join("default"));
    copy_model_into(&root.join("copy"));
    let manifest = root.join("copy/model.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace(DEFAULT, COPY)).unwrap();
    let protos = root.join("copy/prototypes.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&protos).unwrap()).unwrap();
    doc["model"] = json!(COPY);
    std::fs::write(&protos, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    std::fs::write(root.join("broken/model.toml"), "name = [unclosed").unwrap();
    // A corrupt encoder, and prototypes of another feature dimension, each under its own name.
    for (folder, name) in [
        ("corrupt", "corrupt-encoder"),
        ("wrongdim", "wrong-dimension"),
    ] {
        std::fs::create_dir(root.join(folder)).unwrap();
        copy_model_into(&root.join(folder));
        let manifest = root.join(folder).join("model.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, text.replacen(DEFAULT, name, 1)).unwrap();
        let protos = root.join(folder).join("prototypes.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&protos).unwrap()).unwrap();
        doc["model"] = json!(name);
        std::fs::write(&protos, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
    std::fs::write(root.join("corrupt/encoder.onnx"), b"not an onnx graph").unwrap();
    let protos = root.join("wrongdim/prototypes.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&protos).unwrap()).unwrap();
    doc["feature_dim"] = json!(64);
    std::fs::write(&protos, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn start(root: &Path) -> Server {
    Server::start(&[
        "--model-dir",
        root.join("default").to_str().unwrap(),
        "--model-repository",
        root.to_str().unwrap(),
        "--admin-token",
        TOKEN,
        "--reload-poll-ms",
        "0",
    ])
}

fn post(server: &Server, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = client().post(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn classify(server: &Server, model: Option<&str>) -> (u16, Value) {
    let path = match model {
        Some(m) => format!("/v1/models/{m}/classify?posterior=true"),
        None => "/v1/classify?posterior=true".into(),
    };
    let r = client()
        .post(server.url(&path))
        .header("content-type", "image/jpeg")
        .body(any_jpeg())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn states(server: &Server) -> Vec<(String, String, String)> {
    let (status, index) = post(server, "/v2/repository/index", None);
    assert_eq!(status, 200, "{index}");
    index
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let field = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (field("name"), field("state"), field("reason"))
        })
        .collect()
}

#[test]
fn models_load_serve_unload_and_load_again() {
    let root = tempfile::tempdir().unwrap();
    repository(root.path());
    let server = start(root.path());

    // The index: the default ready, the copy not loaded, the broken folder by its folder name.
    let index = states(&server);
    let state_of = |index: &[(String, String, String)], name: &str| {
        index
            .iter()
            .find(|m| m.0 == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(state_of(&index, DEFAULT).1, "READY", "{index:?}");
    assert_eq!(state_of(&index, COPY).1, "UNAVAILABLE", "{index:?}");
    assert_eq!(state_of(&index, "broken").1, "UNAVAILABLE", "{index:?}");
    let (status, v1) = common::get_json(&client(), &server, "/v1/models");
    assert_eq!(status, 200);
    assert_eq!(v1["default"], DEFAULT);
    assert_eq!(v1["models"].as_array().unwrap().len(), 5, "{v1}");
    let (status, v2) = common::get_json(&client(), &server, "/v2");
    assert_eq!(status, 200);
    assert!(
        v2["extensions"].to_string().contains("model_repository"),
        "{v2}"
    );

    // Not loaded: a clean 404 in each protocol's shape, never a 500.
    let (status, body) = classify(&server, Some(COPY));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_loaded")),
        "{body}"
    );
    let (status, body) = post(&server, &format!("/v2/models/{COPY}/infer"), None);
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = classify(&server, Some("no-such-model"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{body}"
    );

    // Loading needs the admin token.
    let load = format!("/v2/repository/models/{COPY}/load");
    let unload = format!("/v2/repository/models/{COPY}/unload");
    assert_eq!(post(&server, &load, None).0, 401);
    assert_eq!(post(&server, &load, Some("wrong")).0, 401);
    let (status, body) = post(&server, &load, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&states(&server), COPY).1, "READY");

    // The copy answers as the default does (the same encoder and prototypes).
    let (status, default_answer) = classify(&server, None);
    assert_eq!(status, 200);
    let (status, first) = classify(&server, Some(COPY));
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["model"], COPY);
    assert_eq!(first["posterior"], default_answer["posterior"]);

    // The default model stays; the copy unloads and then answers 404.
    let (status, body) = post(
        &server,
        &format!("/v2/repository/models/{DEFAULT}/unload"),
        Some(TOKEN),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("default"),
        "{body}"
    );
    // Each model has its own series (`model` label); an unloaded model's are gone.
    let text = common::metrics_text(&server);
    for model in [DEFAULT, COPY] {
        let series = format!("proco_classes{{model=\"{model}\"}}");
        assert_eq!(common::metric(&text, &series), Some(10.0), "{series}");
    }
    assert_eq!(post(&server, &unload, Some(TOKEN)).0, 200);
    let text = common::metrics_text(&server);
    assert!(!text.contains(&format!("model=\"{COPY}\"")), "{text}");
    assert!(text.contains(&format!("model=\"{DEFAULT}\"")));
    let (name, state, reason) = state_of(&states(&server), COPY);
    assert_eq!(
        (name.as_str(), state.as_str(), reason.as_str()),
        (COPY, "UNAVAILABLE", "unloaded")
    );
    assert_eq!(classify(&server, Some(COPY)).0, 404);
    let r = client()
        .get(server.url(&format!("/v2/models/{COPY}/ready")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "an unloaded model is not ready");

    // Loaded again: the same answers, bit for bit.
    assert_eq!(post(&server, &load, Some(TOKEN)).0, 200);
    let (status, again) = classify(&server, Some(COPY));
    assert_eq!(status, 200);
    assert_eq!(again["posterior"], first["posterior"]);

    // Broken folders: refused with the reason, and the others serve on.
    for (name, reason) in [
        ("broken", "model.toml"),
        ("corrupt-encoder", "cannot load the encoder"),
        ("wrong-dimension", "feature_dim"),
    ] {
        let path = format!("/v2/repository/models/{name}/load");
        let (status, body) = post(&server, &path, Some(TOKEN));
        assert_eq!(status, 400, "{name}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{name}: {body}"
        );
        let (_, state, why) = state_of(&states(&server), name);
        assert_eq!(state, "UNAVAILABLE", "{name}");
        assert!(why.contains(reason), "{name}: {why}");
    }
    assert_eq!(classify(&server, None).0, 200);
    assert_eq!(classify(&server, Some(COPY)).0, 200);
}

/// 4 clients stream requests to the default model while the copy is unloaded and loaded 10
/// times: none fails.
#[test]
fn other_models_serve_through_loads_and_unloads() {
    let root = tempfile::tempdir().unwrap();
    repository(root.path());
    let server = Arc::new(start(root.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop) = (server.clone(), stop.clone());
            let (answered, failed) = (answered.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match classify(&server, Some(DEFAULT)).0 {
                        200 => answered.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for _ in 0..10 {
        let (status, body) = post(
            &server,
            &format!("/v2/repository/models/{COPY}/load"),
            Some(TOKEN),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(classify(&server, Some(COPY)).0, 200);
        let (status, body) = post(
            &server,
            &format!("/v2/repository/models/{COPY}/unload"),
            Some(TOKEN),
        );
        assert_eq!(status, 200, "{body}");
    }
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(answered.load(Ordering::Relaxed) > 0);
}

/// With `repository_poll_ms`: a model folder that appears is loaded, a changed manifest is
/// reloaded while requests go on, a removed folder is unloaded and leaves the index.
#[test]
fn the_poll_follows_the_folders() {
    let root = tempfile::tempdir().unwrap();
    repository(root.path());
    std::fs::remove_dir_all(root.path().join("copy")).unwrap();
    let server = Server::start(&[
        "--model-dir",
        root.path().join("default").to_str().unwrap(),
        "--model-repository",
        root.path().to_str().unwrap(),
        "--repository-poll-ms",
        "100",
        "--reload-poll-ms",
        "0",
    ]);
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let state_of = |name: &str| {
        states(&server)
            .into_iter()
            .find(|m| m.0 == name)
            .map(|m| m.1)
            .unwrap_or_default()
    };

    // A folder appears (written elsewhere, then moved in whole, as deployment tools do).
    let staging = tempfile::tempdir().unwrap();
    repository(staging.path());
    std::fs::rename(staging.path().join("copy"), root.path().join("copy")).unwrap();
    wait_for("the new model loads", &|| state_of(COPY) == "READY");
    let (status, before) = classify(&server, Some(COPY));
    assert_eq!(status, 200);

    // Its manifest changes: reloaded, and it answers all along.
    let manifest = root.path().join("copy/model.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\n# edited\n")).unwrap();
    let reloaded = || {
        server
            .logs()
            .contains(&format!("model \"{COPY}\" reloaded"))
    };
    while !reloaded() {
        let (status, answer) = classify(&server, Some(COPY));
        assert_eq!(status, 200, "during the reload: {answer}");
        assert_eq!(answer["posterior"], before["posterior"]);
    }
    assert_eq!(classify(&server, Some(COPY)).0, 200);

    // Its folder is removed: unloaded, and gone from the index.
    std::fs::remove_dir_all(root.path().join("copy")).unwrap();
    wait_for("the removed model leaves the index", &|| {
        state_of(COPY).is_empty()
    });
    let (status, body) = classify(&server, Some(COPY));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert_eq!(classify(&server, None).0, 200);
}

/// One admission limit for the process: with room for one image, a request to the copy that
/// waits in its batcher leaves none for the default model, which answers 503 at once.
#[test]
fn one_admission_limit_for_all_models() {
    let root = tempfile::tempdir().unwrap();
    repository(root.path());
    let server = Arc::new(Server::start(&[
        "--model-dir",
        root.path().join("default").to_str().unwrap(),
        "--model-repository",
        root.path().to_str().unwrap(),
        "--load-models",
        COPY,
        "--queue-capacity",
        "1",
        "--max-images-per-request",
        "1",
        "--max-queue-delay-ms",
        "1500",
        "--reload-poll-ms",
        "0",
    ]));
    let waiting = {
        let server = server.clone();
        std::thread::spawn(move || classify(&server, Some(COPY)).0)
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, body) = classify(&server, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("queue_full")),
        "{body}"
    );
    assert_eq!(waiting.join().unwrap(), 200);
    assert_eq!(
        classify(&server, None).0,
        200,
        "room again once the copy answered"
    );
}

/// The shipped repository (`models/`): the ProCo model and its LA and CE baselines all load,
/// and each answers with its own classifier (`rule=linear`).
#[test]
fn the_shipped_repository_loads() {
    let server = Server::start(&["--load-models", "all", "--reload-poll-ms", "0"]);
    let index = states(&server);
    for name in [DEFAULT, "cifar10-lt-la", "cifar10-lt-ce"] {
        let state = index.iter().find(|m| m.0 == name).map(|m| m.1.as_str());
        assert_eq!(state, Some("READY"), "{name}: {index:?}");
        let r = client()
            .post(server.url(&format!(
                "/v1/models/{name}/classify?rule=linear&posterior=true"
            )))
            .header("content-type", "image/jpeg")
            .body(any_jpeg())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{name}");
        let body: Value = r.json().unwrap();
        assert_eq!(body["model"], name);
        let total: f64 = body["posterior"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{name}: {total}");
    }
}

/// Loads of one model at the same time are serialised: all succeed, the model loads once.
#[test]
fn concurrent_loads_load_once() {
    let root = tempfile::tempdir().unwrap();
    repository(root.path());
    let server = Arc::new(start(root.path()));
    let loads: Vec<_> = (0..4)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || {
                post(
                    &server,
                    &format!("/v2/repository/models/{COPY}/load"),
                    Some(TOKEN),
                )
                .0
            })
        })
        .collect();
    for load in loads {
        assert_eq!(load.join().unwrap(), 200);
    }
    let loaded = server
        .logs()
        .matches(&format!("loading model \"{COPY}\""))
        .count();
    assert_eq!(loaded, 1, "{}", server.logs());
    assert_eq!(classify(&server, Some(COPY)).0, 200);
}
