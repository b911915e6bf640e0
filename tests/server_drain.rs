//! Graceful drain: SIGTERM under load turns readiness to 503 at once, the listener stays open
//! for `drain_delay_ms`, every request sent before the signal is answered 200, and the process
//! exits 0 once the requests in flight are done.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{any_jpeg, client, Server};

#[test]
fn sigterm_under_load_drains_and_exits_cleanly() {
    let mut server = Server::start(&["--drain-delay-ms", "1500", "--shutdown-timeout-ms", "20000"]);
    let url = server.url("/v1/classify");
    let stop = Arc::new(AtomicBool::new(false));
    // (sent at, status or error) of every request.
    type Seen = Vec<(Instant, Result<u16, String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (url, stop, seen, image) = (url.clone(), stop.clone(), seen.clone(), any_jpeg());
            std::thread::spawn(move || {
                let c = client();
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let r = c
                        .post(&url)
                        .header("content-type", "image/jpeg")
                        .body(image.clone())
                        .send()
                        .map(|r| r.status().as_u16())
                        .map_err(|e| e.to_string());
                    let failed = r.is_err();
                    seen.lock().unwrap().push((sent, r));
                    if failed {
                        break; // the listener has closed
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));

    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    // Readiness says so at once, while the listener still answers.
    let c = client();
    let mut draining = None;
    while signalled.elapsed() < Duration::from_millis(1200) {
        if let Ok(r) = c.get(server.url("/health/ready")).send() {
            if r.status() == 503 {
                draining = Some(r.json::<serde_json::Value>().unwrap());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let draining =
        draining.unwrap_or_else(|| panic!("readiness never turned 503; log:\n{}", server.logs()));
    assert_eq!(draining["status"], "draining", "{draining}");

    let status = server.wait_exit(Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.join().unwrap();
    }
    let status =
        status.unwrap_or_else(|| panic!("the server did not exit; log:\n{}", server.logs()));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.logs()
    );

    let seen = seen.lock().unwrap();
    let before: Vec<_> = seen.iter().filter(|(sent, _)| *sent < signalled).collect();
    assert!(
        before.len() > 10,
        "load before the signal: {} requests",
        before.len()
    );
    for (_, r) in &before {
        assert_eq!(
            r.as_ref().ok(),
            Some(&200),
            "a request sent before SIGTERM: {r:?}"
        );
    }
    // During the drain delay the listener still serves.
    let during = seen
        .iter()
        .filter(|(sent, r)| {
            *sent > signalled
                && sent.duration_since(signalled) < Duration::from_millis(1000)
                && r.is_ok()
        })
        .count();
    assert!(during > 0, "no request was answered during the drain delay");
    assert!(
        server.logs().contains("no longer accepting connections"),
        "{}",
        server.logs()
    );
}
