use super::*;

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
    let p = parse(&tiny_document("v1")).unwrap();
    assert_eq!(p.version, "v1");
    assert_eq!(p.model, "tiny");
    assert_eq!(p.default_rule, Rule::Vmf);
    assert_eq!(p.mean_resultant_length, vec![0.7, 0.7]);
    p.check_fits(&tiny_shape()).unwrap();
}

#[test]
fn fields_the_schema_requires_are_required() {
    for key in ["version", "model", "default_rule", "temperatures", "labels"] {
        let mut doc = tiny_document("v1");
        doc.as_object_mut().unwrap().remove(key);
        let err = parse(&doc).expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let mut doc = tiny_document("v1");
    doc["classes"][1]
        .as_object_mut()
        .unwrap()
        .remove("mean_resultant_length");
    let err = parse(&doc).err().unwrap().to_string();
    assert!(err.contains("mean_resultant_length"), "{err}");
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let mut doc = tiny_document("v1");
    doc["kapa"] = json!(3.0);
    let err = parse(&doc).err().unwrap().to_string();
    assert!(err.contains("kapa"), "{err}");
    let mut doc = tiny_document("v1");
    doc["classes"][0]["sigma"] = json!(1.0);
    let err = parse(&doc).err().unwrap().to_string();
    assert!(err.contains("sigma"), "{err}");
    let mut doc = tiny_document("v1");
    doc["temperatures"]["softmax"] = json!(1.0);
    let err = parse(&doc).err().unwrap().to_string();
    assert!(err.contains("softmax"), "{err}");
}

#[test]
fn prototypes_of_another_model_are_refused_naming_both() {
    let p = parse(&tiny_document("v1")).unwrap();
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
        parse(&tiny_document("v1")).unwrap(),
    );
    let bytes = |doc: Value| serde_json::to_vec(&doc).unwrap();
    assert_eq!(
        store
            .replace_from_bytes(&bytes(tiny_document("v1")))
            .unwrap(),
        ReloadOutcome::Unchanged {
            version: "v1".into()
        }
    );
    let mut wrong = tiny_document("v2");
    wrong["model"] = json!("other");
    assert!(store.replace_from_bytes(&bytes(wrong)).is_err());
    assert_eq!(store.snapshot().version, "v1");
    assert_eq!(
        store
            .replace_from_bytes(&bytes(tiny_document("v2")))
            .unwrap(),
        ReloadOutcome::Swapped {
            previous: "v1".into(),
            current: "v2".into()
        }
    );
    assert_eq!(store.snapshot().version, "v2");
}
