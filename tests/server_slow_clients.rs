//! Slow and abusive clients: a slowloris (many connections trickling their headers) is cut off
//! after header_read_timeout_ms and cannot keep others from being served; connections over
//! max_connections are closed at once; a body trickled past body_read_timeout_ms gets 408.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{any_jpeg, client, metric, Server};

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Whether the server closed the connection within `within` (EOF or reset).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error answer (408) before the close is fine
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

#[test]
fn slowloris_is_cut_off_and_others_are_served() {
    let server = Server::start(&["--header-read-timeout-ms", "600", "--max-connections", "6"]);
    let started = Instant::now();
    // Seven trickling connections against a cap of six. Which one is over the cap depends on
    // when the readiness check's own connection is seen closed, so count rather than pick.
    let mut slow: Vec<TcpStream> = (0..7)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&server)).unwrap();
            s.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let closed_at_once = slow
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(50)))
        .filter(|closed| *closed)
        .count();
    assert!(
        closed_at_once >= 1,
        "no connection over max_connections was closed at once"
    );
    // Trickle a byte now and then: the header timeout still cuts each one off.
    for s in slow.iter_mut() {
        let _ = s.write_all(b"a");
    }
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(3)),
            "slow connection {i} was kept open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    // Room again: a normal client is served.
    let (status, _) = common::classify(&client(), &server, "", "image/jpeg", any_jpeg());
    assert_eq!(status, 200);
    let text = common::metrics_text(&server);
    assert!(
        metric(&text, "proco_connections_refused_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
}

#[test]
fn a_trickled_body_gets_408() {
    let server = Server::start(&["--body-read-timeout-ms", "500"]);
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    s.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\nab")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n")
            && String::from_utf8_lossy(&answer).contains("request_timeout")
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}
