//! Hot reload of the class prototypes under load: a client keeps classifying while the
//! prototypes file is replaced (atomically, by rename) with a valid new version and then
//! with an invalid one. No request fails; the versions seen switch exactly once; the
//! invalid file leaves the version unchanged and is counted as rejected. Also the explicit
//! triggers: POST /admin/reload and SIGHUP.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{any_jpeg, client, copy_model_dir, metric, write_atomically, Server};

/// The id of a prototypes document's content (what the server serves it as).
fn version_of(bytes: &[u8]) -> String {
    let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    proco_serve::prototypes::prototypes_version(&doc)
}

/// The bundled prototypes with every temperature scaled by `factor`, stating `version`.
fn modified_prototypes(factor: f64, version: &str) -> Vec<u8> {
    let text =
        std::fs::read_to_string(Path::new(common::MODEL_DIR).join("prototypes.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    for rule in ["linear", "proco", "vmf", "ensemble"] {
        let t = doc["temperatures"][rule].as_f64().unwrap();
        doc["temperatures"][rule] = serde_json::json!(t * factor);
    }
    doc["version"] = serde_json::json!(version);
    serde_json::to_vec_pretty(&doc).unwrap()
}

/// A structurally valid document that fails validation: mu of class 0 is not a unit vector.
fn invalid_prototypes() -> Vec<u8> {
    let text =
        std::fs::read_to_string(Path::new(common::MODEL_DIR).join("prototypes.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mu = doc["classes"][0]["mu"].as_array_mut().unwrap();
    for v in mu.iter_mut() {
        *v = serde_json::json!(v.as_f64().unwrap() * 2.0);
    }
    doc["version"] = serde_json::json!("invalid-version");
    serde_json::to_vec_pretty(&doc).unwrap()
}

fn wait_until(server: &Server, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; server log:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn file_change_reloads_under_load_without_failing_a_request() {
    let dir = copy_model_dir();
    let server = Server::start(&[
        "--model-dir",
        dir.path().to_str().unwrap(),
        "--reload-poll-ms",
        "100",
    ]);
    let c = client();
    let (_, model) = common::get_json(&c, &server, "/v1/model");
    let v1 = model["prototypes_version"].as_str().unwrap().to_string();
    // Requests name no rule, so they are answered with the default rule's temperature.
    let default_rule = model["default_rule"].as_str().unwrap().to_string();
    let t1 = model["temperatures"][&default_rule].as_f64().unwrap();

    // Client threads classifying continuously, recording (status, version, temperature).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (stop, done, url, jpeg) = (
            stop.clone(),
            done.clone(),
            server.url("/v1/classify"),
            any_jpeg(),
        );
        workers.push(std::thread::spawn(move || {
            let c = client();
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .post(&url)
                    .header("content-type", "image/jpeg")
                    .body(jpeg.clone())
                    .send()
                    .unwrap();
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().unwrap_or_default();
                mine.push((
                    status,
                    body["prototypes_version"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    body["temperature"].as_f64().unwrap_or(f64::NAN),
                ));
                done.fetch_add(1, Ordering::SeqCst);
            }
            // Each thread's sequence is in time order; it is checked on its own.
            mine
        }));
    }
    // Let both clients get answers from v1 first (however slow the machine is).
    wait_until(
        &server,
        "requests served by v1",
        Duration::from_secs(30),
        || done.load(Ordering::SeqCst) >= 10,
    );

    // 1. A valid new version, written atomically.
    let v2_bytes = modified_prototypes(2.0, "reload-test-v2");
    let v2 = version_of(&v2_bytes);
    let v2 = v2.as_str();
    write_atomically(&dir.path().join("prototypes.json"), &v2_bytes);
    wait_until(
        &server,
        "version v2 to be served",
        Duration::from_secs(10),
        || common::get_json(&c, &server, "/v1/model").1["prototypes_version"] == v2,
    );
    let after_v2 = done.load(Ordering::SeqCst);
    wait_until(
        &server,
        "requests served by v2",
        Duration::from_secs(30),
        || done.load(Ordering::SeqCst) >= after_v2 + 10,
    );

    // 2. An invalid file: rejected, v2 keeps serving.
    let rejected_before = metric(
        &common::metrics_text(&server),
        "proco_prototype_reloads_total{result=\"rejected\"}",
    )
    .unwrap();
    write_atomically(&dir.path().join("prototypes.json"), &invalid_prototypes());
    wait_until(
        &server,
        "the invalid file to be rejected",
        Duration::from_secs(10),
        || {
            metric(
                &common::metrics_text(&server),
                "proco_prototype_reloads_total{result=\"rejected\"}",
            )
            .unwrap()
                > rejected_before
        },
    );
    let after_invalid = done.load(Ordering::SeqCst);
    wait_until(
        &server,
        "requests after the rejection",
        Duration::from_secs(30),
        || done.load(Ordering::SeqCst) >= after_invalid + 10,
    );
    stop.store(true, Ordering::Relaxed);
    let sequences: Vec<Vec<(u16, String, f64)>> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();

    let (_, model) = common::get_json(&c, &server, "/v1/model");
    assert_eq!(
        model["prototypes_version"], v2,
        "the invalid file must not replace v2"
    );
    let text = common::metrics_text(&server);
    assert_eq!(
        metric(&text, &format!("proco_prototypes_info{{version=\"{v2}\"}}")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, &format!("proco_prototypes_info{{version=\"{v1}\"}}")),
        None,
        "old version label removed"
    );
    assert!(metric(&text, "proco_prototype_reloads_total{result=\"success\"}").unwrap() >= 1.0);
    assert!(
        server.logs().contains("rejected"),
        "the rejection is logged:\n{}",
        server.logs()
    );

    for seq in &sequences {
        assert!(
            seq.len() >= 5,
            "too few requests to mean anything: {}",
            seq.len()
        );
        for (status, version, _) in seq {
            assert_eq!(
                *status, 200,
                "a request failed during reload (version {version})"
            );
        }
        // Versions: a run of v1 then a run of v2 — exactly one switch, never back, never invalid.
        let switches = seq.windows(2).filter(|w| w[0].1 != w[1].1).count();
        assert_eq!(seq.first().unwrap().1, v1);
        assert_eq!(seq.last().unwrap().1, v2);
        assert_eq!(switches, 1, "versions must switch exactly once");
        // Each response's temperature belongs to the version it names.
        for (_, version, t) in seq {
            let want = if *version == v1 { t1 } else { t1 * 2.0 };
            assert!(
                (t - want).abs() <= 1e-9 * want.abs(),
                "version {version} answered with T={t}, expected {want}"
            );
        }
    }
}

#[test]
fn admin_reload_and_sighup() {
    let dir = copy_model_dir();
    let server = Server::start_with_env(
        &[
            "--model-dir",
            dir.path().to_str().unwrap(),
            "--reload-poll-ms",
            "0",
        ],
        &[("PROCO_ADMIN_TOKEN", "tok")],
    );
    let c = client();
    let path = dir.path().join("prototypes.json");

    let admin_bytes = modified_prototypes(3.0, "admin-v2");
    let admin_v2 = version_of(&admin_bytes);
    write_atomically(&path, &admin_bytes);
    let r = c
        .post(server.url("/admin/reload"))
        .bearer_auth("tok")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["result"], "success");
    assert_eq!(body["version"], admin_v2.as_str());
    assert_eq!(
        body["stated_version"], "admin-v2",
        "a stale stated version is reported"
    );
    let (_, out) = common::classify(&c, &server, "", "image/jpeg", any_jpeg());
    assert_eq!(out["prototypes_version"], admin_v2.as_str());

    write_atomically(&path, &invalid_prototypes());
    let r = c
        .post(server.url("/admin/reload"))
        .bearer_auth("tok")
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_prototypes");
    let (_, out) = common::classify(&c, &server, "", "image/jpeg", any_jpeg());
    assert_eq!(out["prototypes_version"], admin_v2.as_str());

    // A file with a different feature_dim than the encoder's output is refused too.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&modified_prototypes(1.0, "bad-dim")).unwrap();
    doc["feature_dim"] = serde_json::json!(64);
    for class in doc["classes"].as_array_mut().unwrap() {
        let mu: Vec<f64> = class["mu"].as_array().unwrap()[..64]
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let norm = mu.iter().map(|v| v * v).sum::<f64>().sqrt();
        class["mu"] = serde_json::json!(mu.iter().map(|v| v / norm).collect::<Vec<_>>());
    }
    write_atomically(&path, &serde_json::to_vec(&doc).unwrap());
    let r = c
        .post(server.url("/admin/reload"))
        .bearer_auth("tok")
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let msg = r.json::<serde_json::Value>().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("feature_dim"), "{msg}");

    // SIGHUP reloads too.
    let sighup_bytes = modified_prototypes(4.0, "sighup-v3");
    let sighup_v3 = version_of(&sighup_bytes);
    write_atomically(&path, &sighup_bytes);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(&server, "SIGHUP reload", Duration::from_secs(10), || {
        common::get_json(&c, &server, "/v1/model").1["prototypes_version"] == sighup_v3.as_str()
    });
    let text = common::metrics_text(&server);
    assert_eq!(
        metric(&text, "proco_prototype_reloads_total{result=\"success\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "proco_prototype_reloads_total{result=\"rejected\"}"),
        Some(2.0)
    );
}

/// Every kappa scaled by 1.01, the stated version left as it was (a hand edit).
fn kappa_edited(doc: &serde_json::Value, factor: f64) -> Vec<u8> {
    let mut doc = doc.clone();
    for class in doc["classes"].as_array_mut().unwrap() {
        let k = class["kappa"].as_f64().unwrap();
        class["kappa"] = serde_json::json!(k * factor);
    }
    serde_json::to_vec_pretty(&doc).unwrap()
}

/// A hand edit that leaves `version` stale still takes effect, through the file poll, SIGHUP
/// and the admin endpoint, and the disagreement is reported.
#[test]
fn a_reload_follows_the_content_not_the_stated_version() {
    let dir = copy_model_dir();
    let path = dir.path().join("prototypes.json");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let server = Server::start_with_env(
        &[
            "--model-dir",
            dir.path().to_str().unwrap(),
            "--reload-poll-ms",
            "100",
        ],
        &[("PROCO_ADMIN_TOKEN", "tok")],
    );
    let c = client();
    let served = || common::get_json(&c, &server, "/v1/model").1["prototypes_version"].clone();
    let kappa0 = || {
        common::get_json(&c, &server, "/v1/model").1["kappa"][0]
            .as_f64()
            .unwrap()
    };
    let k_start = kappa0();
    assert_eq!(served(), original["version"]);

    // 1. The file poll.
    let polled = kappa_edited(&original, 1.01);
    write_atomically(&path, &polled);
    wait_until(&server, "the polled edit", Duration::from_secs(10), || {
        served() == version_of(&polled).as_str()
    });
    assert!((kappa0() / k_start - 1.01).abs() < 1e-12);

    // 2. SIGHUP (polling would see it too, so stop it from racing: it reads the same bytes
    // under the same lock and either one applies it once).
    let hup = kappa_edited(&original, 1.02);
    write_atomically(&path, &hup);
    std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    wait_until(&server, "the SIGHUP edit", Duration::from_secs(10), || {
        served() == version_of(&hup).as_str()
    });

    // 3. The admin endpoint.
    let admin = kappa_edited(&original, 1.03);
    write_atomically(&path, &admin);
    let r = c
        .post(server.url("/admin/reload"))
        .bearer_auth("tok")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().unwrap();
    // The poller may have applied it first; either way the content's id is served.
    assert_eq!(body["version"], version_of(&admin).as_str());
    assert_eq!(body["stated_version"], original["version"]);
    assert!((kappa0() / k_start - 1.03).abs() < 1e-12);

    let text = common::metrics_text(&server);
    assert_eq!(
        metric(&text, "proco_prototype_version_mismatches_total"),
        Some(3.0),
        "each stale file is counted once"
    );
    assert!(
        server.logs().contains("but its content is version"),
        "{}",
        server.logs()
    );
}
