//! tcp mode, black-box: bytes both ways, half-close, idle timeout, retries.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{config, dead_addr, Backend, Fulcrum};

/// A backend that reads until the client half-closes, then answers with the
/// number of bytes it got and closes: only a kept half-close lets it answer.
fn counter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut n = 0usize;
                let mut buf = [0u8; 65536];
                while let Ok(m @ 1..) = s.read(&mut buf) {
                    n += m;
                }
                let _ = s.write_all(format!("got {n}").as_bytes());
            });
        }
    });
    addr
}

#[test]
fn half_close_reaches_the_backend_and_the_reply_comes_back() {
    let f = Fulcrum::start(&config("tcp", &[("c", counter(), 1)], "", ""), 1);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let payload = vec![7u8; 3 * 1024 * 1024 + 17];
    s.write_all(&payload).expect("write");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply after half-close");
    assert_eq!(reply, format!("got {}", payload.len()));
}

#[test]
fn bulk_bytes_arrive_whole() {
    let b = Backend::start("b");
    let f = Fulcrum::start(&config("tcp", &[("b", b.addr, 1)], "", ""), 1);
    let out = common::raw(f.addr(), b"GET /bytes/50000000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    assert_eq!(body.len(), 50_000_000);
    assert!(out.contains("x-backend: b\r\n"));
}

#[test]
fn idle_sessions_are_closed() {
    let f = Fulcrum::start(
        &config("tcp", &[("c", counter(), 1)], "[service.timeouts]\nclient_idle = \"300ms\"", ""),
        1,
    );
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 64];
    // The backend never writes, the client never writes: only the idle timeout ends this.
    let n = s.read(&mut buf).expect("closed by Fulcrum, not by the 10 s read timeout");
    assert_eq!(n, 0);
}

#[test]
fn a_failed_connect_tries_the_next_backend() {
    let live = counter();
    let f = Fulcrum::start(
        &config(
            "tcp",
            &[("dead", dead_addr(), 1), ("live", live, 1)],
            "retries = 1",
            "algorithm = \"round_robin\"",
        ),
        1,
    );
    for _ in 0..10 {
        let mut s = TcpStream::connect(f.addr()).expect("connect");
        s.write_all(b"abc").expect("write");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        assert_eq!(reply, "got 3");
    }
}

#[test]
fn no_reachable_backend_closes_the_client() {
    let f = Fulcrum::start(&config("tcp", &[("dead", dead_addr(), 1)], "", ""), 1);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    assert!(f.proc.stderr().contains("dead"), "the failure is logged with the backend's name");
}
