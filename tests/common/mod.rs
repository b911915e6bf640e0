//! Shared helpers of the `server_*` integration tests: start the real `proco-serve` binary
//! on an ephemeral port with the real model, wait until it is ready, talk HTTP to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/cifar10-lt");
pub const PARITY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parity");

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Server {
    /// Starts `proco-serve --listen 127.0.0.1:0 <args>` and waits for `/health/ready`.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let log_dir = tempfile::tempdir().unwrap();
        let log_path = log_dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_proco-serve"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--log-level",
                "info",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // The tests decide the configuration; nothing leaks in from the caller's shell.
        for (key, _) in std::env::vars() {
            if key.starts_with("PROCO_") {
                cmd.env_remove(key);
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cannot start proco-serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep draining
        });
        let mut server = Server {
            child,
            base: String::new(),
            log_path,
            _log_dir: log_dir,
        };
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => panic!("server printed no address; log:\n{}", server.logs()),
        };
        let addr = line
            .strip_prefix("proco-serve listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        println!("server under test: {addr}");
        server.base = format!("http://{addr}");
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited with {status}; log:\n{}", self.logs());
            }
            if let Ok(r) = client.get(self.url("/health/ready")).send() {
                if r.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("server not ready after 120 s; log:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The parity fixture manifest (written by the training pipeline).
pub fn parity_manifest() -> serde_json::Value {
    let path = Path::new(PARITY_DIR).join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Every parity fixture image's file name, in the manifest's order.
pub fn fixture_files() -> Vec<String> {
    parity_manifest()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file"].as_str().unwrap().to_string())
        .collect()
}

/// Bytes of one parity fixture image.
pub fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(Path::new(PARITY_DIR).join(file)).unwrap()
}

/// A multipart form of parity-fixture images (entries of the parity manifest), part `img{i}`
/// with the fixture's file name, in order.
pub fn fixture_form(images: &[serde_json::Value]) -> reqwest::blocking::multipart::Form {
    let mut form = reqwest::blocking::multipart::Form::new();
    for (i, img) in images.iter().enumerate() {
        let file = img["file"].as_str().unwrap();
        let part = reqwest::blocking::multipart::Part::bytes(fixture(file))
            .file_name(file.to_string())
            .mime_str("image/jpeg")
            .unwrap();
        form = form.part(format!("img{i}"), part);
    }
    form
}

/// The first parity fixture image's bytes.
pub fn any_jpeg() -> Vec<u8> {
    let m = parity_manifest();
    fixture(m["images"][0]["file"].as_str().unwrap())
}

/// POSTs one image body with a content type; returns (status, JSON body).
pub fn classify(
    client: &reqwest::blocking::Client,
    server: &Server,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let r = client
        .post(server.url(&format!("/v1/classify{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("response is not JSON ({status}): {text}"));
    (status, json)
}

/// Copies the bundled model into a fresh temporary directory (for reload tests).
pub fn copy_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_model_into(dir.path());
    dir
}

/// Copies the bundled model's files (not its subfolders) into `dir`, which must exist.
pub fn copy_model_into(dir: &Path) {
    for entry in std::fs::read_dir(MODEL_DIR).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file + rename), as deployment tools do.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// GET a path and parse JSON.
pub fn get_json(
    client: &reqwest::blocking::Client,
    server: &Server,
    path: &str,
) -> (u16, serde_json::Value) {
    let r = client.get(server.url(path)).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

/// The server's `/metrics` text.
pub fn metrics_text(server: &Server) -> String {
    client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The value of one sample in Prometheus text, e.g. `metric(text, "proco_x_total{result=\"ok\"}")`.
/// Every series about a model carries its `model` label; a `series` that does not name one
/// matches any model's (these tests serve one).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    let named = series.contains("model=");
    text.lines()
        .find_map(|l| {
            let line = if named {
                l.to_string()
            } else {
                without_model_label(l)
            };
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
}

/// A sample line with its `model="..."` label taken out.
fn without_model_label(line: &str) -> String {
    let Some(start) = line.find("model=\"") else {
        return line.to_string();
    };
    let Some(len) = line[start + 7..].find('"') else {
        return line.to_string();
    };
    // Labels are written in name order: the model label may be first, in the middle or last.
    let (mut start, mut end) = (start, start + 7 + len + 1);
    if line[end..].starts_with(',') {
        end += 1;
    } else if line[..start].ends_with(',') {
        start -= 1;
    }
    let out = format!("{}{}", &line[..start], &line[end..]);
    out.replace("{}", "")
}
