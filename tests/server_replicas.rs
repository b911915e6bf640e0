//! Replicas that agree through a real PostgreSQL (Debian's `postgresql` package, started here
//! on a throwaway folder and a loopback port; nothing is mocked): three `proco-serve` processes
//! with `prototype_store = postgres://...`, each with its own copy of the model folder.
//!
//! - a class taught through A is served by B and C; a second model of the repository, loaded by
//!   every replica, has its own row in the store and is left alone;
//! - 20 learning requests sent to A and B at once all land: the class's sufficient statistics
//!   in the store match, to 1e-12, one process learning the same 20 images in turn;
//! - a rollback on C reaches A and B, and the history names each version's parent; so does a
//!   new file pushed into A's folder with `POST /admin/reload`;
//! - PostgreSQL stopped for 10 s under load: no classify request fails, readiness stays 200,
//!   the gauge says the store is down, admin changes get 503; after the restart every replica
//!   converges on the store's version without being restarted;
//! - a replica killed with SIGKILL mid-change serves the store's version when it comes back;
//! - a wrong password, a missing database and a bad URL stop the start with a message that
//!   names the setting and never shows the password.
//!
//! Ignored by a plain `cargo test` (it needs PostgreSQL); `bash .ci/run` installs PostgreSQL and
//! runs it with `cargo test --test server_replicas -- --ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, copy_model_into, fixture, fixture_files, get_json, metrics_text, Server};
use serde_json::Value;

const TOKEN: &str = "replica-test";
const PASSWORD: &str = "replica-test-password";
const MODEL: &str = "cifar10-lt-proco-resnet32";
/// A second model of the repository, loaded by every replica.
const OTHER: &str = "cifar10-lt-la";

/// A PostgreSQL cluster of its own: initdb in a temporary folder, started on a free port.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = postgres_bin().expect(
            "PostgreSQL is not installed (Debian: apt-get install postgresql; bash .ci/run installs it)",
        );
        let dir = tempfile::Builder::new()
            .prefix("proco-pg")
            .tempdir()
            .unwrap();
        // The cluster runs as the `postgres` user when the test runs as root (initdb refuses
        // root), so that user must be able to write here.
        chmod(dir.path(), 0o777);
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        chmod(&pwfile, 0o644);
        let pg = Postgres {
            port: free_port(),
            dir,
            bin,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "proco",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--auth",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.start_server();
        pg.psql("postgres", "CREATE DATABASE proco");
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        self.url_with(PASSWORD, "proco")
    }

    fn url_with(&self, password: &str, database: &str) -> String {
        format!(
            "postgres://proco:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    fn stop_server(&self, mode: &str) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    /// Runs one SQL statement; its output, tuples only.
    fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                &self.url_with(PASSWORD, database),
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The store's current document of the model.
    fn current_document(&self) -> Value {
        let text = self.psql(
            "proco",
            &format!(
                "SELECT v.document FROM proco_prototype_current c JOIN proco_prototype_versions v \
                 ON v.id = c.version_id WHERE c.model = '{MODEL}'"
            ),
        );
        serde_json::from_str(&text).unwrap()
    }

    fn current_version(&self) -> String {
        self.psql(
            "proco",
            &format!("SELECT version FROM proco_prototype_current WHERE model = '{MODEL}'"),
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"])
        }));
    }
}

fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A replica: the bundled model copied into `dir`, and the repository's LA baseline beside it
/// (the store keys by model name), prototypes in the shared store. One image per batch, so that
/// an image's feature does not depend on what it was batched with.
fn replica(dir: &Path, store: &str) -> Server {
    Server::start(&[
        "--model-dir",
        dir.to_str().unwrap(),
        "--load-models",
        OTHER,
        "--prototype-store",
        store,
        "--admin-token",
        TOKEN,
        "--max-batch-size",
        "1",
        "--prototype-history",
        "50",
    ])
}

/// Teaches `label` one image; (status, answer).
fn learn(server: &Server, label: &str, image: &str) -> (u16, Value) {
    let r = client()
        .post(server.url(&format!(
            "/admin/prototypes/examples?label={label}&create=true"
        )))
        .bearer_auth(TOKEN)
        .header("content-type", "image/jpeg")
        .body(fixture(image))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn served_version(server: &Server) -> String {
    let (_, model) = get_json(&client(), server, "/v1/model");
    model["prototypes_version"].as_str().unwrap().to_string()
}

/// Waits until every replica serves `version`; panics with what they serve after `limit`.
fn wait_for(replicas: &[&Server], version: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let served: Vec<String> = replicas.iter().map(|s| served_version(s)).collect();
        if served.iter().all(|v| v == version) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "replicas serve {served:?}, not {version}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The class's count and vector sum in a prototypes document.
fn statistics(doc: &Value, label: &str) -> (f64, Vec<f64>) {
    let class = doc["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == label)
        .unwrap_or_else(|| panic!("no class {label}"));
    let sum = class["sum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    (class["count"].as_f64().unwrap(), sum)
}

#[test]
#[ignore = "needs PostgreSQL (Debian's postgresql package); bash .ci/run installs it and runs this test"]
fn replicas_agree_through_postgres() {
    let pg = Postgres::start();
    let store = pg.url();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    dirs.iter().for_each(|d| copy_model_into(d.path()));
    let a = replica(dirs[0].path(), &store);
    let b = replica(dirs[1].path(), &store);
    let mut c = replica(dirs[2].path(), &store);
    let seeded = pg.current_version();
    wait_for(&[&a, &b, &c], &seeded, Duration::from_secs(5));
    let other_version = || {
        pg.psql(
            "proco",
            &format!("SELECT version FROM proco_prototype_current WHERE model = '{OTHER}'"),
        )
    };
    let other_seeded = other_version();
    assert!(
        !other_seeded.is_empty(),
        "each model has its own current row"
    );
    let model: Value = get_json(&client(), &a, "/v1/model").1;
    assert_eq!(
        model["prototype_store"],
        format!("postgres://proco@127.0.0.1:{}/proco", pg.port),
        "the URL is shown without its password"
    );
    let images = fixture_files();

    // A class taught through A is served by B and C.
    let (status, taught) = learn(&a, "heron", &images[0]);
    assert_eq!(status, 200, "{taught}\n{}", a.logs());
    let taught = taught["version"].as_str().unwrap().to_string();
    assert_eq!(pg.current_version(), taught);
    wait_for(&[&b, &c], &taught, Duration::from_secs(5));
    let labels: Value = get_json(&client(), &b, "/v1/model").1;
    assert!(labels["labels"]
        .as_array()
        .unwrap()
        .contains(&"heron".into()));
    assert_eq!(
        other_version(),
        other_seeded,
        "a change of one model leaves the other alone"
    );
    let other: Value = get_json(&client(), &c, &format!("/v1/models/{OTHER}")).1;
    assert_eq!(other["prototypes_version"], other_seeded.as_str());

    // 20 learning requests to A and B at once, into a class that neither has yet: every one lands.
    let batch: Vec<String> = images[1..21].to_vec();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let sent: Vec<_> = batch
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let (server, image) = (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                image.clone(),
            );
            std::thread::spawn(move || learn(&server, "egret", &image))
        })
        .collect();
    for handle in sent {
        let (status, answer) = handle.join().unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    let together = pg.current_version();
    wait_for(&[&a, &b, &c], &together, Duration::from_secs(5));
    let (count, sum) = statistics(&pg.current_document(), "egret");
    assert_eq!(count, 20.0, "all 20 images are in the class");

    // The same 20, learned in turn by one process with the file store, from the same start.
    let alone_dir = tempfile::tempdir().unwrap();
    copy_model_into(alone_dir.path());
    let alone = Server::start(&[
        "--model-dir",
        alone_dir.path().to_str().unwrap(),
        "--admin-token",
        TOKEN,
        "--max-batch-size",
        "1",
    ]);
    assert_eq!(learn(&alone, "heron", &images[0]).0, 200);
    for image in &batch {
        assert_eq!(learn(&alone, "egret", image).0, 200);
    }
    let file: Value =
        serde_json::from_slice(&std::fs::read(alone_dir.path().join("prototypes.json")).unwrap())
            .unwrap();
    drop(alone);
    let (alone_count, alone_sum) = statistics(&file, "egret");
    assert_eq!(alone_count, count);
    let worst = sum
        .iter()
        .zip(&alone_sum)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-12, "sums differ by {worst:e}");
    println!("20 concurrent learning requests: sum within {worst:e} of learning them in turn");

    // A rollback on C reaches A and B; the history names the version each one replaced.
    let r = client()
        .post(c.url(&format!("/admin/prototypes/rollback?version={taught}")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(pg.current_version(), taught);
    wait_for(&[&a, &b, &c], &taught, Duration::from_secs(5));
    let history: Value = get_json(&client(), &a, "/v1/prototypes/versions").1;
    let newest = &history["versions"][0];
    assert_eq!(newest["cause"], "rollback", "{history}");
    assert_eq!(newest["parent"], together.as_str());
    assert_eq!(newest["version"], taught.as_str());

    // A new file pushed into A's folder and reloaded by the admin call reaches B and C.
    let file = dirs[0].path().join("prototypes.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let t = doc["temperatures"]["vmf"].as_f64().unwrap();
    doc["temperatures"]["vmf"] = serde_json::json!(t * 1.01);
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let r = client()
        .post(a.url("/admin/reload"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let pushed: Value = r.json().unwrap();
    let pushed = pushed["version"].as_str().unwrap().to_string();
    assert_eq!(pg.current_version(), pushed);
    wait_for(&[&a, &b, &c], &pushed, Duration::from_secs(5));
    let history: Value = get_json(&client(), &b, "/v1/prototypes/versions").1;
    assert_eq!(history["versions"][0]["cause"], "file");
    assert_eq!(history["versions"][0]["parent"], taught.as_str());

    postgres_stopped_under_load(&pg, [&a, &b, &c]);

    // Killed mid-change and restarted: it serves the store's version, not its folder's file.
    let killer = {
        let pid = c.pid();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        })
    };
    let r = client()
        .post(c.url("/admin/prototypes/examples?label=ibis&create=true"))
        .bearer_auth(TOKEN)
        .header("content-type", "image/jpeg")
        .body(fixture(&images[30]))
        .send();
    killer.join().unwrap();
    assert!(c.wait_exit(Duration::from_secs(10)).is_some());
    println!(
        "the change in flight when C was killed: {}",
        r.map_or_else(|e| e.to_string(), |r| r.status().to_string())
    );
    c = replica(dirs[2].path(), &store);
    let current = pg.current_version();
    wait_for(&[&a, &b, &c], &current, Duration::from_secs(5));
    assert!(c.logs().contains("from the shared store"), "{}", c.logs());
}

/// `proco_prototype_store_up` of every model the replica serves.
fn store_up(server: &Server) -> Vec<f64> {
    let values: Vec<f64> = metrics_text(server)
        .lines()
        .filter(|l| l.starts_with("proco_prototype_store_up{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(values.len(), 2, "one series per model");
    values
}

/// PostgreSQL down for 10 s while clients classify on every replica.
fn postgres_stopped_under_load(pg: &Postgres, replicas: [&Server; 3]) {
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let image = fixture(&fixture_files()[0]);
    let load: Vec<_> = replicas
        .iter()
        .map(|s| {
            let (url, stop, answered, failed, image) = (
                s.url("/v1/classify"),
                stop.clone(),
                answered.clone(),
                failed.clone(),
                image.clone(),
            );
            std::thread::spawn(move || {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(&url)
                        .header("content-type", "image/jpeg")
                        .body(image.clone())
                        .send();
                    match r {
                        Ok(r) if r.status() == 200 => answered.fetch_add(1, Ordering::Relaxed),
                        other => {
                            let why = match other {
                                Ok(r) => {
                                    format!("{}: {}", r.status(), r.text().unwrap_or_default())
                                }
                                Err(e) => e.to_string(),
                            };
                            eprintln!("classify failed while PostgreSQL was down: {why}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let down_at = Instant::now();
    pg.stop_server("fast");
    // The replicas notice (their listening connections close) and say so.
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in replicas {
        while store_up(s).iter().any(|v| *v != 0.0) {
            assert!(Instant::now() < deadline, "the gauge still says up");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            client()
                .get(s.url("/health/ready"))
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    let (status, refused) = learn(replicas[0], "heron", &fixture_files()[22]);
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "store_unavailable");
    assert!(!refused.to_string().contains(PASSWORD));
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down_at.elapsed()));
    pg.start_server();

    // Back: a change through B lands, and every replica converges on the store's version.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer) = learn(replicas[1], "heron", &fixture_files()[23]);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let current = pg.current_version();
    wait_for(&replicas, &current, Duration::from_secs(10));
    // Every model's follower is back (each retries on its own, every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in replicas {
        while store_up(s).iter().any(|v| *v != 1.0) {
            assert!(Instant::now() < deadline, "a follower is still away");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.into_iter().for_each(|t| t.join().unwrap());
    let (answered, failed) = (
        answered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!("PostgreSQL down 10 s: {answered} classify requests answered, {failed} failed");
    assert!(answered > 0);
    assert_eq!(failed, 0);
}

#[test]
#[ignore = "needs PostgreSQL (Debian's postgresql package); bash .ci/run installs it and runs this test"]
fn store_errors_at_start_name_the_setting() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    copy_model_into(dir.path());
    let port = free_port();
    for (url, expected) in [
        (
            pg.url_with("wrong-password", "proco"),
            "password authentication failed",
        ),
        (
            pg.url_with(PASSWORD, "missing"),
            "database \"missing\" does not exist",
        ),
        (
            format!("postgres://proco:{PASSWORD}@127.0.0.1:{port}/proco"),
            "refused",
        ),
        (
            "postgres://proco@host:notaport/x".to_string(),
            "not a valid PostgreSQL URL",
        ),
        (
            "mysql://proco@localhost/x".to_string(),
            "expected \"file\" or a PostgreSQL URL",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_proco-serve"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "off"])
            .args(["--model-dir", dir.path().to_str().unwrap()])
            .args(["--prototype-store", &url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: started");
        assert!(
            stderr.contains("prototype_store") && stderr.contains(expected),
            "{url}: {stderr}"
        );
        for secret in [PASSWORD, "wrong-password"] {
            assert!(!stderr.contains(secret), "the password is shown: {stderr}");
        }
    }
}
