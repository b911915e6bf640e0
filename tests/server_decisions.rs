//! Decisions made with calibrated probabilities, through the real server over HTTP with the
//! bundled model and the fixture images: conformal prediction sets (re-derived here from the
//! scores in prototypes.json), abstention, feedback with its windowed metrics, and drift of
//! the adaptive prior.

mod common;

use common::{client, fixture, get_json, metric, parity_manifest, Server, MODEL_DIR};
use serde_json::{json, Value};

/// Every fixture: (file, true label index).
fn fixtures() -> Vec<(String, usize)> {
    parity_manifest()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["file"].as_str().unwrap().to_string(),
                i["label"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

fn prototypes() -> Value {
    let text = std::fs::read_to_string(format!("{MODEL_DIR}/prototypes.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn post(server: &Server, query: &str, file: &str) -> (u16, Value) {
    common::classify(&client(), server, query, "image/jpeg", fixture(file))
}

/// The per-class thresholds of a level, from the file's sorted scores: the
/// ceil((n + 1) * level)-th smallest score of each class (class) or of all pooled (marginal).
fn thresholds(rule: &str, kind: &str, level: f64) -> Vec<f64> {
    let protos = prototypes();
    let per_class: Vec<Vec<f64>> =
        serde_json::from_value(protos["conformal"]["rules"][rule]["scores"].clone()).unwrap();
    let quantile = |s: &[f64]| {
        let k = ((s.len() as f64 + 1.0) * level - 1e-9).ceil() as usize;
        assert!(
            k <= s.len(),
            "level {level} not supported by {} scores",
            s.len()
        );
        s[k - 1]
    };
    match kind {
        "class" => per_class.iter().map(|s| quantile(s)).collect(),
        _ => {
            let mut pooled: Vec<f64> = per_class.concat();
            pooled.sort_by(f64::total_cmp);
            vec![quantile(&pooled); per_class.len()]
        }
    }
}

fn set_indices(answer: &Value) -> Vec<usize> {
    let mut v: Vec<usize> = answer["prediction_set"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["index"].as_u64().unwrap() as usize)
        .collect();
    v.sort();
    v
}

#[test]
fn prediction_sets_are_the_classes_within_their_conformal_threshold() {
    let protos = prototypes();
    assert_eq!(protos["schema_version"], 3);
    assert_eq!(protos["conformal"]["score"], "1-p_balanced");
    let server = Server::start(&[]);
    let mut sizes = [0usize; 2];
    for (file, _) in fixtures() {
        for (k, kind) in ["class", "marginal"].into_iter().enumerate() {
            let (status, a) = post(
                &server,
                &format!("?rule=proco&prior=uniform&posterior=true&coverage=0.9&set={kind}"),
                &file,
            );
            assert_eq!(status, 200, "{a}");
            assert_eq!(a["prediction_set"]["coverage"], 0.9);
            assert_eq!(a["prediction_set"]["kind"], kind);
            let p: Vec<f64> = serde_json::from_value(a["posterior"].clone()).unwrap();
            let t = thresholds("proco", kind, 0.9);
            let expected: Vec<usize> = (0..p.len()).filter(|&y| 1.0 - p[y] <= t[y]).collect();
            assert_eq!(set_indices(&a), expected, "{file} {kind}: {a}");
            sizes[k] += expected.len();
            // Most probable first, with the probabilities the answer shows.
            let labels = a["prediction_set"]["labels"].as_array().unwrap();
            for pair in labels.windows(2) {
                assert!(pair[0]["probability"].as_f64() >= pair[1]["probability"].as_f64());
            }
            for l in labels {
                let i = l["index"].as_u64().unwrap() as usize;
                assert_eq!(l["probability"].as_f64().unwrap(), p[i]);
            }

            // The set is decided on the balanced probabilities: the training prior changes
            // the probabilities shown, not the set.
            let (_, shifted) = post(
                &server,
                &format!("?rule=proco&prior=train&posterior=true&coverage=0.9&set={kind}"),
                &file,
            );
            assert_eq!(
                set_indices(&shifted),
                expected,
                "{file} {kind} under prior=train"
            );
            assert_ne!(shifted["posterior"], a["posterior"]);
        }
    }
    assert!(
        sizes[0] >= 40 && sizes[1] >= 40,
        "sets hold at least the likely label: {sizes:?}"
    );

    // Higher levels give supersets.
    let file = &fixtures()[5].0;
    let (_, low) = post(&server, "?coverage=0.8", file);
    let (_, high) = post(&server, "?coverage=0.95", file);
    assert_eq!(
        low["prediction_set"]["kind"], "class",
        "class-conditional by default"
    );
    assert!(set_indices(&low)
        .iter()
        .all(|i| set_indices(&high).contains(i)));

    let metrics = common::metrics_text(&server);
    assert!(
        metric(&metrics, "proco_prediction_set_size_count{kind=\"class\"}").unwrap() >= 80.0,
        "{metrics}"
    );
}

#[test]
fn bad_levels_and_kinds_are_refused_with_reasons() {
    let server = Server::start(&[]);
    let file = &fixtures()[0].0;
    for (query, code, says) in [
        (
            "?coverage=1.5",
            "invalid_coverage",
            "strictly between 0 and 1",
        ),
        (
            "?coverage=0",
            "invalid_coverage",
            "strictly between 0 and 1",
        ),
        ("?coverage=abc", "invalid_coverage", "not a number"),
        // 100 validation images per class support levels up to 100/101.
        ("?coverage=0.995", "invalid_coverage", "needs at least 199"),
        (
            "?coverage=0.9&set=mondrian",
            "invalid_coverage",
            "unknown set kind",
        ),
        ("?set=class", "invalid_coverage", "give its level"),
        ("?abstain_below=2", "invalid_parameter", "between 0 and 1"),
    ] {
        let (status, body) = post(&server, query, file);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
    }
    // Marginal sets pool all 1000 scores, so they serve finer levels than class-conditional ones.
    let (status, body) = post(&server, "?coverage=0.995&set=marginal", file);
    assert_eq!(status, 200, "{body}");
}

/// A request for a set gets 400 conformal_unavailable, and the message says `why`.
fn refuses_sets(server: &Server, why: &str) {
    let (status, body) = post(server, "?coverage=0.9", &fixtures()[0].0);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "conformal_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message}");
}

#[test]
fn prototypes_without_conformal_scores_say_so() {
    let dir = common::copy_model_dir();
    let path = dir.path().join("prototypes.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc.as_object_mut().unwrap().remove("conformal");
    doc["version"] = json!(proco_serve::prototypes::prototypes_version(&doc));
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let server = Server::start(&["--model-dir", dir.path().to_str().unwrap()]);
    refuses_sets(&server, "--fit-conformal");
    // Without a set the answer is as before.
    let (status, body) = post(&server, "", &fixtures()[0].0);
    assert_eq!(status, 200, "{body}");
    assert!(body.get("prediction_set").is_none());
}

#[test]
fn abstention_marks_unsure_answers_and_is_counted() {
    let server = Server::start(&[]);
    let mut abstained = 0;
    let threshold = 0.9;
    for (file, _) in fixtures() {
        let (status, a) = post(&server, &format!("?abstain_below={threshold}"), &file);
        assert_eq!(status, 200, "{a}");
        let top = a["predictions"][0]["probability"].as_f64().unwrap();
        assert_eq!(a["abstained"], json!(top < threshold), "{a}");
        assert!(!a["predictions"].as_array().unwrap().is_empty());
        abstained += usize::from(top < threshold);
    }
    assert!(
        abstained > 0 && abstained < 40,
        "{abstained} of 40 abstained"
    );
    let (_, plain) = post(&server, "", &fixtures()[0].0);
    assert!(plain.get("abstained").is_none());
    let metrics = common::metrics_text(&server);
    let count = |r: &str| {
        metric(
            &metrics,
            &format!("proco_abstention_decisions_total{{result=\"{r}\"}}"),
        )
        .unwrap()
    };
    assert_eq!(count("abstained"), abstained as f64);
    assert_eq!(count("answered"), (40 - abstained) as f64);
    let (_, monitoring) = get_json(&client(), &server, "/v1/monitoring");
    assert_eq!(monitoring["abstention"]["abstained"], abstained);
    assert_eq!(monitoring["abstention"]["answers"], 40);
}

#[test]
fn feedback_grades_answers_over_a_window() {
    let server = Server::start(&["--feedback-capacity", "50", "--feedback-window", "30"]);
    let http = client();
    let labels: Vec<String> = serde_json::from_value(prototypes()["labels"].clone()).unwrap();
    let send = |body: Value| {
        let r = http
            .post(server.url("/v1/feedback"))
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    // 40 answers; the first 10 fall out of the window of 30.
    let mut graded = Vec::new();
    for (file, y) in fixtures() {
        let (_, a) = post(&server, "?posterior=true&coverage=0.9", &file);
        let id = a["id"].as_str().unwrap().to_string();
        let (status, r) = send(json!({"id": id, "label": labels[y]}));
        assert_eq!(status, 200, "{r}");
        let p: Vec<f64> = serde_json::from_value(a["posterior"].clone()).unwrap();
        let top = a["predictions"][0]["index"].as_u64().unwrap() as usize;
        assert_eq!(r["correct"], json!(top == y));
        assert_eq!(r["in_set"], json!(set_indices(&a).contains(&y)));
        graded.push((p, y, set_indices(&a).contains(&y)));
    }
    let window = &graded[10..];
    let n = window.len() as f64;
    let argmax = |p: &[f64]| (0..p.len()).fold(0, |b, i| if p[i] > p[b] { i } else { b });
    let accuracy = window.iter().filter(|(p, y, _)| argmax(p) == *y).count() as f64 / n;
    // The store keeps probabilities as f32: compare at that precision.
    let nll = window
        .iter()
        .map(|(p, y, _)| -f64::from(p[*y] as f32).ln())
        .sum::<f64>()
        / n;
    let coverage = window.iter().filter(|g| g.2).count() as f64 / n;
    let (_, m) = get_json(&http, &server, "/v1/monitoring");
    let f = &m["feedback"];
    assert_eq!(f["labelled"], 30);
    assert_eq!(f["window"], 30);
    assert_eq!(f["accuracy"].as_f64().unwrap(), accuracy);
    assert!(
        (f["nll"].as_f64().unwrap() - nll).abs() < 1e-9,
        "{f} vs {nll}"
    );
    assert_eq!(f["set_coverage"].as_f64().unwrap(), coverage);
    assert_eq!(f["set_answers"], 30);
    for key in ["brier", "ece"] {
        let v = f[key].as_f64().unwrap();
        assert!(v.is_finite() && v >= 0.0, "{key}: {f}");
    }
    let metrics = common::metrics_text(&server);
    assert_eq!(
        metric(&metrics, "proco_feedback_metric{metric=\"accuracy\"}").unwrap(),
        accuracy
    );
    assert_eq!(
        metric(&metrics, "proco_feedback_window_labelled").unwrap(),
        30.0
    );

    // Refusals: unknown id, a label the model lacks, a second label, a malformed body.
    let (_, a) = post(&server, "", &fixtures()[0].0);
    let id = a["id"].as_str().unwrap();
    for (body, status, code) in [
        (json!({"id": "nope", "label": "cat"}), 404, "unknown_id"),
        (
            json!({"id": id, "label": "unicorn"}),
            400,
            "invalid_feedback",
        ),
        (json!({"id": id}), 400, "invalid_feedback"),
        (
            json!({"id": id, "label": "cat", "extra": 1}),
            400,
            "invalid_feedback",
        ),
    ] {
        let (s, r) = send(body.clone());
        assert_eq!(
            (s, r["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}: {r}"
        );
    }
    assert_eq!(send(json!({"id": id, "label": "cat"})).0, 200);
    let (s, r) = send(json!({"id": id, "label": "cat"}));
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (409, "feedback_exists")
    );
    // Capacity 50: after 60 more answers the first ones are forgotten.
    let (_, oldest) = post(&server, "", &fixtures()[0].0);
    for (file, _) in fixtures().iter().chain(fixtures().iter()).take(60) {
        post(&server, "", file);
    }
    let (s, r) = send(json!({"id": oldest["id"], "label": "cat"}));
    assert_eq!(
        (s, r["error"]["code"].as_str().unwrap()),
        (404, "unknown_id"),
        "{r}"
    );
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("forgotten"));
}

#[test]
fn a_shifted_class_mix_shows_as_drift_and_is_logged() {
    let server = Server::start(&[
        "--adaptive-min-samples",
        "16",
        "--adaptive-refresh-every",
        "8",
        "--drift-warn",
        "0.3",
    ]);
    let (_, before) = get_json(&client(), &server, "/v1/monitoring");
    assert_eq!(before["prior"]["total_variation"], 0.0);
    assert_eq!(before["prior"]["drifting"], false);
    // Only airplanes and automobiles (the training prior has 40% and 24% of them).
    let planes: Vec<String> = fixtures()
        .into_iter()
        .filter(|(_, y)| *y <= 1)
        .map(|(f, _)| f)
        .collect();
    for i in 0..64 {
        let (status, _) = post(&server, "", &planes[i % planes.len()]);
        assert_eq!(status, 200);
    }
    // The EM runs on its own thread: wait for its estimate.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let after = loop {
        let (_, m) = get_json(&client(), &server, "/v1/monitoring");
        if m["prior"]["drifting"] == true || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let tv = after["prior"]["total_variation"].as_f64().unwrap();
    assert!(tv > 0.3, "{after}");
    assert_eq!(after["prior"]["drifting"], true);
    let adaptive: Vec<f64> = serde_json::from_value(after["prior"]["adaptive"].clone()).unwrap();
    assert!(adaptive[0] + adaptive[1] > 0.9, "{adaptive:?}");
    assert!(after["prior"]["kl"].as_f64().unwrap() > 0.0);
    let metrics = common::metrics_text(&server);
    let gauge = metric(&metrics, "proco_prior_drift_total_variation").unwrap();
    assert!((gauge - tv).abs() < 0.2, "{gauge} vs {tv}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.logs().contains("has drifted from training") {
        assert!(
            std::time::Instant::now() < deadline,
            "no drift warning:\n{}",
            server.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_console_page_is_served_self_contained() {
    let server = Server::start(&[]);
    let r = client().get(server.url("/")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().unwrap();
    // Nothing is fetched from elsewhere: no external script, style or font.
    for needle in [
        "<script src=\"http",
        "<link rel=\"stylesheet\" href=\"http",
        "@import",
        "url(http",
    ] {
        assert!(!page.contains(needle), "the page references {needle}");
    }
    assert!(page.contains("/v1/classify") && page.contains("/v1/monitoring"));
}

#[test]
fn the_int8_variant_serves_no_sets_fitted_for_fp32() {
    // Its own temperatures (model.toml) give other probabilities than the scores describe.
    let server = Server::start(&["--encoder-variant", "int8"]);
    refuses_sets(&server, "encoder variant serves it at");
    let (status, body) = post(&server, "?abstain_below=0.5", &fixtures()[0].0);
    assert_eq!(status, 200, "{body}");
}
