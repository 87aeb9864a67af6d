//! http regressions: each test reproduces a bug found in review of the data
//! path (pooling after HEAD, early responses, `gzip, chunked`, Host as a
//! connection option, Content-Length on 204, max_idle_per_backend = 0).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, read_response, Backend, Fulcrum, Recorder};

/// A backend whose every connection runs `handler` on its own thread.
fn scripted(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for s in listener.incoming().take(64) {
            let Ok(s) = s else { continue };
            let h = handler.clone();
            std::thread::spawn(move || h(s));
        }
    });
    addr
}

/// Reads one message head (through CRLFCRLF) byte by byte; what was read on EOF or timeout.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads what arrives within `limit` (or until EOF).
fn read_for(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        let left = limit.saturating_sub(start.elapsed()).max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// `max_idle_per_backend = 0` is accepted by the config, but the first
/// keep-alive response makes `PoolRuntime::release` call `Vec::remove(0)` on
/// an empty vector: the session task panics and the client connection dies
/// after every response.
#[test]
fn max_idle_zero_does_not_panic_or_break_keep_alive() {
    let b = Backend::start("b");
    let f = Fulcrum::start(&config("http", &[("b", b.addr, 1)], "", "max_idle_per_backend = 0"), 1);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    for i in 0..2 {
        s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).expect("write");
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "request {i} on a kept-alive connection got {head:?}");
        let mut body = [0u8; 2];
        s.read_exact(&mut body).expect("body");
    }
    assert!(!f.proc.stderr().contains("panicked"), "{}", f.proc.stderr());
}

/// A backend may answer before it has read the whole request body and then
/// stream the rest of the exchange (an echo, a progress stream, gRPC-like
/// bidirectional streaming). Fulcrum drops the upload the moment the response
/// head arrives, so the body never reaches the backend: the exchange hangs
/// until `backend_response` and the response is cut.
#[test]
fn upload_continues_after_an_early_response_head() {
    let echo = scripted(|mut s| {
        let head = read_head(&mut s);
        if head.is_empty() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let mut body = [0u8; 4];
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        if s.read_exact(&mut body).is_ok() {
            let _ = s.write_all(b"4\r\n");
            let _ = s.write_all(&body);
            let _ = s.write_all(b"\r\n0\r\n\r\n");
        }
        let _ = read_for(&mut s, Duration::from_secs(5));
    });
    let timeouts = "[service.timeouts]\nbackend_response = \"3s\"";
    let f = Fulcrum::start(&config("http", &[("echo", echo, 1)], timeouts, ""), 1);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n").expect("head");
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    s.write_all(b"ping").expect("body");
    let body = read_for(&mut s, Duration::from_secs(2));
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("ping"), "the request body never reached the backend; client got {body:?}");
}

/// `Connection: host` makes the Host field hop-by-hop, so it is stripped, and
/// `write_request_head` only adds one when the *client's* head had none: the
/// backend gets an HTTP/1.1 request without Host (which it must answer 400,
/// or route to a default virtual host).
#[test]
fn connection_option_cannot_strip_host() {
    let rec = Recorder::start();
    let f = Fulcrum::start(&config("http", &[("r", rec.addr, 1)], "", ""), 1);
    let out = common::raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: host, close\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let heads = rec.heads();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].to_ascii_lowercase().contains("\r\nhost: "), "forwarded without Host: {:?}", heads[0]);
}

/// `Transfer-Encoding: gzip, chunked` is a chunked-framed response (RFC 9112
/// §6.3: chunked is the final coding). Fulcrum classifies it as read-until-close,
/// strips the Transfer-Encoding field and passes the raw chunk framing on as
/// the body, so the client cannot decode it, and then waits for the backend to
/// close its kept-alive connection (up to `backend_response`).
#[test]
fn chunked_as_final_coding_is_chunked_framing() {
    let gz = scripted(|mut s| {
        let head = read_head(&mut s);
        if head.is_empty() {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let _ = read_for(&mut s, Duration::from_secs(10));
    });
    let f = Fulcrum::start(&config("http", &[("gz", gz, 1)], "", ""), 1);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    // With `Connection: close` the client sees the end at once; a body framed
    // as until-close would instead wait for the backend to close.
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let started = Instant::now();
    let got = read_for(&mut s, Duration::from_secs(3));
    let got = String::from_utf8_lossy(&got);
    assert!(got.to_ascii_lowercase().contains("transfer-encoding: gzip"), "coding lost: {got:?}");
    assert!(got.ends_with("0\r\n\r\n") && started.elapsed() < Duration::from_secs(3), "{got:?}");
}

/// RFC 9110 §8.6: no Content-Length in a 204 (or 1xx). Fulcrum copies the
/// backend's value into the 204 it forwards (the NoBody framing branch of
/// `write_response_head`), inviting a lenient client to read that many bytes
/// of the next response as this one's body.
#[test]
fn no_content_length_on_204() {
    let b = scripted(|mut s| {
        for _ in 0..4 {
            if read_head(&mut s).is_empty() {
                return;
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
        }
    });
    let f = Fulcrum::start(&config("http", &[("b", b, 1)], "", ""), 1);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 204"), "{head:?}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "{head:?}");
}

/// A backend that answers HEAD with its head and then, in a second write a
/// moment later, a body (a common application bug: the framework strips
/// nothing, the server writes head and body separately). Fulcrum sees a
/// complete HEAD response with nothing left over and pools the connection at
/// once; the stray bytes arrive after the next checkout's probe, while another
/// client's request is in flight on that connection, and are parsed as that
/// client's response. Here the stray bytes are a whole response, so client B
/// receives "EVIL", which the backend never sent to it.
#[test]
fn stray_bytes_after_a_head_response_never_reach_another_client() {
    let b = scripted(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        for _ in 0..4 {
            let head = read_head(&mut s);
            if head.is_empty() {
                return;
            }
            if head.starts_with("HEAD ") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 31\r\n\r\n");
                std::thread::sleep(Duration::from_millis(300));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL");
            } else {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        }
    });
    let f = Fulcrum::start(&config("http", &[("b", b, 1)], "", ""), 1);
    let mut a = TcpStream::connect(f.addr()).expect("connect");
    a.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    a.write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let head = read_head(&mut a);
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    // Another client, a moment later: it gets the pooled connection.
    std::thread::sleep(Duration::from_millis(50));
    let mut c = TcpStream::connect(f.addr()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    c.write_all(b"GET /mine HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let resp = read_response(&mut c);
    assert!(resp.ends_with("ok"), "client B got someone else's bytes: {resp:?}");
}

/// RFC 9113 §3.1 and request smuggling: `Upgrade: h2c` is never tunnelled —
/// the backend gets a plain HTTP/1.1 request without the upgrade, so no
/// second protocol can slip past the proxy's parser.
#[test]
fn an_h2c_upgrade_is_not_passed_on() {
    let rec = Recorder::start();
    let f = Fulcrum::start(&config("http", &[("r", rec.addr, 1)], "", ""), 1);
    let out = common::raw(
        f.addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let heads = rec.heads();
    let first = heads[0].to_ascii_lowercase();
    assert!(!first.contains("upgrade") && !first.contains("http2-settings"), "{}", heads[0]);
    // The bytes after the first request are a second request, parsed as such.
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[1].starts_with("GET /smuggled HTTP/1.1"));
}
