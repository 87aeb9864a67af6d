//! Review of the http data path: each test reproduces one finding of the
//! review (see the report) and fails until it is fixed.

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
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let _ = read_for(&mut s, Duration::from_secs(10));
    });
    let f = Fulcrum::start(&config("http", &[("gz", gz, 1)], "", ""), 1);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
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

/// The backend answers 413 at once, without reading the body, and closes.
/// The client is still sending its body: Fulcrum must deliver the 413 before
/// closing (linger), not reset the connection with the client's body unread.
#[test]
fn early_error_reaches_a_client_still_uploading() {
    let b = scripted(|mut s| {
        if read_head(&mut s).is_empty() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig");
        std::thread::sleep(Duration::from_millis(200));
    });
    let f = Fulcrum::start(&config("http", &[("b", b, 1)], "", ""), 1);
    let mut failures = Vec::new();
    for round in 0..5 {
        let mut s = TcpStream::connect(f.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let total = 32 * 1024 * 1024;
        let mut w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n").as_bytes());
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                if w.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        });
        // A client that reads only after sending (like many simple clients).
        let _ = writer.join();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got).into_owned();
        if !text.starts_with("HTTP/1.1 413") {
            failures.push(format!("round {round}: {r:?} {text:?}"));
        }
    }
    assert!(failures.is_empty(), "413 lost: {failures:?}");
}

/// Same, with no backend at all: the 503 goes out and the connection is
/// closed with the client's body unread.
#[test]
fn refusal_reaches_a_client_still_uploading() {
    let dead = common::dead_addr();
    let f = Fulcrum::start(&config("http", &[("dead", dead, 1)], "", ""), 1);
    let mut failures = Vec::new();
    for round in 0..5 {
        let mut s = TcpStream::connect(f.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let total = 32 * 1024 * 1024;
        let mut w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n").as_bytes());
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                if w.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        });
        let _ = writer.join();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got).into_owned();
        if !text.starts_with("HTTP/1.1 503") {
            failures.push(format!("round {round}: {r:?} {text:?}"));
        }
    }
    assert!(failures.is_empty(), "503 lost: {failures:?}");
    let _ = read_response; // keep the import used
}
