//! Connection limits and timeouts, black-box.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{config, held_connection, raw, read_response, Backend, Fulcrum};

#[test]
fn over_the_limit_is_refused_then_recovers() {
    let b = Backend::start("b");
    let limits = "[service.limits]\nmax_connections = 2\non_limit = \"refuse\"";
    let f = Fulcrum::start(&config("http", &[("b", b.addr, 1)], limits, ""), 1);
    let first = held_connection(f.addr());
    let _second = held_connection(f.addr());
    let out = raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 503 ") && out.contains("connection limit"), "{out}");
    drop(first);
    // The slot frees once Fulcrum sees the close; retry until it has (bounded).
    let ok = (0..200).any(|_| {
        let out = raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        if !out.starts_with("HTTP/1.1 200") {
            std::thread::sleep(Duration::from_millis(10));
        }
        out.starts_with("HTTP/1.1 200")
    });
    assert!(ok, "a freed slot is reused");
}

#[test]
fn over_the_limit_waits_in_the_queue() {
    let b = Backend::start("b");
    let limits = "[service.limits]\nmax_connections = 1\non_limit = \"queue\"\nqueue_timeout = \"10s\"";
    let f = Fulcrum::start(&config("http", &[("b", b.addr, 1)], limits, ""), 1);
    let holder = held_connection(f.addr());
    let mut waiter = TcpStream::connect(f.addr()).expect("connect");
    waiter.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    // Held, not refused and not served, while the only slot is taken.
    waiter.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let mut byte = [0u8; 1];
    let held = waiter.read(&mut byte);
    assert!(held.is_err(), "the queued connection got an answer while the slot was taken: {held:?}");
    drop(holder);
    waiter.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let out = read_response(&mut waiter);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn a_slow_request_head_gets_408() {
    let b = Backend::start("b");
    let t = "[service.timeouts]\nrequest_headers = \"300ms\"";
    let f = Fulcrum::start(&config("http", &[("b", b.addr, 1)], t, ""), 1);
    let out = raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\n");
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let b = Backend::start("b");
    let t = "[service.timeouts]\nclient_idle = \"300ms\"";
    let f = Fulcrum::start(&config("http", &[("b", b.addr, 1)], t, ""), 1);
    let mut s = held_connection(f.addr());
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).expect("closed by Fulcrum before the 10 s read timeout"), 0);
}

#[test]
fn the_process_wide_limit_spans_services() {
    let b = Backend::start("b");
    let second = "\n[[service]]\nname = \"other\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"web\"\n\n[runtime.limits]\nmax_connections = 2\non_limit = \"refuse\"\n";
    let f = Fulcrum::start(&(config("http", &[("b", b.addr, 1)], "", "") + second), 2);
    let held = |addr| {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
        s
    };
    let first = held(f.addrs[0]);
    let _second = held(f.addrs[1]);
    for addr in &f.addrs {
        let out = raw(*addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(
            out.starts_with("HTTP/1.1 503 ") && out.contains("Fulcrum is at its connection limit"),
            "{out}"
        );
    }
    drop(first);
    let ok = (0..200).any(|_| {
        let out = raw(f.addrs[1], b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        if !out.starts_with("HTTP/1.1 200") {
            std::thread::sleep(Duration::from_millis(10));
        }
        out.starts_with("HTTP/1.1 200")
    });
    assert!(ok, "a freed place is reused");
}

/// Out of descriptors (EMFILE), Fulcrum pauses accepting instead of
/// spinning, says so once per pause, and serves again as soon as
/// connections close and free descriptors.
#[test]
fn out_of_descriptors_pauses_accepting_then_recovers() {
    let b = Backend::start("b");
    let f = Fulcrum::start(&config("http", &[("b", b.addr, 1)], "", ""), 1);
    // A first request opens the backend connection the later ones reuse.
    let mut first = held_connection(f.addr());
    let pid = f.proc.child.id();
    // Room for 4 more descriptors beyond what Fulcrum holds now.
    let limit = (common::fd_count(pid) + 4) as u64;
    let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: prlimit on our own child with a valid struct; no old value asked for.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());

    // More clients than descriptors: the kernel completes their handshakes
    // (the backlog), Fulcrum cannot accept them all.
    let started = std::time::Instant::now();
    let crowd: Vec<TcpStream> = (0..12).map(|_| TcpStream::connect(f.addr()).expect("connect")).collect();
    let line = f.proc.wait_log(&["accept failed; pausing"], Duration::from_secs(10));
    assert!(line.contains("Too many open files"), "{line}");
    // The held connection is served meanwhile.
    first.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    assert!(read_response(&mut first).starts_with("HTTP/1.1 200"));

    // Closing frees descriptors: the pause ends and a new client is served
    // (after the backlog ahead of it, which Fulcrum accepts and sees close).
    drop(crowd);
    drop(first);
    let mut s = TcpStream::connect(f.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let out = read_response(&mut s);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Paused, not spinning: at most one failure per 20 ms pause (plus slack).
    let pauses = f.proc.count_log(&["accept failed; pausing"]) as u128;
    let most = started.elapsed().as_millis() / 20 + 10;
    assert!(pauses <= most, "{pauses} accept failures logged, at most {most} expected: spinning");
}
