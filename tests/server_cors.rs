//! Cross-origin requests (`cors_allow_origin`): off by default (a preflight gets 405, no
//! `Access-Control-Allow-Origin`); with a list, preflights from a listed origin are answered and
//! its requests carry the header (and expose the request id), other origins get none. Chromium
//! calling the server from a page on another origin is in tests/page.

mod common;

use common::{any_jpeg, client, Server};

const APP: &str = "http://app.example";

fn preflight(server: &Server, origin: &str) -> reqwest::blocking::Response {
    client()
        .request(reqwest::Method::OPTIONS, server.url("/v1/classify"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .unwrap()
}

fn allowed(r: &reqwest::blocking::Response) -> Option<String> {
    r.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string())
}

#[test]
fn off_by_default() {
    let server = Server::start(&[]);
    let r = preflight(&server, APP);
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(allowed(&r), None);
}

#[test]
fn listed_origins_only() {
    let server = Server::start(&[
        "--cors-allow-origin",
        &format!("{APP}, http://other.example"),
    ]);
    let r = preflight(&server, APP);
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(allowed(&r).as_deref(), Some(APP));
    let methods = r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(methods.contains("POST"), "{methods}");

    let r = client()
        .post(server.url("/v1/classify"))
        .header("origin", APP)
        .header("content-type", "image/jpeg")
        .body(any_jpeg())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(allowed(&r).as_deref(), Some(APP));
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(exposed.contains("x-request-id"), "{exposed}");

    let r = preflight(&server, "http://evil.example");
    assert_eq!(allowed(&r), None, "an origin not listed is not allowed");
}

#[test]
fn any_origin() {
    let server = Server::start(&["--cors-allow-origin", "*"]);
    let r = client()
        .get(server.url("/v1/model"))
        .header("origin", "http://anywhere.example")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(allowed(&r).as_deref(), Some("*"));
}
