//! SNAT pools, black-box: backend connections leave from the pool's
//! addresses and ports, spread over its addresses; an exhausted pool refuses
//! (a close in tcp mode, a 503 in http mode) or holds a session for its
//! `wait`; a released address:port is used again.
//!
//! The pool is 127.0.0.10-127.0.0.11 × ports 40000-40003 in blocks of 2:
//! eight source address:ports in four blocks. Every 127.0.0.x is local on
//! Linux, so no setup is needed.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{config, raw, Fulcrum};

const PAIRS: usize = 8;

/// A backend that holds every connection open until its peer closes it,
/// never answering, and reports each peer's address as it accepts it.
fn holder() -> (SocketAddr, Receiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (peers, accepted) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(peer) = stream.peer_addr() else { continue };
            if peers.send(peer).is_err() {
                return;
            }
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(1..) = stream.read(&mut buf) {}
            });
        }
    });
    (addr, accepted)
}

/// Fulcrum with one `mode` service over `backend`, its pool using the
/// snat pool `to-servers` with `wait`.
fn start(mode: &str, backend: SocketAddr, wait: &str) -> Fulcrum {
    let snat = format!(
        "\n[[snat_pool]]\nname = \"to-servers\"\nfirst_ip = \"127.0.0.10\"\nlast_ip = \"127.0.0.11\"\n\
         netmask = \"255.0.0.0\"\nports = \"40000-40003\"\nblock_size = 2\nwait = \"{wait}\"\n"
    );
    let text = config(mode, &[("b", backend, 1)], "", "snat = \"to-servers\"") + &snat;
    Fulcrum::start(&text, 1)
}

/// Every source address:port of the pool.
fn all_pairs() -> HashSet<SocketAddr> {
    let ips = [Ipv4Addr::new(127, 0, 0, 10), Ipv4Addr::new(127, 0, 0, 11)];
    ips.iter().flat_map(|ip| (40000..=40003).map(|port| SocketAddr::new(IpAddr::V4(*ip), port))).collect()
}

/// Opens tcp sessions one by one until the pool is full; returns each
/// client with the source address:port its backend connection came from.
fn fill(f: &Fulcrum, peers: &Receiver<SocketAddr>) -> Vec<(TcpStream, SocketAddr)> {
    (0..PAIRS)
        .map(|i| {
            let client = TcpStream::connect(f.addr()).expect("connect");
            let peer = peers.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|e| {
                panic!("session {i} reached no backend ({e}); stderr:\n{}", f.proc.stderr())
            });
            (client, peer)
        })
        .collect()
}

/// Whether Fulcrum closes `client` (EOF or reset) within 5 s.
fn closed_at_once(client: &mut TcpStream) -> bool {
    client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut byte = [0u8; 1];
    match client.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn tcp_sessions_take_every_source_then_are_refused_then_recover() {
    let (backend, peers) = holder();
    let f = start("tcp", backend, "0s");
    let mut sessions = fill(&f, &peers);

    let sources: HashSet<SocketAddr> = sessions.iter().map(|(_, peer)| *peer).collect();
    assert_eq!(sources, all_pairs(), "eight sessions, eight distinct source address:ports of the pool");
    for ip in [Ipv4Addr::new(127, 0, 0, 10), Ipv4Addr::new(127, 0, 0, 11)] {
        let on = sessions.iter().filter(|(_, p)| p.ip() == IpAddr::V4(ip)).count();
        assert_eq!(on, 4, "sessions spread over both addresses: {sources:?}");
    }

    // The ninth has no source address:port: refused, and said so.
    let mut ninth = TcpStream::connect(f.addr()).expect("the listener still accepts");
    assert!(closed_at_once(&mut ninth), "the ninth session is closed at once");
    assert!(peers.try_recv().is_err(), "the ninth session never reached the backend");
    f.proc.wait_log(
        &["tcp session refused", r#"snat pool "to-servers""#, "exhausted"],
        Duration::from_secs(10),
    );
    f.proc.wait_log(&["snat pool exhausted", "to-servers"], Duration::from_secs(10));

    // Closing one gives its source back; a new session gets it. Its last
    // connection may sit in TIME_WAIT toward this backend a moment, so poll.
    let (first, freed) = sessions.remove(0);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    let reused = loop {
        assert!(
            Instant::now() < deadline,
            "no session got through after one closed; stderr:\n{}",
            f.proc.stderr()
        );
        let mut client = TcpStream::connect(f.addr()).expect("connect");
        if let Ok(peer) = peers.recv_timeout(Duration::from_millis(500)) {
            client.write_all(b"still here").expect("the new session is open");
            sessions.push((client, peer));
            break peer;
        }
    };
    assert_eq!(reused, freed, "the one free source address:port is the released one");
    f.proc.wait_log(&["snat pool has free source addresses again", "to-servers"], Duration::from_secs(10));
}

#[test]
fn a_session_waits_for_a_released_source() {
    let (backend, peers) = holder();
    let f = start("tcp", backend, "20s");
    let mut sessions = fill(&f, &peers);

    let mut waiting = TcpStream::connect(f.addr()).expect("connect");
    assert!(
        peers.recv_timeout(Duration::from_millis(500)).is_err(),
        "a ninth session reached the backend while every source was taken"
    );
    let (first, freed) = sessions.remove(0);
    drop(first);
    let peer =
        peers.recv_timeout(Duration::from_secs(15)).expect("the waiting session gets the released source");
    assert_eq!(peer, freed);
    waiting.write_all(b"served").expect("the waiting session is open");
    assert!(f.proc.stderr().lines().all(|l| !l.contains("tcp session refused")), "nothing was refused");
}

#[test]
fn http_exhaustion_is_a_503_naming_the_snat_pool() {
    let (backend, peers) = holder();
    let f = start("http", backend, "0s");
    // Eight requests the backend never answers hold every source.
    let held: Vec<TcpStream> = (0..PAIRS)
        .map(|i| {
            let mut client = TcpStream::connect(f.addr()).expect("connect");
            client.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
            let peer = peers.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|e| {
                panic!("request {i} reached no backend ({e}); stderr:\n{}", f.proc.stderr())
            });
            assert!(all_pairs().contains(&peer), "{peer} is a source of the pool");
            client
        })
        .collect();

    let out = raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert!(out.contains(r#"snat pool "to-servers" of pool "web" is exhausted"#), "{out}");
    assert!(peers.try_recv().is_err(), "the refused request never reached the backend");
    drop(held);
}

#[test]
fn an_idle_keep_alive_connection_gives_its_source_to_a_new_session() {
    // One source address:port, two backends taken in turn: the idle
    // connection to one holds the only source the next request needs.
    let (a, b) = (common::Recorder::start(), common::Recorder::start());
    let snat = "\n[[snat_pool]]\nname = \"one\"\nfirst_ip = \"127.0.0.12\"\nlast_ip = \"127.0.0.12\"\n\
                netmask = \"255.255.255.255\"\nports = \"40010-40010\"\nblock_size = 1\n";
    let pool = "snat = \"one\"\nalgorithm = \"round_robin\"";
    let text = config("http", &[("a", a.addr, 1), ("b", b.addr, 1)], "", pool) + snat;
    let f = Fulcrum::start(&text, 1);
    for i in 0..4 {
        let out = raw(f.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 "), "request {i}: {out}\nstderr:\n{}", f.proc.stderr());
    }
    assert_eq!(a.heads().len() + b.heads().len(), 4);
    assert!(!a.heads().is_empty() && !b.heads().is_empty(), "both backends served");
}
