//! TLS SNI routing in tcp mode, black-box: Fulcrum peeks the server name out
//! of the ClientHello without terminating TLS, picks the pool by the
//! service's `sni` routes, and forwards the untouched bytes; a ClientHello it
//! cannot read is refused with a clean close and no backend connection.
//!
//! ClientHellos are built by hand here (deterministic bytes to compare); one
//! case drives a real `openssl s_client`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Fulcrum;
use fulcrum_core::model::ProxyVersion;
use fulcrum_core::sni::{peek_server_name, Peek};

// ---------------------------------------------------------------------------
// A ClientHello builder: record header, handshake header, random, session
// id, cipher suites, compression methods, extensions.

fn u16be(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("fits 16 bits").to_be_bytes()
}

fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut e = kind.to_be_bytes().to_vec();
    e.extend_from_slice(&u16be(data.len()));
    e.extend_from_slice(data);
    e
}

/// A server_name extension with one host_name entry.
fn server_name_extension(name: &str) -> Vec<u8> {
    let mut entry = vec![0u8];
    entry.extend_from_slice(&u16be(name.len()));
    entry.extend_from_slice(name.as_bytes());
    let mut list = u16be(entry.len()).to_vec();
    list.extend_from_slice(&entry);
    extension(0x0000, &list)
}

/// A TLS 1.3-style ClientHello body (after the handshake header), with a
/// server_name extension for `sni` placed between other extensions.
fn client_hello_body(sni: Option<&str>) -> Vec<u8> {
    let mut b = vec![0x03, 0x03];
    b.extend((0..32u8).map(|i| i.wrapping_mul(7)));
    b.push(32);
    b.extend((0..32u8).map(|i| 0xa0 ^ i));
    let suites = [0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2f];
    b.extend_from_slice(&u16be(suites.len()));
    b.extend_from_slice(&suites);
    b.extend_from_slice(&[1, 0]);
    let mut ext = Vec::new();
    ext.extend(extension(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17])); // supported_groups
    if let Some(name) = sni {
        ext.extend(server_name_extension(name));
    }
    ext.extend(extension(0x000d, &[0, 4, 0x08, 0x04, 0x04, 0x03])); // signature_algorithms
    ext.extend(extension(0x002b, &[2, 0x03, 0x04])); // supported_versions
    b.extend_from_slice(&u16be(ext.len()));
    b.extend(ext);
    b
}

fn handshake(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("fits").to_be_bytes();
    let mut h = vec![1, len[1], len[2], len[3]];
    h.extend_from_slice(body);
    h
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut r = vec![0x16, 0x03, 0x01];
    r.extend_from_slice(&u16be(payload.len()));
    r.extend_from_slice(payload);
    r
}

/// A ClientHello in one record.
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    record(&handshake(&client_hello_body(sni)))
}

/// A ClientHello whose handshake message is spread over two records, cut at `at`.
fn client_hello_in_two_records(sni: &str, at: usize) -> Vec<u8> {
    let h = handshake(&client_hello_body(Some(sni)));
    let mut r = record(&h[..at]);
    r.extend(record(&h[at..]));
    r
}

#[test]
fn the_builder_makes_a_client_hello_the_core_reads() {
    let hello = client_hello(Some("a.example.com"));
    assert_eq!(peek_server_name(&hello), Ok(Peek::ServerName(Some("a.example.com".into()))));
    assert_eq!(peek_server_name(&client_hello(None)), Ok(Peek::ServerName(None)));
    assert_eq!(peek_server_name(&hello[..hello.len() - 1]), Ok(Peek::NeedMore));
}

// ---------------------------------------------------------------------------
// Backends and the service.

/// A tcp backend that records what it receives: on its first bytes it answers
/// its name and half-closes toward the client, then reads until the client
/// half-closes and hands over every byte it got.
struct TlsBackend {
    name: &'static str,
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Receiver<Vec<u8>>,
}

impl TlsBackend {
    fn start(name: &'static str) -> TlsBackend {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let (tx, received) = channel();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut answered = false;
                    while let Ok(n @ 1..) = s.read(&mut chunk) {
                        got.extend_from_slice(&chunk[..n]);
                        if !answered {
                            answered = true;
                            let _ = s.write_all(name.as_bytes());
                            let _ = s.shutdown(Shutdown::Write);
                        }
                    }
                    let _ = tx.send(got);
                });
            }
        });
        TlsBackend { name, addr, connections, received }
    }

    /// The bytes of its next finished connection.
    fn next(&self) -> Vec<u8> {
        self.received
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("backend {} got no connection", self.name))
    }
}

/// Backends a, b, c behind one tcp service: `a.example.com` → pool a,
/// `*.b.example.com` → pool b, anything else → the service's pool c.
struct Farm {
    a: TlsBackend,
    b: TlsBackend,
    c: TlsBackend,
    f: Fulcrum,
}

impl Farm {
    fn start(service_extra: &str, pool_a_extra: &str) -> Farm {
        let (a, b, c) = (TlsBackend::start("a"), TlsBackend::start("b"), TlsBackend::start("c"));
        let config = format!(
            r#"[[service]]
name = "tls"
listen = ["127.0.0.1:0"]
mode = "tcp"
pool = "c"
{service_extra}

  [[service.route]]
  sni = "a.example.com"
  pool = "a"

  [[service.route]]
  sni = "*.b.example.com"
  pool = "b"

[[pool]]
name = "a"
{pool_a_extra}
  [[pool.backend]]
  name = "a1"
  address = "{}"

[[pool]]
name = "b"
  [[pool.backend]]
  name = "b1"
  address = "{}"

[[pool]]
name = "c"
  [[pool.backend]]
  name = "c1"
  address = "{}"
"#,
            a.addr, b.addr, c.addr
        );
        let f = Fulcrum::start(&config, 1);
        Farm { a, b, c, f }
    }

    fn backend(&self, name: &str) -> &TlsBackend {
        match name {
            "a" => &self.a,
            "b" => &self.b,
            "c" => &self.c,
            other => panic!("no backend {other}"),
        }
    }

    fn connections(&self) -> usize {
        [&self.a, &self.b, &self.c].iter().map(|b| b.connections.load(Ordering::SeqCst)).sum()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Sends `pieces` one write each, pausing between them, and returns the
/// backend's answer (read until it half-closes) and the client's address.
fn send_hello(farm: &Farm, pieces: &[&[u8]]) -> (String, SocketAddr) {
    let mut s = connect(farm.f.addr());
    let me = s.local_addr().expect("client address");
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            // The pause is the stimulus: Fulcrum must wait for the rest.
            std::thread::sleep(Duration::from_millis(100));
        }
        s.write_all(piece).expect("write");
    }
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("the backend's answer, then its half-close");
    s.shutdown(Shutdown::Write).expect("half-close");
    (answer, me)
}

/// Sends `hello` and expects backend `expect` to answer and to have received
/// exactly `hello`.
fn routed(farm: &Farm, hello: &[u8], expect: &str, what: &str) {
    let (answer, _) = send_hello(farm, &[hello]);
    assert_eq!(answer, expect, "{what}: answered by the wrong backend");
    let got = farm.backend(expect).next();
    assert!(
        got == hello,
        "{what}: the ClientHello changed on the way ({} bytes sent, {} got)",
        hello.len(),
        got.len()
    );
}

// ---------------------------------------------------------------------------
// 5. Routing by server name.

#[test]
fn server_names_pick_the_pool_and_the_hello_passes_untouched() {
    let farm = Farm::start("", "");
    let cases = [
        ("a.example.com", "a"),
        ("A.EXAMPLE.COM", "a"),
        ("A.Example.Com", "a"),
        ("x.b.example.com", "b"),
        ("X.B.EXAMPLE.COM", "b"),
        ("deep.x.b.example.com", "b"),
        // The wildcard is for subdomains only; exact names are exact.
        ("b.example.com", "c"),
        ("y.a.example.com", "c"),
        ("a.example.com.evil.test", "c"),
        ("other.test", "c"),
    ];
    for (n, (name, expect)) in cases.iter().enumerate() {
        routed(&farm, &client_hello(Some(name)), expect, name);
        assert_eq!(farm.connections(), n + 1, "{name}: one backend connection per session");
    }
    routed(&farm, &client_hello(None), "c", "no server_name");
    assert_eq!(farm.connections(), cases.len() + 1);
}

#[test]
fn a_hello_split_across_writes_is_still_routed() {
    let farm = Farm::start("", "");
    let hello = client_hello(Some("x.b.example.com"));
    // Cut inside the record header, then inside the server name.
    let name_at = hello.windows(3).position(|w| w == b"x.b").expect("name in hello") + 2;
    let (answer, _) = send_hello(&farm, &[&hello[..3], &hello[3..name_at], &hello[name_at..]]);
    assert_eq!(answer, "b");
    assert!(farm.b.next() == hello, "the split ClientHello changed on the way");

    // Two writes, cut just before the last byte.
    let hello = client_hello(Some("a.example.com"));
    let (answer, _) = send_hello(&farm, &[&hello[..hello.len() - 1], &hello[hello.len() - 1..]]);
    assert_eq!(answer, "a");
    assert!(farm.a.next() == hello);
    assert_eq!(farm.connections(), 2);
}

#[test]
fn a_hello_over_two_records_and_bytes_after_it_pass_untouched() {
    let farm = Farm::start("", "");
    let hello = client_hello_in_two_records("a.example.com", 40);
    routed(&farm, &hello, "a", "two records");

    // What the client sends after its ClientHello (here an application-data
    // record) goes along, in order, in the same session.
    let mut bytes = client_hello(Some("x.b.example.com"));
    bytes.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    routed(&farm, &bytes, "b", "hello and more");
}

/// A ClientHello shaped like a current browser's: GREASE values, ALPN,
/// status request, SCT, key share, PSK modes, compressed certificates, ALPS,
/// an ECH extension (the outer, public name in server_name), padding.
fn browser_like_client_hello(sni: &str) -> Vec<u8> {
    let mut b = vec![0x03, 0x03];
    b.extend((0..32u8).map(|i| i ^ 0x5c));
    b.push(32);
    b.extend((0..32u8).map(|i| i.wrapping_mul(13)));
    let suites = [0x8a, 0x8a, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9c];
    b.extend_from_slice(&u16be(suites.len()));
    b.extend_from_slice(&suites);
    b.extend_from_slice(&[1, 0]);
    let mut ext = Vec::new();
    ext.extend(extension(0x3a3a, &[])); // GREASE
    ext.extend(extension(0x0017, &[])); // extended_master_secret
    ext.extend(extension(0xff01, &[0])); // renegotiation_info
    ext.extend(extension(0x000a, &[0, 8, 0x4a, 0x4a, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]));
    ext.extend(extension(0x000b, &[1, 0])); // ec_point_formats
    ext.extend(extension(0x0023, &[])); // session_ticket
    ext.extend(server_name_extension(sni));
    ext.extend(extension(0x0010, &[0, 12, 2, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1']));
    ext.extend(extension(0x0005, &[1, 0, 0, 0, 0])); // status_request
    ext.extend(extension(0x000d, &[0, 8, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03]));
    ext.extend(extension(0x0012, &[])); // signed_certificate_timestamp
    let mut share = vec![0, 0x29, 0x5a, 0x5a, 0, 1, 0, 0x00, 0x1d, 0, 0x20];
    share.extend([0x42; 32]);
    ext.extend(extension(0x0033, &share)); // key_share: GREASE, X25519
    ext.extend(extension(0x002d, &[1, 1])); // psk_key_exchange_modes
    ext.extend(extension(0x002b, &[6, 0x6a, 0x6a, 0x03, 0x04, 0x03, 0x03])); // supported_versions
    ext.extend(extension(0x001b, &[2, 0, 2])); // compress_certificate: brotli
    ext.extend(extension(0x44cd, &[0, 3, 2, b'h', b'2'])); // application_settings (ALPS)
    let mut ech = vec![0, 0, 1, 0, 1, 0x7b, 0, 0x20];
    ech.extend([0x11; 32]);
    ech.extend_from_slice(&[0, 0x90]);
    ech.extend([0x22; 0x90]);
    ext.extend(extension(0xfe0d, &ech)); // encrypted_client_hello (outer)
    ext.extend(extension(0x0a0a, &[0])); // GREASE
    ext.extend(extension(0x0015, &[0; 37])); // padding
    b.extend_from_slice(&u16be(ext.len()));
    b.extend(ext);
    record(&handshake(&b))
}

#[test]
fn a_browser_like_client_hello_is_routed() {
    let farm = Farm::start("", "");
    routed(&farm, &browser_like_client_hello("x.b.example.com"), "b", "browser-like");
    routed(&farm, &browser_like_client_hello("a.example.com"), "a", "browser-like");
}

#[test]
fn behind_a_trusted_proxy_the_hello_after_its_header_is_routed() {
    let farm = Farm::start("accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]", "");
    let hello = client_hello(Some("a.example.com"));
    // Header and ClientHello in one write: the bytes after the header are
    // the ClientHello, and only they go on.
    let mut sent = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n".to_vec();
    sent.extend_from_slice(&hello);
    let (answer, _) = send_hello(&farm, &[&sent]);
    assert_eq!(answer, "a");
    assert!(farm.a.next() == hello, "expected the ClientHello alone, untouched");
    // Header in one write, ClientHello (v2 header this time) in another.
    let header = fulcrum_core::proxy::encode(
        ProxyVersion::V2,
        "203.0.113.7:5555".parse().expect("addr"),
        "127.0.0.1:443".parse().expect("addr"),
    );
    let hello = client_hello(Some("x.b.example.com"));
    let (answer, _) = send_hello(&farm, &[&header, &hello]);
    assert_eq!(answer, "b");
    assert!(farm.b.next() == hello);
}

#[test]
fn a_pool_with_proxy_protocol_gets_the_header_then_the_hello() {
    let farm = Farm::start("", "proxy_protocol = \"v2\"");
    let hello = client_hello(Some("a.example.com"));
    let (answer, me) = send_hello(&farm, &[&hello]);
    assert_eq!(answer, "a");
    let mut expected = fulcrum_core::proxy::encode(ProxyVersion::V2, me, farm.f.addr());
    expected.extend_from_slice(&hello);
    assert!(farm.a.next() == expected, "expected the v2 header, then the untouched ClientHello");
}

/// Runs `openssl s_client` against `addr` with `-servername name`, bounded;
/// it ends by itself once the backend answers with something that is not
/// TLS and closes.
fn openssl_client(addr: SocketAddr, name: &str) {
    let mut child = Command::new("/usr/bin/openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn openssl");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if child.try_wait().expect("try_wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Our own child, by its handle.
    let _ = child.kill();
    let _ = child.wait();
    panic!("openssl s_client did not finish within 10 s");
}

#[test]
fn a_real_openssl_client_hello_is_routed() {
    let farm = Farm::start("", "");
    openssl_client(farm.f.addr(), "x.b.example.com");
    let got = farm.b.next();
    // What openssl sent is random per run; the backend got a whole
    // ClientHello naming the server, from its first byte.
    assert_eq!(peek_server_name(&got), Ok(Peek::ServerName(Some("x.b.example.com".into()))));
    assert_eq!(got[0], 0x16);
    openssl_client(farm.f.addr(), "A.Example.COM");
    let got = farm.a.next();
    assert_eq!(peek_server_name(&got), Ok(Peek::ServerName(Some("a.example.com".into()))));
    assert_eq!(farm.connections(), 2);
}

// ---------------------------------------------------------------------------
// 6. What is not a ClientHello.

/// Reads until Fulcrum closes; a reset is a failure (the close must be clean).
fn read_clean_close(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            panic!("still open after {limit:?}")
        }
        Err(e) => panic!("not a clean close: {e}"),
    }
}

/// Sends `bytes` (then half-closes, if `half_close`) and expects a clean
/// close with nothing sent back, no backend connected, and `why` logged.
fn refused(farm: &Farm, bytes: &[u8], half_close: bool, why: &str) {
    let mut s = connect(farm.f.addr());
    s.write_all(bytes).expect("write");
    if half_close {
        s.shutdown(Shutdown::Write).expect("half-close");
    }
    // Well under the service's 10 s request_headers: only the verdict closes it.
    let got = read_clean_close(&mut s, Duration::from_secs(5));
    assert!(got.is_empty(), "{why}: got {:?}", got.escape_ascii().to_string());
    farm.f.proc.wait_log(&["tcp session refused", why], Duration::from_secs(5));
}

#[test]
fn what_is_not_a_client_hello_is_closed_cleanly_with_no_backend() {
    let farm = Farm::start("", "");
    refused(&farm, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n", false, "not TLS");

    // A bad record length (over TLS's 2^14).
    let mut hello = client_hello(Some("a.example.com"));
    hello[3..5].copy_from_slice(&u16be(0x4001));
    refused(&farm, &hello, false, "over TLS's 16384");

    // A server_name list whose length runs past its extension.
    let hello = client_hello(Some("a.example.com"));
    let ext = server_name_extension("a.example.com");
    // Past the extension's type and length: the list's own length.
    let at = hello.windows(ext.len()).position(|w| w == ext).expect("server_name in hello") + 4;
    let mut bad = hello.clone();
    bad[at..at + 2].copy_from_slice(&u16be(0x40));
    assert!(peek_server_name(&bad).is_err(), "the corruption must break the hello");
    refused(&farm, &bad, false, "malformed TLS ClientHello");

    // A handshake message that is not a ClientHello.
    let mut hello = client_hello(Some("a.example.com"));
    hello[5] = 2;
    refused(&farm, &hello, false, "not ClientHello");

    // Truncated, then the client half-closes.
    let hello = client_hello(Some("a.example.com"));
    refused(&farm, &hello[..hello.len() / 2], true, "ClientHello incomplete");
    refused(&farm, &hello[..3], true, "ClientHello incomplete");
    refused(&farm, b"", true, "ClientHello incomplete");

    assert_eq!(farm.connections(), 0, "a refused session reached a backend");
}

#[test]
fn a_stalled_client_hello_is_closed_after_request_headers() {
    let farm = Farm::start("timeouts = { request_headers = \"300ms\" }", "");
    let hello = client_hello(Some("a.example.com"));
    let start = Instant::now();
    let mut s = connect(farm.f.addr());
    s.write_all(&hello[..hello.len() - 10]).expect("write");
    let got = read_clean_close(&mut s, Duration::from_secs(5));
    let waited = start.elapsed();
    assert!(got.is_empty());
    assert!(waited >= Duration::from_millis(290), "closed after {waited:?}, before request_headers");
    farm.f.proc.wait_log(&["tcp session refused: ClientHello incomplete"], Duration::from_secs(5));

    // A client that connects and sends nothing is the same.
    let mut s = connect(farm.f.addr());
    assert!(read_clean_close(&mut s, Duration::from_secs(5)).is_empty());
    assert_eq!(farm.connections(), 0);
}
