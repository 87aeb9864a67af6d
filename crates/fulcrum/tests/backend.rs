//! `fulcrum backend`, black-box: every endpoint DESIGN.md promises.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{backend_counters as counters, read_response, Backend};

#[tokio::test]
async fn endpoints() {
    let b = Backend::start("web1");
    let url = |p: &str| format!("http://{}{p}", b.addr);
    let client = reqwest::Client::new();

    let r = client.get(url("/any/path?q=1")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backend"], "web1");
    assert_eq!(r.text().await.expect("body"), "web1\n");

    assert_eq!(client.get(url("/healthz")).send().await.expect("healthz").status(), 200);
    let r = client.get(url("/status/503")).send().await.expect("status");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-backend"], "web1");
    assert_eq!(client.get(url("/status/abc")).send().await.expect("bad").status(), 400);
    assert_eq!(client.get(url("/status/99")).send().await.expect("bad").status(), 400);

    let start = std::time::Instant::now();
    assert_eq!(client.get(url("/delay/200")).send().await.expect("delay").status(), 200);
    assert!(start.elapsed() >= std::time::Duration::from_millis(200));

    let r = client.get(url("/bytes/123457")).send().await.expect("bytes");
    assert_eq!(r.bytes().await.expect("body").len(), 123_457);

    let r = client.post(url("/upload")).body(vec![1u8; 100_000]).send().await.expect("post");
    assert_eq!(r.headers()["x-body-bytes"], "100000");
}

#[test]
fn keeps_connections_alive() {
    let b = Backend::start("web1");
    let mut s = TcpStream::connect(b.addr).expect("connect");
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        assert!(read_response(&mut s).ends_with("web1\n"));
    }
}

#[test]
fn counts_connections_and_requests() {
    let b = Backend::start("web1");
    // The counters are read over one connection of their own, kept open, so
    // that reading them adds one request and no connection.
    let mut reader = TcpStream::connect(b.addr).expect("connect");
    let (conns0, reqs0) = counters(&mut reader);
    let mut clients =
        [TcpStream::connect(b.addr).expect("connect"), TcpStream::connect(b.addr).expect("connect")];
    for i in [0, 1, 0] {
        clients[i].write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        assert!(read_response(&mut clients[i]).ends_with("web1\n"));
    }
    let (conns1, reqs1) = counters(&mut reader);
    assert_eq!(conns1 - conns0, 2, "two new connections");
    assert_eq!(reqs1 - reqs0, 3 + 1, "three requests plus the read of the counters");
}

#[test]
fn a_taken_address_is_an_error() {
    let b = Backend::start("web1");
    let out = std::process::Command::new(common::bin())
        .args(["backend", "--listen", &b.addr.to_string(), "--name", "again"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&b.addr.to_string()));
}
