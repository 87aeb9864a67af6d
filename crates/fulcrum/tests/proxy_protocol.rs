//! PROXY protocol, black-box: headers Fulcrum sends toward backends (pool
//! `proxy_protocol = "v1" | "v2"`, http and tcp modes) and headers it accepts
//! from a trusted upstream load balancer (service `accept_proxy_protocol`,
//! `trusted_proxies`). The backends here parse what arrives on the wire with
//! the core's parser; the expected bytes come from the core's encoder, and
//! both are compared byte for byte.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config, raw, read_response, Backend, Fulcrum, Recorder};
use fulcrum_core::model::ProxyVersion;
use fulcrum_core::proxy::{self, ProxyHeader};

/// What one backend connection began with.
#[derive(Clone, Debug)]
struct Conn {
    /// Its number, from 1, in accept order.
    id: usize,
    /// The exact bytes of the PROXY header (what `proxy::parse` consumed).
    header_bytes: Vec<u8>,
    header: ProxyHeader,
}

/// A hand-rolled HTTP backend that insists on a PROXY header first on each
/// connection: it parses the header, then answers every request on the
/// connection with 200 and `X-Client` (the client the header named) and
/// `X-Conn` (the connection's number), keeping the connection open. A
/// connection without a valid header is answered `HTTP/1.1 599` naming the
/// error, so a test sees it.
struct ProxyBackend {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    /// Every connection accepted, with a header or without.
    accepted: Arc<AtomicUsize>,
    /// The first bytes of each connection that did not start with a valid header.
    rejected: Arc<Mutex<Vec<String>>>,
}

impl ProxyBackend {
    fn start() -> ProxyBackend {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(Mutex::new(Vec::new()));
        let seen = conns.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let rejected = Arc::new(Mutex::new(Vec::new()));
        let bad = rejected.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let id = count.fetch_add(1, Ordering::SeqCst) + 1;
                let (seen, bad) = (seen.clone(), bad.clone());
                std::thread::spawn(move || serve_proxied(s, id, &seen, &bad));
            }
        });
        ProxyBackend { addr, conns, accepted, rejected }
    }

    fn conns(&self) -> Vec<Conn> {
        self.conns.lock().expect("lock").clone()
    }
}

fn serve_proxied(mut s: TcpStream, id: usize, seen: &Mutex<Vec<Conn>>, bad: &Mutex<Vec<String>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The header, read to its end and no further than the parser says.
    let (header, used) = loop {
        match proxy::parse(&buf) {
            Ok(Some(done)) => break done,
            Ok(None) => {}
            Err(e) => {
                bad.lock().expect("lock").push(buf.escape_ascii().to_string());
                let msg = format!("no PROXY header: {e}");
                let reply = format!("HTTP/1.1 599 Bad\r\nContent-Length: {}\r\n\r\n{msg}", msg.len());
                let _ = s.write_all(reply.as_bytes());
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let header_bytes = buf.drain(..used).collect();
    seen.lock().expect("lock").push(Conn { id, header_bytes, header });
    let client = match header {
        ProxyHeader::Proxied { client, .. } => client.to_string(),
        ProxyHeader::Local => "local".to_owned(),
    };
    // Requests without bodies, one head at a time.
    for _ in 0..100 {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head end") + 4;
        buf.drain(..end);
        let reply =
            format!("HTTP/1.1 200 OK\r\nX-Client: {client}\r\nX-Conn: {id}\r\nContent-Length: 2\r\n\r\nok");
        if s.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// A tcp backend that reads until the client half-closes, hands over every
/// byte it got, then answers with their count and closes.
fn collector() -> (SocketAddr, Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                let n = got.len();
                let _ = tx.send(got);
                let _ = s.write_all(format!("got {n}").as_bytes());
            });
        }
    });
    (addr, rx)
}

/// The value of header `name` in a response, names compared without case.
fn header(response: &str, name: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

fn get(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).expect("write request");
    read_response(s)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// A connection to `to` from the local address `from` (port chosen by the kernel).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let from: SocketAddr = format!("{from}:0").parse().expect("source address");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&from.into()).expect("bind source");
    socket.connect(&to.into()).expect("connect");
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// Reads until Fulcrum closes the connection (a reset counts as closed);
/// returns what arrived before. Panics if it stays open for `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
                return got
            }
            Err(e) => panic!(
                "connection still open after {limit:?} ({e}); got {:?}",
                got.escape_ascii().to_string()
            ),
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// The 12-byte v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

// ---------------------------------------------------------------------------
// 1. Toward backends, http mode.

fn http_backends_get_a_header_on_every_connection(name: &str, version: ProxyVersion) {
    let b = ProxyBackend::start();
    let pool_extra = format!("proxy_protocol = \"{name}\"");
    let f = Fulcrum::start(&config("http", &[("pp", b.addr, 1)], "", &pool_extra), 1);

    // Two requests on one keep-alive client connection.
    let mut first = connect(f.addr());
    let me = first.local_addr().expect("client address");
    assert!(me.ip().is_loopback(), "{me}");
    let mut first_conns = Vec::new();
    for path in ["/one", "/two"] {
        let response = get(&mut first, path);
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        assert_eq!(header(&response, "x-client").as_deref(), Some(me.to_string().as_str()), "{response}");
        first_conns.push(header(&response, "x-conn").expect("x-conn"));
    }

    // Every backend connection starts with exactly the header naming this
    // client's socket and the listener it connected to.
    let expected = proxy::encode(version, me, f.addr());
    let conns = b.conns();
    assert!(!conns.is_empty());
    for c in &conns {
        assert_eq!(
            c.header_bytes,
            expected,
            "connection {}: {:?}",
            c.id,
            c.header_bytes.escape_ascii().to_string()
        );
        assert_eq!(c.header, ProxyHeader::Proxied { client: me, server: f.addr() });
    }
    if version == ProxyVersion::V1 {
        let line = format!("PROXY TCP4 {} {} {} {}\r\n", me.ip(), f.addr().ip(), me.port(), f.addr().port());
        assert_eq!(conns[0].header_bytes, line.as_bytes());
    } else {
        assert_eq!(&conns[0].header_bytes[..12], V2_SIGNATURE);
    }

    // A second client, while the first still holds its connection open,
    // never lands on a backend connection opened for the first.
    let mut second = connect(f.addr());
    let other = second.local_addr().expect("client address");
    let response = get(&mut second, "/three");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(header(&response, "x-client").as_deref(), Some(other.to_string().as_str()), "{response}");
    let conn = header(&response, "x-conn").expect("x-conn");
    assert!(!first_conns.contains(&conn), "second client reused connection {conn} of the first");
    let c = b.conns().into_iter().find(|c| c.id.to_string() == conn).expect("its connection");
    assert_eq!(c.header_bytes, proxy::encode(version, other, f.addr()));

    // And back on the first client: still its own address, never the second's.
    let response = get(&mut first, "/four");
    assert_eq!(header(&response, "x-client").as_deref(), Some(me.to_string().as_str()), "{response}");
    assert_ne!(header(&response, "x-conn"), Some(conn));
}

#[test]
fn http_backends_get_a_v1_header_on_every_connection() {
    http_backends_get_a_header_on_every_connection("v1", ProxyVersion::V1);
}

#[test]
fn http_backends_get_a_v2_header_on_every_connection() {
    http_backends_get_a_header_on_every_connection("v2", ProxyVersion::V2);
}

/// A backend that requires the PROXY protocol (nginx `listen … proxy_protocol`,
/// HAProxy `accept-proxy`) refuses any connection without the header, health
/// checks included; HAProxy therefore sends the header on checks of a server
/// with `send-proxy` by default (its `check-send-proxy`), as Envoy does on
/// the cluster's transport socket. A pool with `proxy_protocol` whose http
/// checks came without it would mark every such backend down.
#[test]
fn http_health_checks_of_a_proxy_protocol_pool_carry_the_header() {
    let b = ProxyBackend::start();
    let pool_extra = "proxy_protocol = \"v1\"\nhealth = { kind = \"http\", path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }";
    let f = Fulcrum::start(&config("http", &[("pp", b.addr, 1)], "", pool_extra), 1);
    // Let a few checks happen: the backend counts every connection.
    let start = Instant::now();
    while b.accepted.load(Ordering::SeqCst) < 3 {
        assert!(start.elapsed() < Duration::from_secs(5), "no health checks within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let rejected = b.rejected.lock().expect("lock").clone();
    assert!(
        rejected.is_empty(),
        "health checks reached the backend without a PROXY header: {rejected:?}\nfulcrum: {}",
        f.proc.stderr().lines().filter(|l| l.contains("backend is")).collect::<Vec<_>>().join("\n")
    );
    let response = get(&mut connect(f.addr()), "/");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

// ---------------------------------------------------------------------------
// 2. Toward backends, tcp mode.

#[test]
fn tcp_backends_get_the_v2_header_then_the_payload_untouched() {
    let (backend, received) = collector();
    let f = Fulcrum::start(&config("tcp", &[("c", backend, 1)], "", "proxy_protocol = \"v2\""), 1);
    let mut s = connect(f.addr());
    let me = s.local_addr().expect("client address");
    // Bytes that would confuse a text parser: CRLFs, NULs, a fake PROXY line.
    let mut payload = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\0\r\n\xff".to_vec();
    payload.extend((0..5000u32).map(|i| (i % 251) as u8));
    s.write_all(&payload).expect("write");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");

    let got = received.recv_timeout(Duration::from_secs(10)).expect("backend got the connection");
    let header = proxy::encode(ProxyVersion::V2, me, f.addr());
    assert_eq!(&got[..12], V2_SIGNATURE);
    assert_eq!(&got[..header.len()], &header[..]);
    assert_eq!(
        proxy::parse(&got),
        Ok(Some((ProxyHeader::Proxied { client: me, server: f.addr() }, header.len())))
    );
    assert!(got[header.len()..] == payload[..], "payload changed on the way");
    assert_eq!(reply, format!("got {}", header.len() + payload.len()));
}

#[test]
fn tcp_client_address_from_a_trusted_proxy_reaches_the_backend_header() {
    let (backend, received) = collector();
    let f = Fulcrum::start(
        &config(
            "tcp",
            &[("c", backend, 1)],
            "accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
            "proxy_protocol = \"v2\"",
        ),
        1,
    );
    let mut s = connect(f.addr());
    let mut sent = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    let payload = b"after the header\r\n\0".to_vec();
    sent.extend_from_slice(&payload);
    s.write_all(&sent).expect("write");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");

    let got = received.recv_timeout(Duration::from_secs(10)).expect("backend got the connection");
    let (header, used) = proxy::parse(&got).expect("a valid header").expect("a complete header");
    let ProxyHeader::Proxied { client, .. } = header else { panic!("{header:?}") };
    assert_eq!(client, addr("203.0.113.7:5555"));
    // The inbound header is consumed, not passed on; the client's bytes are.
    assert_eq!(&got[used..], &payload[..]);
}

// ---------------------------------------------------------------------------
// 3. Accepting from a trusted proxy.

const TRUSTED: &str = "accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]";

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The head the recorder got for `path`.
fn head_for(r: &Recorder, path: &str) -> String {
    let line = format!("GET {path} ");
    r.heads().into_iter().find(|h| h.starts_with(&line)).unwrap_or_else(|| panic!("no request for {path}"))
}

#[test]
fn a_trusted_proxy_gives_the_client_address() {
    let r = Recorder::start();
    let f = Fulcrum::start(&config("http", &[("r", r.addr, 1)], TRUSTED, ""), 1);

    // v1.
    let mut sent = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    sent.extend(request("/v1"));
    let out = raw(f.addr(), &sent);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = head_for(&r, "/v1");
    assert!(head.contains("X-Forwarded-For: 203.0.113.7\r\n"), "{head}");
    assert!(head.contains("Forwarded: for=203.0.113.7;"), "{head}");

    // v2, from the core's encoder.
    let mut sent = proxy::encode(ProxyVersion::V2, addr("203.0.113.8:6666"), addr("127.0.0.1:80"));
    sent.extend(request("/v2"));
    let out = raw(f.addr(), &sent);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = head_for(&r, "/v2");
    assert!(head.contains("X-Forwarded-For: 203.0.113.8\r\n"), "{head}");

    // v1 over IPv6: the address is written as IPv6 on the way on.
    let mut sent = b"PROXY TCP6 2001:db8::7 ::1 5555 80\r\n".to_vec();
    sent.extend(request("/v1-tcp6"));
    let out = raw(f.addr(), &sent);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = head_for(&r, "/v1-tcp6");
    assert!(head.contains("X-Forwarded-For: 2001:db8::7\r\n"), "{head}");
    assert!(head.contains("Forwarded: for=\"[2001:db8::7]\";"), "{head}");

    // v2 LOCAL (a health check of the upstream balancer): the peer's own address.
    let mut sent = V2_SIGNATURE.to_vec();
    sent.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    sent.extend(request("/local"));
    let out = raw(f.addr(), &sent);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = head_for(&r, "/local");
    assert!(head.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{head}");

    // v2 with TLVs after the addresses, as AWS NLB (type 0xEA, its VPC
    // endpoint id) or HAProxy (ALPN, authority, NOOP padding) send them.
    let mut tlvs = Vec::new();
    for (kind, value) in [
        (0x01u8, &b"h2"[..]),
        (0x02, b"www.example.com"),
        (0x04, b"\0\0\0"),
        (0xEA, b"\x01vpce-0123456789abcdef"),
    ] {
        tlvs.push(kind);
        tlvs.extend_from_slice(&u16::try_from(value.len()).expect("short").to_be_bytes());
        tlvs.extend_from_slice(value);
    }
    let mut sent = V2_SIGNATURE.to_vec();
    sent.extend_from_slice(&[0x21, 0x11]);
    sent.extend_from_slice(&u16::try_from(12 + tlvs.len()).expect("short").to_be_bytes());
    sent.extend_from_slice(&[203, 0, 113, 10, 127, 0, 0, 1]);
    sent.extend_from_slice(&4444u16.to_be_bytes());
    sent.extend_from_slice(&80u16.to_be_bytes());
    sent.extend(tlvs);
    sent.extend(request("/tlv"));
    let out = raw(f.addr(), &sent);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = head_for(&r, "/tlv");
    assert!(head.contains("X-Forwarded-For: 203.0.113.10\r\n"), "{head}");

    // A header split over three writes, then two keep-alive requests that
    // both carry the address it gave.
    let mut s = connect(f.addr());
    s.set_nodelay(true).expect("nodelay");
    s.write_all(b"PROXY TCP4 203.0.").expect("write");
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"113.9 127.0.0.1 5555").expect("write");
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b" 80\r\n").expect("write");
    for path in ["/split1", "/split2"] {
        let response = get(&mut s, path);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let head = head_for(&r, path);
        assert!(head.contains("X-Forwarded-For: 203.0.113.9\r\n"), "{head}");
    }
}

#[test]
fn policy_judges_the_address_a_trusted_proxy_gives() {
    let r = Recorder::start();
    let service = format!("{TRUSTED}\npolicy = {{ deny = [\"203.0.113.0/24\"] }}");
    let f = Fulcrum::start(&config("http", &[("r", r.addr, 1)], &service, ""), 1);

    let mut sent = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    sent.extend(request("/denied"));
    let out = raw(f.addr(), &sent);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let mut sent = proxy::encode(ProxyVersion::V2, addr("203.0.113.200:7"), addr("127.0.0.1:80"));
    sent.extend(request("/denied-v2"));
    let out = raw(f.addr(), &sent);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    // The log names the real client, not the proxy.
    f.proc.wait_log(&["session refused by policy", "203.0.113.7:5555"], Duration::from_secs(5));

    // The same peer relaying another client is let through.
    let mut sent = b"PROXY TCP4 198.51.100.1 127.0.0.1 5555 80\r\n".to_vec();
    sent.extend(request("/allowed"));
    let out = raw(f.addr(), &sent);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(head_for(&r, "/allowed").contains("X-Forwarded-For: 198.51.100.1\r\n"));
    assert_eq!(r.heads().len(), 1, "a denied request reached the backend: {:?}", r.heads());
}

#[test]
fn routes_and_persistence_see_the_address_a_trusted_proxy_gives() {
    let (one, two) = (Backend::start("one"), Backend::start("two"));
    let service = format!(
        "{TRUSTED}\npersistence = {{ kind = \"source_ip\" }}\n\n[[service.route]]\npath_prefix = \"/inner/\"\npool = \"web\"\npolicy = {{ allow = [\"203.0.113.0/24\"] }}\n"
    );
    let f = Fulcrum::start(
        &config(
            "http",
            &[("one", one.addr, 1), ("two", two.addr, 1)],
            &service,
            "algorithm = \"round_robin\"",
        ),
        1,
    );
    let through = |client: &str, path: &str| {
        let mut sent = format!("PROXY TCP4 {client} 127.0.0.1 5555 80\r\n").into_bytes();
        sent.extend(request(path));
        raw(f.addr(), &sent)
    };

    // A route's policy: the relayed client, not the proxy, is judged.
    let out = through("203.0.113.7", "/inner/x");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let out = through("198.51.100.1", "/inner/x");
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");

    // Source persistence: each relayed client keeps its backend, and the
    // clients (all behind one proxy address) spread over both backends.
    let mut seen = std::collections::HashSet::new();
    for i in 1..=8 {
        let client = format!("198.51.100.{}", 10 + i);
        let picks: Vec<String> = (0..3)
            .map(|_| {
                let out = through(&client, "/");
                assert!(out.starts_with("HTTP/1.1 200"), "{out}");
                header(&out, "x-backend").expect("x-backend")
            })
            .collect();
        assert!(picks.iter().all(|p| *p == picks[0]), "{client} moved: {picks:?}");
        seen.insert(picks[0].clone());
    }
    assert_eq!(seen.len(), 2, "every relayed client stuck to one backend: keyed on the proxy?");
}

// ---------------------------------------------------------------------------
// 4. Untrusted peers, and trusted peers that break the protocol.

#[test]
fn an_untrusted_peer_is_served_as_a_direct_client() {
    let r = Recorder::start();
    let service = "accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.9\"]";
    let f = Fulcrum::start(&config("http", &[("r", r.addr, 1)], service, ""), 1);

    // From 127.0.0.1: its PROXY line is not believed, and is no HTTP either.
    let mut s = connect_from("127.0.0.1", f.addr());
    let mut sent = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    sent.extend(request("/forged"));
    s.write_all(&sent).expect("write");
    let out = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(5))).into_owned();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(r.connections.load(Ordering::SeqCst), 0, "the forged request was forwarded");

    // Plain HTTP from it is served, with its own address.
    let mut s = connect_from("127.0.0.1", f.addr());
    s.write_all(&request("/direct")).expect("write");
    let out = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(5))).into_owned();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(head_for(&r, "/direct").contains("X-Forwarded-For: 127.0.0.1\r\n"));

    // The trusted address is believed.
    let mut s = connect_from("127.0.0.9", f.addr());
    let mut sent = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    sent.extend(request("/relayed"));
    s.write_all(&sent).expect("write");
    let out = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(5))).into_owned();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(head_for(&r, "/relayed").contains("X-Forwarded-For: 203.0.113.7\r\n"));
}

/// Sends `bytes` from a trusted peer and expects the connection closed with
/// nothing sent back, and a log line for this peer with `why`.
fn refused(f: &Fulcrum, bytes: &[u8], why: &str) {
    let mut s = connect(f.addr());
    let me = s.local_addr().expect("client address").to_string();
    s.write_all(bytes).expect("write");
    // Well under the 10 s request_headers of these services: only the verdict closes it.
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(got.is_empty(), "{why}: got {:?}", got.escape_ascii().to_string());
    let peer = format!("peer={me}");
    f.proc.wait_log(&["PROXY header refused", &peer, why], Duration::from_secs(5));
}

#[test]
fn a_trusted_peer_that_breaks_the_protocol_is_closed() {
    let r = Recorder::start();
    let f = Fulcrum::start(&config("http", &[("r", r.addr, 1)], TRUSTED, ""), 1);

    refused(&f, &request("/no-header"), "not a PROXY protocol header");
    refused(&f, b"PROXY TCP4 203.0.113.999 127.0.0.1 5555 80\r\n", "source address");
    refused(&f, b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\n", "bare LF");
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(proxy::V1_MAX_LEN, b'a');
    refused(&f, &line, "over the 107-byte limit");
    let mut v2 = V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[0x11, 0x11, 0x00, 0x0c]);
    refused(&f, &v2, "version 1");
    let mut v2 = V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    refused(&f, &v2, "over the 4096-byte limit");

    assert_eq!(r.connections.load(Ordering::SeqCst), 0, "something was forwarded: {:?}", r.heads());
}

#[test]
fn a_silent_trusted_peer_is_closed_after_request_headers() {
    let r = Recorder::start();
    let service = format!("{TRUSTED}\ntimeouts = {{ request_headers = \"300ms\" }}");
    let f = Fulcrum::start(&config("http", &[("r", r.addr, 1)], &service, ""), 1);

    let start = Instant::now();
    let mut s = connect(f.addr());
    let me = s.local_addr().expect("client address").to_string();
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    let waited = start.elapsed();
    assert!(got.is_empty(), "{:?}", got.escape_ascii().to_string());
    assert!(waited >= Duration::from_millis(290), "closed after {waited:?}, before request_headers");
    f.proc.wait_log(&["no PROXY header in time", &format!("peer={me}")], Duration::from_secs(5));

    // A header begun and never finished is the same.
    let mut s = connect(f.addr());
    s.write_all(b"PROXY TCP4 203.0.113.7 ").expect("write");
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(got.is_empty(), "{:?}", got.escape_ascii().to_string());
    assert_eq!(r.connections.load(Ordering::SeqCst), 0);
}
