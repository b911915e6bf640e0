//! The content-derived id of a prototypes document (docs/prototypes.md): the first 16 hex
//! digits of SHA-256 over the canonical JSON of the document without `version`.
//!
//! "Canonical" is what the Python exporter hashes, `json.dumps(doc, sort_keys=True,
//! separators=(",", ":"))`, reproduced byte for byte so that both sides derive the same id from
//! the same content. `serde_json::to_string` would not: it writes 3e-5 where Python writes
//! 3e-05, and UTF-8 where Python writes \u escapes.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The content-derived id of a prototypes document (see the module documentation).
pub fn prototypes_version(doc: &Value) -> String {
    let mut body = doc.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.remove("version");
    }
    let digest = Sha256::digest(canonical_json(&body).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Python's `json.dumps(v, sort_keys=True, separators=(",", ":"))` (with `ensure_ascii`).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !(n.is_i64() || n.is_u64()) => out.push_str(&python_float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_python_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_python_string(k, out);
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
    }
}

fn write_python_string(s: &str, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut units = [0u16; 2];
                for u in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for decimal exponents -5 < e < 16,
/// otherwise `d.ddde±XX`.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", x.abs()); // shortest round-trip digits: "3.264433906608702e-5"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if (-5 < exp) && (exp < 16) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            let (int_part, frac) = if digits.len() > int_len {
                (digits[..int_len].to_string(), digits[int_len..].to_string())
            } else {
                (format!("{digits:0<int_len$}"), "0".to_string())
            };
            format!("{int_part}.{frac}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_matches_python() {
        // json.dumps(doc, sort_keys=True, separators=(",", ":")) of this document, and its version,
        // computed with CPython 3.
        let doc: Value = serde_json::from_str(
            r#"{"b": [1e-05, 3.264433906608702e-05, 0.0001234, 1e+16, 1.5e+16, 123456789012345.6, 5000.0, -3e-07, 0.1, 0.0, -2.5],
                "a": {"count": 112, "neg": -7, "label": "caf\u00e9 \"q\"\n\ud83d\ude00", "t": true, "n": null}, "version": "zzz"}"#,
        )
        .unwrap();
        let mut body = doc.clone();
        body.as_object_mut().unwrap().remove("version");
        assert_eq!(
            canonical_json(&body),
            r#"{"a":{"count":112,"label":"caf\u00e9 \"q\"\n\ud83d\ude00","n":null,"neg":-7,"t":true},"b":[1e-05,3.264433906608702e-05,0.0001234,1e+16,1.5e+16,123456789012345.6,5000.0,-3e-07,0.1,0.0,-2.5]}"#
        );
        assert_eq!(prototypes_version(&doc), "2ff22396376bc9a7");
    }

    #[test]
    fn version_of_the_shipped_prototypes_is_reproduced() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/cifar10-lt/prototypes.json"
        );
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(path).expect("models/cifar10-lt/prototypes.json"),
        )
        .unwrap();
        assert_eq!(prototypes_version(&doc), doc["version"].as_str().unwrap());
    }
}
