//! One way for the numerical tests to fail: every failure counted, the first 20 listed.

/// Panics, naming `what`, if `failures` is not empty.
pub fn assert_none(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
