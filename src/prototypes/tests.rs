use super::*;
use serde_json::json;

fn parse(doc: &Value) -> Result<Prototypes, PrototypeError> {
    Prototypes::from_slice(serde_json::to_string(doc).unwrap().as_bytes())
}

fn tiny_shape() -> EncoderShape {
    EncoderShape {
        model: "tiny".into(),
        feature_dim: 2,
        num_classes: 2,
    }
}

#[test]
fn a_complete_document_is_read() {
    let p = parse(&tiny_document(1.0)).unwrap();
    assert_eq!(p.version, p.stated_version);
    assert_eq!(p.model, "tiny");
    assert_eq!(p.default_rule, Rule::Vmf);
    assert_eq!(p.mean_resultant_length, vec![0.7, 0.7]);
    assert_eq!(p.head_columns(), Some(vec![0, 1]));
    p.check_fits(&tiny_shape()).unwrap();
}

#[test]
fn fields_the_schema_requires_are_required() {
    for key in ["version", "model", "default_rule", "temperatures", "labels"] {
        let mut doc = tiny_document(1.0);
        doc.as_object_mut().unwrap().remove(key);
        let err = parse(&doc).expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let mut doc = tiny_document(1.0);
    doc["classes"][1]
        .as_object_mut()
        .unwrap()
        .remove("mean_resultant_length");
    let err = parse(&doc).err().unwrap().to_string();
    assert!(err.contains("mean_resultant_length"), "{err}");
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let mut doc = tiny_document(1.0);
    doc["kapa"] = json!(3.0);
    let err = parse(&doc).err().unwrap().to_string();
    assert!(err.contains("kapa"), "{err}");
    let mut doc = tiny_document(1.0);
    doc["classes"][0]["sigma"] = json!(1.0);
    let err = parse(&doc).err().unwrap().to_string();
    assert!(err.contains("sigma"), "{err}");
    let mut doc = tiny_document(1.0);
    doc["temperatures"]["softmax"] = json!(1.0);
    let err = parse(&doc).err().unwrap().to_string();
    assert!(err.contains("softmax"), "{err}");
}

#[test]
fn prototypes_of_another_model_are_refused_naming_both() {
    let p = parse(&tiny_document(1.0)).unwrap();
    let other = EncoderShape {
        model: "resnet50-inat".into(),
        ..tiny_shape()
    };
    let err = p.check_fits(&other).unwrap_err().to_string();
    assert!(
        err.contains("\"tiny\"") && err.contains("resnet50-inat"),
        "{err}"
    );
    let wider = EncoderShape {
        feature_dim: 3,
        ..tiny_shape()
    };
    assert!(p.check_fits(&wider).is_err());
}

#[test]
fn the_shipped_prototypes_are_strictly_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/cifar10-lt/prototypes.json"
    );
    let p = Prototypes::load(Path::new(path)).unwrap();
    assert_eq!(p.model, "cifar10-lt-proco-resnet32");
    assert_eq!(p.classes.num_classes(), 10);
}

#[test]
fn the_store_swaps_only_valid_new_versions() {
    let store = PrototypeStore::new(
        Path::new("unused.json"),
        tiny_shape(),
        parse(&tiny_document(1.0)).unwrap(),
    );
    let bytes = |doc: Value| serde_json::to_vec(&doc).unwrap();
    let v1 = store.snapshot().version.clone();
    let v2 = parse(&tiny_document(2.0)).unwrap().version;
    assert_eq!(
        store
            .replace_from_bytes(&bytes(tiny_document(1.0)))
            .unwrap(),
        ReloadOutcome::Unchanged {
            version: v1.clone()
        }
    );
    let mut wrong = tiny_document(2.0);
    wrong["model"] = json!("other");
    assert!(store.replace_from_bytes(&bytes(wrong)).is_err());
    assert_eq!(store.snapshot().version, v1);
    assert_eq!(
        store
            .replace_from_bytes(&bytes(tiny_document(2.0)))
            .unwrap(),
        ReloadOutcome::Swapped {
            previous: v1,
            current: v2.clone()
        }
    );
    assert_eq!(store.snapshot().version, v2);
}

#[test]
fn the_served_version_is_the_id_of_the_content() {
    let mut doc = tiny_document(1.0);
    let original = parse(&doc).unwrap();
    assert_eq!(original.version, original.stated_version);
    // Edit a number but not the stated version: the version follows the content.
    doc["classes"][0]["kappa"] = json!(5.05);
    let edited = parse(&doc).unwrap();
    assert_ne!(edited.version, original.version);
    assert_eq!(edited.stated_version, original.version);
}

#[test]
fn reserialising_a_document_keeps_its_id() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/cifar10-lt/prototypes.json"
    );
    let shipped = Prototypes::load(Path::new(path)).unwrap();
    let again = Prototypes::from_slice(&shipped.document.clone().to_bytes()).unwrap();
    assert_eq!(again.version, shipped.version);
    assert_eq!(again.stated_version, again.version);
    // The shipped file is in the current schema (with conformal scores): upgrading changes nothing.
    assert_eq!(shipped.document.schema_version, SCHEMA_VERSION);
    assert_eq!(shipped.conformal.len(), 4);
    let same = Prototypes::from_slice(&shipped.document.clone().upgraded().to_bytes()).unwrap();
    assert_eq!(same.version, shipped.version);
    // A v1 document upgraded gets its sums filled in: the content and the id change, the
    // statistics do not.
    let v1 = parse(&tiny_document(1.0)).unwrap();
    let up = Prototypes::from_slice(&v1.document.clone().upgraded().to_bytes()).unwrap();
    assert_ne!(up.version, v1.version);
    assert_eq!(up.head_columns(), Some(vec![0, 1]));
    assert_eq!(up.classes.kappa(), v1.classes.kappa());
}

#[test]
fn conformal_scores_must_fit_the_classes_and_temperatures() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/cifar10-lt/prototypes.json"
    );
    let shipped: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let refused = |edit: &dyn Fn(&mut Value), says: &str| {
        let mut doc = shipped.clone();
        edit(&mut doc);
        let err = parse(&doc).unwrap_err().to_string();
        assert!(err.contains(says), "{err} (expected {says:?})");
    };
    // A temperature edited by hand: the file loads, but that rule serves no sets.
    let mut doc = shipped.clone();
    doc["temperatures"]["proco"] = json!(1.5);
    let edited = parse(&doc).unwrap();
    assert!(!edited.conformal.contains_key(&Rule::Proco));
    assert!(edited.conformal_stale[&Rule::Proco].contains("temperatures.proco is 1.5"));
    assert!(edited.conformal.contains_key(&Rule::Vmf));
    refused(
        &|d| d["conformal"]["score"] = json!("aps"),
        "conformal.score",
    );
    refused(
        &|d| d["conformal"]["rules"]["vmf"]["scores"][0][0] = json!(0.99),
        "ascending",
    );
    refused(
        &|d| {
            d["conformal"]["rules"]["vmf"]["scores"]
                .as_array_mut()
                .unwrap()
                .pop();
        },
        "9 lists for 10 classes",
    );
    refused(
        &|d| d["schema_version"] = json!(2),
        "needs schema_version 3",
    );
    refused(
        &|d| d["conformal"]["rules"]["vmf"]["extra"] = json!(1),
        "unknown field",
    );
}

/// A v1 file's mean directions need be unit only within 1e-6, but upgrading derives each
/// class's `sum` from `mu`, and a v2 `sum` must agree with R to 1e-9: a learning request on such
/// a file would write one the server refuses (found by the fuzz target's round trip).
#[test]
fn a_v1_document_with_nearly_unit_mu_upgrades_to_one_that_reads_back() {
    let mut doc = tiny_document(1.0);
    doc["classes"][0]["mu"] = json!([1.0 + 5e-7, 0.0]);
    doc["classes"][1]["mu"] = json!([0.0, 1.0 - 8e-7]);
    let v1 = parse(&doc).unwrap();
    let v2 = Prototypes::from_slice(&v1.document.clone().upgraded().to_bytes()).unwrap();
    assert_eq!(v2.mean_resultant_length, v1.mean_resultant_length);
    assert_eq!(v2.head_columns(), Some(vec![0, 1]));
}
