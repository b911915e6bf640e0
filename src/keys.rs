//! API keys for inference and feedback (`api_keys_file`): one `NAME KEY` pair a line (`#`
//! comments and blank lines ignored). A request presents its key as `Authorization: Bearer KEY`
//! (over gRPC, the `authorization` metadata); the key's name goes in the access log, the key
//! never does. The file is read again when it changes (every `reload_poll_ms`); a file that does
//! not parse is refused with its line number and the keys in force stay. Separate from the admin
//! token, which guards the routes that change what is served.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

/// Why a request's key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("this endpoint needs an API key: send Authorization: Bearer <key>")]
    Missing,
    #[error("the API key is not valid")]
    Wrong,
}

/// The keys in force.
pub struct ApiKeys {
    path: PathBuf,
    /// (name, key) pairs.
    keys: ArcSwap<Vec<(String, String)>>,
}

impl ApiKeys {
    /// Reads the file; an unreadable or malformed file is an error (the server does not start).
    pub fn open(path: &Path) -> anyhow::Result<ApiKeys> {
        let keys = read(path)?;
        tracing::info!("{} API keys from {}", keys.len(), path.display());
        Ok(ApiKeys {
            path: path.to_path_buf(),
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// The name of the key in an `Authorization` value. Every key is compared, in constant time
    /// in its content, whatever matches first.
    pub fn check(&self, authorization: Option<&str>) -> Result<String, KeyError> {
        let given = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(KeyError::Missing)?;
        let keys = self.keys.load();
        let mut found = None;
        for (name, key) in keys.iter() {
            if same(given.as_bytes(), key.as_bytes()) {
                found = Some(name.clone());
            }
        }
        found.ok_or(KeyError::Wrong)
    }

    /// Reads the file again every `every` while it changes (never if zero).
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        if every.is_zero() {
            return;
        }
        let keys = self.clone();
        tokio::spawn(async move {
            let mut last = modified(&keys.path);
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                let now = modified(&keys.path);
                if now == last {
                    continue;
                }
                last = now;
                match read(&keys.path) {
                    Ok(fresh) => {
                        tracing::info!("API keys reloaded: {} keys", fresh.len());
                        keys.keys.store(Arc::new(fresh));
                    }
                    Err(e) => {
                        tracing::error!("API keys not reloaded, the previous keys stay: {e:#}")
                    }
                }
            }
        });
    }
}

fn modified(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// `NAME KEY` a line; names and keys unique, keys at least 16 characters.
fn read(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, key] = fields[..] else {
            return Err(format!("line {}: expected NAME KEY", i + 1));
        };
        if key.len() < 16 {
            return Err(format!(
                "line {}: the key of {name:?} is shorter than 16 characters",
                i + 1
            ));
        }
        if keys.iter().any(|(n, k)| n == name || k == key) {
            return Err(format!(
                "line {}: {name:?} or its key is listed twice",
                i + 1
            ));
        }
        keys.push((name.to_string(), key.to_string()));
    }
    if keys.is_empty() {
        return Err("no keys: every request would be refused".into());
    }
    Ok(keys)
}

/// Equal bytes, in time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_format_and_its_refusals() {
        let keys =
            parse("# team keys\nalice 0123456789abcdef\n\nbob  fedcba9876543210fedc\n").unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], ("bob".into(), "fedcba9876543210fedc".into()));
        for (bad, why) in [
            ("alice", "expected NAME KEY"),
            ("alice short", "shorter than 16"),
            ("a 0123456789abcdef\na 1123456789abcdef", "listed twice"),
            ("a 0123456789abcdef\nb 0123456789abcdef", "listed twice"),
            ("# nothing\n", "no keys"),
        ] {
            assert!(parse(bad).unwrap_err().contains(why), "{bad:?}");
        }
    }

    #[test]
    fn a_key_is_found_by_its_bearer_value() {
        let keys = ApiKeys {
            path: PathBuf::new(),
            keys: ArcSwap::from_pointee(parse("alice 0123456789abcdef").unwrap()),
        };
        assert_eq!(
            keys.check(Some("Bearer 0123456789abcdef")).unwrap(),
            "alice"
        );
        assert!(matches!(keys.check(None), Err(KeyError::Missing)));
        assert!(matches!(
            keys.check(Some("Basic x")),
            Err(KeyError::Missing)
        ));
        assert!(matches!(
            keys.check(Some("Bearer 0123456789abcdeF")),
            Err(KeyError::Wrong)
        ));
    }
}
