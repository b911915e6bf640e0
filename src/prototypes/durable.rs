//! Prototypes on disk: atomic, durable writes, and the history of versions served.
//!
//! A write goes to a temporary file in the same directory, is `fsync`ed, renamed over the
//! target, and the directory is `fsync`ed, so that after a crash at any moment the target holds
//! either the old bytes or the new ones, never a torn file, and an acknowledged write survives.
//!
//! The history lives beside the prototypes file, in `<stem>.versions/` (`prototypes.versions/`
//! for `prototypes.json`): one `<version>.json` per kept version and `history.json`, the list of
//! changes (version, time, cause, class count), oldest first, trimmed to the last `keep`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Writes `bytes` to `path` atomically and durably (see the module documentation).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Why a version was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// Read from the prototypes file (at start, or on a reload).
    File,
    /// Examples were learned.
    Learned,
    /// A class was removed.
    Deleted,
    /// An earlier version was served again.
    Rollback,
}

impl Cause {
    /// The name stored (in `history.json` and the shared store).
    pub fn key(self) -> &'static str {
        match self {
            Cause::File => "file",
            Cause::Learned => "learned",
            Cause::Deleted => "deleted",
            Cause::Rollback => "rollback",
        }
    }

    pub fn from_key(key: &str) -> Option<Cause> {
        [Cause::File, Cause::Learned, Cause::Deleted, Cause::Rollback]
            .into_iter()
            .find(|c| c.key() == key)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::File => "read from the file",
            Cause::Learned => "learned examples",
            Cause::Deleted => "removed a class",
            Cause::Rollback => "rolled back",
        })
    }
}

/// One entry of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionEntry {
    pub version: String,
    /// UTC, RFC 3339.
    pub time: String,
    pub cause: Cause,
    pub classes: usize,
    /// The version it replaced (the shared store records it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The replica that made it, host name and process id (the shared store records it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// The kept versions of one prototypes file.
pub struct History {
    dir: PathBuf,
    keep: usize,
}

impl History {
    /// The history of `prototypes_path`, keeping the last `keep` versions.
    pub fn beside(prototypes_path: &Path, keep: usize) -> History {
        let stem = prototypes_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("prototypes");
        let parent = prototypes_path.parent().unwrap_or(Path::new("."));
        History {
            dir: parent.join(format!("{stem}.versions")),
            keep: keep.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entries, oldest first (none when nothing was recorded yet).
    pub fn list(&self) -> io::Result<Vec<VersionEntry>> {
        match fs::read(self.dir.join("history.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Keeps `bytes` as `version` and appends an entry; drops versions beyond `keep`.
    pub fn record(
        &self,
        bytes: &[u8],
        version: &str,
        cause: Cause,
        classes: usize,
    ) -> io::Result<VersionEntry> {
        fs::create_dir_all(&self.dir)?;
        let file = self.file_of(version)?;
        if !file.is_file() {
            write_atomically(&file, bytes)?;
        }
        let mut entries = self.list()?;
        let entry = VersionEntry {
            version: version.to_string(),
            time: rfc3339(SystemTime::now()),
            cause,
            classes,
            parent: None,
            replica: None,
        };
        entries.push(entry.clone());
        let dropped: Vec<VersionEntry> = if entries.len() > self.keep {
            entries.drain(..entries.len() - self.keep).collect()
        } else {
            Vec::new()
        };
        let json = serde_json::to_vec_pretty(&entries).expect("entries are plain JSON");
        write_atomically(&self.dir.join("history.json"), &json)?;
        for old in dropped {
            if !entries.iter().any(|e| e.version == old.version) {
                let _ = fs::remove_file(self.file_of(&old.version)?);
            }
        }
        Ok(entry)
    }

    /// The bytes of a kept version.
    pub fn read(&self, version: &str) -> io::Result<Vec<u8>> {
        fs::read(self.file_of(version)?)
    }

    /// The file of a version id; ids are hex digits (they never name a path).
    fn file_of(&self, version: &str) -> io::Result<PathBuf> {
        if version.is_empty() || !version.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{version:?} is not a version id"),
            ));
        }
        Ok(self.dir.join(format!("{version}.json")))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (days from the epoch to a civil date: Hinnant's algorithm).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_157_296), "2026-12-01T20:34:56Z");
    }

    #[test]
    fn history_keeps_the_last_versions_and_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::beside(&dir.path().join("prototypes.json"), 2);
        assert!(h.list().unwrap().is_empty());
        for (v, cause) in [
            ("aa", Cause::File),
            ("bb", Cause::Learned),
            ("cc", Cause::Rollback),
        ] {
            h.record(v.as_bytes(), v, cause, 3).unwrap();
        }
        let list = h.list().unwrap();
        assert_eq!(
            list.iter().map(|e| e.version.as_str()).collect::<Vec<_>>(),
            ["bb", "cc"]
        );
        assert_eq!(list[1].cause, Cause::Rollback);
        assert_eq!(h.read("cc").unwrap(), b"cc");
        assert!(h.read("aa").is_err(), "dropped beyond keep");
        assert!(h.read("../x").is_err());
        assert!(h.dir().ends_with("prototypes.versions"));
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
