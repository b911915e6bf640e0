//! Prototypes as living data, over real HTTP with the real model: learning a class from
//! labelled images (the fixtures), removing one, the history and rollback, a restart, and
//! SIGKILL at random moments during a stream of learning requests.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, copy_model_dir, fixture, get_json, metric, parity_manifest, Server};
use serde_json::Value;

const TOKEN: &str = "tok";

fn start(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--model-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start_with_env(&args, &[("PROCO_ADMIN_TOKEN", TOKEN)])
}

/// The fixture files of one class.
fn fixtures_of(label: usize) -> Vec<String> {
    parity_manifest()["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["label"].as_u64() == Some(label as u64))
        .map(|i| i["file"].as_str().unwrap().to_string())
        .collect()
}

fn multipart(files: &[String]) -> reqwest::blocking::multipart::Form {
    let mut form = reqwest::blocking::multipart::Form::new();
    for (i, f) in files.iter().enumerate() {
        let part = reqwest::blocking::multipart::Part::bytes(fixture(f))
            .file_name(f.clone())
            .mime_str("image/jpeg")
            .unwrap();
        form = form.part(format!("img{i}"), part);
    }
    form
}

fn learn(server: &Server, query: &str, files: &[String]) -> (u16, Value) {
    let r = client()
        .post(server.url(&format!("/admin/prototypes/examples?{query}")))
        .bearer_auth(TOKEN)
        .multipart(multipart(files))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn admin(server: &Server, method: reqwest::Method, path: &str) -> (u16, Value) {
    let r = client()
        .request(method, server.url(path))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn model(server: &Server) -> Value {
    get_json(&client(), server, "/v1/model").1
}

fn class<'a>(model: &'a Value, label: &str) -> &'a Value {
    model["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == label)
        .unwrap_or_else(|| panic!("no class {label}: {model}"))
}

#[test]
fn learning_removing_and_rolling_back() {
    let dir = copy_model_dir();
    let server = start(dir.path(), &["--max-classes", "11"]);
    let c = client();
    let original = model(&server);
    let v0 = original["prototypes_version"].as_str().unwrap().to_string();
    let trucks = fixtures_of(9);
    assert_eq!(trucks.len(), 4);

    // Remove truck: 9 classes, and the linear head still answers over those 9.
    let (status, body) = admin(
        &server,
        reqwest::Method::DELETE,
        "/admin/prototypes/classes/truck",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["classes"], 9);
    let m = model(&server);
    assert_eq!(m["num_classes"], 9);
    assert!(m["rules"].as_array().unwrap().iter().any(|r| r == "linear"));
    let (status, out) = common::classify(
        &c,
        &server,
        "?rule=linear&posterior=true",
        "image/jpeg",
        fixture(&trucks[0]),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["posterior"].as_array().unwrap().len(), 9);

    // Teach it back from the four truck fixtures: only with create=true.
    let (status, body) = learn(&server, "label=truck", &trucks);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, "unknown_label".into()),
        "{body}"
    );
    let (status, body) = learn(&server, "label=truck&create=true", &trucks);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["created"], true);
    assert_eq!(body["count"], 4.0);
    assert_eq!(body["classes"], 10);
    let m = model(&server);
    let truck = class(&m, "truck");
    assert_eq!(truck["source"], "examples");
    assert_eq!(truck["in_linear_head"], false);
    assert_eq!(m["rules"], serde_json::json!(["proco", "vmf"]));

    // The linear head cannot know the new class: linear and ensemble say so; the default rule
    // (ensemble) gives way to proco, and the answer names it.
    let (status, out) = common::classify(
        &c,
        &server,
        "?rule=linear",
        "image/jpeg",
        fixture(&trucks[0]),
    );
    assert_eq!(
        (status, out["error"]["code"].clone()),
        (400, "rule_unavailable".into()),
        "{out}"
    );
    assert!(out["error"]["message"]
        .as_str()
        .unwrap()
        .contains("proco, vmf"));
    let (status, out) = common::classify(&c, &server, "", "image/jpeg", fixture(&trucks[1]));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["rule"], "proco");
    let (_, out) = common::classify(
        &c,
        &server,
        "?rule=vmf&top_k=10",
        "image/jpeg",
        fixture(&trucks[2]),
    );
    assert!(out["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["label"] == "truck"));

    // One at a time gives the same class as all at once.
    for f in &trucks {
        let (status, body) = learn(&server, "label=truck2&create=true", std::slice::from_ref(f));
        assert_eq!(status, 200, "{body}");
    }
    let m = model(&server);
    let (a, b) = (class(&m, "truck"), class(&m, "truck2"));
    assert_eq!(a["count"], b["count"]);
    let (ka, kb) = (a["kappa"].as_f64().unwrap(), b["kappa"].as_f64().unwrap());
    assert!((ka - kb).abs() <= 1e-12 * ka, "{ka} vs {kb}");
    assert!(
        (a["mean_resultant_length"].as_f64().unwrap()
            - b["mean_resultant_length"].as_f64().unwrap())
        .abs()
            <= 1e-12
    );

    // max_classes = 11: a twelfth class is refused.
    let (status, body) = learn(&server, "label=x&create=true", &trucks[..1]);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (422, "too_many_classes".into()),
        "{body}"
    );

    // All or nothing: a bad part fails the request, names the part, and nothing is learned.
    let before = model(&server)["prototypes_version"].clone();
    let form = multipart(&trucks[..1]).part(
        "broken",
        reqwest::blocking::multipart::Part::bytes(b"not an image".to_vec())
            .file_name("broken.jpg")
            .mime_str("image/jpeg")
            .unwrap(),
    );
    let r = c
        .post(server.url("/admin/prototypes/examples?label=truck"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken"),
        "{body}"
    );
    assert_eq!(model(&server)["prototypes_version"], before);

    // Bad labels and a wrong token.
    for label in ["", "a%01b", &"x".repeat(129)] {
        let (status, body) = learn(&server, &format!("label={label}&create=true"), &trucks[..1]);
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, "invalid_label".into()),
            "{label:?}: {body}"
        );
    }
    let r = c
        .post(server.url("/admin/prototypes/examples?label=truck"))
        .bearer_auth("wrong")
        .body(fixture(&trucks[0]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // The history: the start, the removal, the learning; then a rollback to the start.
    let (status, versions) = get_json(&c, &server, "/v1/prototypes/versions");
    assert_eq!(status, 200);
    let entries = versions["versions"].as_array().unwrap();
    let causes: Vec<&str> = entries
        .iter()
        .rev()
        .map(|e| e["cause"].as_str().unwrap())
        .collect();
    assert_eq!(&causes[..3], ["file", "deleted", "learned"], "{versions}");
    assert_eq!(entries.last().unwrap()["version"], v0.as_str());
    assert_eq!(versions["current"], entries[0]["version"]);
    let (status, body) = admin(
        &server,
        reqwest::Method::POST,
        &format!("/admin/prototypes/rollback?version={v0}"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], v0.as_str());
    let m = model(&server);
    assert_eq!(m["kappa"], original["kappa"]);
    assert_eq!(m["rules"], original["rules"]);
    let (status, body) = admin(
        &server,
        reqwest::Method::POST,
        "/admin/prototypes/rollback?version=0123abcd",
    );
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, "unknown_version".into())
    );

    let text = common::metrics_text(&server);
    assert_eq!(
        metric(&text, "proco_examples_learned_total{label=\"truck\"}"),
        Some(4.0)
    );
    assert_eq!(
        metric(&text, "proco_examples_learned_total{label=\"truck2\"}"),
        Some(4.0)
    );
    assert_eq!(metric(&text, "proco_classes"), Some(10.0));
    assert_eq!(metric(&text, "proco_prototype_rollbacks_total"), Some(1.0));
    assert_eq!(
        metric(&text, "proco_prototype_versions_written_total"),
        Some(7.0)
    );

    // A restart serves the last acknowledged version.
    let last = model(&server)["prototypes_version"].clone();
    drop(server);
    let server = start(dir.path(), &[]);
    assert_eq!(model(&server)["prototypes_version"], last);
}

/// A tiny deterministic generator for kill times (no `rand` dependency).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The count of class `label` in the prototypes file on disk, which must parse and validate.
fn count_on_disk(dir: &std::path::Path, label: &str) -> (f64, String) {
    let path = dir.join("prototypes.json");
    let protos = proco_serve::prototypes::Prototypes::load(&path)
        .unwrap_or_else(|e| panic!("the file on disk is not valid prototypes: {e:#}"));
    let i = protos
        .classes
        .labels()
        .iter()
        .position(|l| l == label)
        .unwrap();
    (protos.classes.counts()[i], protos.version)
}

#[test]
fn sigkill_during_learning_never_tears_the_file_or_loses_an_acknowledged_change() {
    let dir = copy_model_dir();
    let image = fixtures_of(0)[0].clone();
    let mut rng = Lcg(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64);
    let mut acked_count = count_on_disk(dir.path(), "airplane").0;
    let mut kills_with_work_in_flight = 0;
    for round in 0..8 {
        let server = start(dir.path(), &["--reload-poll-ms", "0"]);
        let (_, version) = count_on_disk(dir.path(), "airplane");
        assert_eq!(
            model(&server)["prototypes_version"],
            version.as_str(),
            "a restart serves the file"
        );
        let acked: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = server.url("/admin/prototypes/examples?label=airplane");
        let sender = {
            let (acked, stop, image) = (acked.clone(), stop.clone(), fixture(&image));
            std::thread::spawn(move || {
                let c = client();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let sent = c
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .header("content-type", "image/jpeg")
                        .body(image.clone())
                        .send();
                    let Ok(r) = sent else { break }; // the server was killed
                    let Ok(body) = r.json::<Value>() else { break };
                    let count = body["count"].as_f64().expect("an acknowledged change");
                    acked
                        .lock()
                        .unwrap()
                        .push((count, body["version"].as_str().unwrap().to_string()));
                }
            })
        };
        let wait = Duration::from_millis(150 + rng.below(600));
        let until = Instant::now() + wait;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::process::Command::new("kill")
            .args(["-KILL", &server.pid().to_string()])
            .status()
            .unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        sender.join().unwrap();
        drop(server);

        let acked = acked.lock().unwrap();
        if let Some((count, _)) = acked.last() {
            acked_count = *count;
        }
        let (on_disk, version) = count_on_disk(dir.path(), "airplane");
        // Either the last acknowledged version, or the one being written when the kill came.
        assert!(
            on_disk == acked_count || on_disk == acked_count + 1.0,
            "round {round}: {on_disk} on disk, {acked_count} acknowledged"
        );
        if on_disk == acked_count {
            if let Some((_, v)) = acked.last() {
                assert_eq!(
                    &version, v,
                    "round {round}: the acknowledged version is on disk"
                );
            }
        } else {
            kills_with_work_in_flight += 1;
        }
        acked_count = on_disk;
    }
    println!("kills that caught a change being written: {kills_with_work_in_flight} of 8");
}
