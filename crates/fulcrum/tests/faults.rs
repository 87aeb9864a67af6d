//! Failing backends, black-box (issue 6, point 3, with the response half of
//! point 5): a fault-injecting relay sits between Fulcrum and a backend that
//! logs the id of every request it receives whole. A client of Fulcrum must
//! get 502 or 504 promptly and never hang; a broken response body must end
//! in a closed connection, never in a message that looks finished; and no
//! request that may have reached the backend is sent again unless it is
//! idempotent and failed on a reused connection before any response byte
//! (RFC 9112 §9.3.1). The seeded soak counts duplicates and losses per id.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{config, Fulcrum};

/// Fulcrum's `backend_response` here: a stall longer than this is a 504.
const BACKEND_RESPONSE: Duration = Duration::from_millis(400);
/// How long a stall holds the bytes it holds: well past `BACKEND_RESPONSE`.
const STALL: Duration = Duration::from_millis(1200);
/// The longest any one client read may block before it counts as a hang.
const HANG: Duration = Duration::from_secs(5);
/// The longest an exchange may take, failed or not: "promptly".
const PROMPT: Duration = Duration::from_secs(3);
/// Bounds every read of the relay and the backend, so no thread outlives a test by much.
const IDLE_BOUND: Duration = Duration::from_secs(30);
/// The end of every chunked body the backend sends (no trailers).
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------- messages

/// How a message body is delimited, as far as these tests need to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// The value of the first `name` field of `head`.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The framing of a well-formed head; `None` for anything the relay should
/// not guess about.
fn framing(head: &str, response: bool) -> Option<Framing> {
    match (header(head, "transfer-encoding"), header(head, "content-length")) {
        (Some(te), None) if te.eq_ignore_ascii_case("chunked") => Some(Framing::Chunked),
        (None, Some(n)) => n.parse().ok().map(Framing::Length),
        (None, None) if response => Some(Framing::Close),
        (None, None) => Some(Framing::Length(0)),
        _ => None,
    }
}

/// Where a chunked body at the start of `buf` ends: `Ok(None)` while
/// incomplete, `Err` when malformed. Strict: plain hex sizes, CRLF only.
fn chunked_end(buf: &[u8]) -> Result<Option<usize>, ()> {
    let mut pos = 0;
    for _ in 0..1_000_000 {
        let Some(eol) = find(&buf[pos..], b"\r\n") else { return Ok(None) };
        let line = &buf[pos..pos + eol];
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(());
        }
        let size = usize::from_str_radix(std::str::from_utf8(digits).map_err(|_| ())?, 16).map_err(|_| ())?;
        pos += eol + 2;
        if size == 0 {
            // Trailer lines, then the empty line that ends the body.
            for _ in 0..100 {
                let Some(eol) = find(&buf[pos..], b"\r\n") else { return Ok(None) };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
            return Err(());
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(());
        }
        pos += size + 2;
    }
    Err(())
}

/// The payload of a complete, valid chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let digits = raw[..eol].split(|&b| b == b';').next().unwrap_or_default();
        let size = usize::from_str_radix(&String::from_utf8_lossy(digits), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    out
}

/// Reads more of `s` into `buf`; 0 at EOF, on a reset or after `IDLE_BOUND`.
fn read_more(mut s: &TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk) {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

/// Reads until `buf` starts with a whole head; its length, or `None` at EOF.
fn fill_head(s: &TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    for _ in 0..10_000 {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            return Some(i + 4);
        }
        if buf.len() > 64 * 1024 || read_more(s, buf) == 0 {
            return None;
        }
    }
    None
}

/// Reads until the message whose head is `buf[..head_len]` is whole; where
/// it ends, or `None` at EOF or on bad framing. A close-delimited body ends
/// at EOF.
fn fill_message(s: &TcpStream, buf: &mut Vec<u8>, head_len: usize, framing: Framing) -> Option<usize> {
    for _ in 0..100_000 {
        let end = match framing {
            Framing::Length(n) => (buf.len() >= head_len + n).then_some(head_len + n),
            Framing::Chunked => chunked_end(&buf[head_len..]).ok()?.map(|e| head_len + e),
            Framing::Close => None,
        };
        if end.is_some() {
            return end;
        }
        if read_more(s, buf) == 0 {
            return (framing == Framing::Close).then_some(buf.len());
        }
    }
    None
}

/// The body the backend sends for request `id`: the id over and over, so a
/// body that lost or gained bytes, or belongs to another request, shows.
fn body_of(id: u64, len: usize) -> Vec<u8> {
    format!("<{id}>").into_bytes().into_iter().cycle().take(len).collect()
}

/// A request tagged with `id`; a POST carries `body` bytes.
fn request(method: &str, path: &str, id: u64, body: usize) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: faults\r\nX-Request-Id: {id}\r\n");
    if method == "POST" {
        head.push_str(&format!("Content-Length: {body}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if method == "POST" {
        out.extend(body_of(id, body));
    }
    out
}

// ----------------------------------------------------------------- backend

/// Responses no proxy may pass on (each hides `SMUGGLED` in what a lenient
/// parser would take for a body or a next message); `/bad/NAME` sends one.
const BAD_HEADS: &[(&str, &[u8])] = &[
    ("cl-te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("te-cl", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("te-chunked-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("te-twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("te-space-colon", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("cl-twice", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 8\r\n\r\nSMUGGLED"),
    ("cl-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 8\r\n\r\nSMUGGLED"),
    ("cl-sign", b"HTTP/1.1 200 OK\r\nContent-Length: +8\r\n\r\nSMUGGLED"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 8\n\nSMUGGLED"),
    ("bare-lf-one-line", b"HTTP/1.1 200 OK\r\nContent-Length: 8\nX-A: b\r\n\r\nSMUGGLED"),
    ("bare-cr", b"HTTP/1.1 200 OK\r\nX-A: b\rContent-Length: 8\r\n\r\nSMUGGLED"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-A: b\r\n c\r\n\r\nSMUGGLED"),
    ("nul", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-A: b\0c\r\n\r\nSMUGGLED"),
    ("status", b"HTTP/1.1 2000 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"),
];

/// Responses whose head is fine and whose chunked body breaks;
/// `/bad-body/NAME` sends one. What follows the break must not reach a client.
const BAD_BODIES: &[(&str, &[u8])] = &[
    ("size-garbage", b"5\r\nhello\r\nzz\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("size-hex-prefix", b"5\r\nhello\r\n0x8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("size-negative", b"5\r\nhello\r\n-8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("size-overflow", b"5\r\nhello\r\nfffffffffffffffffffff\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("size-bare-lf", b"5\r\nhello\r\n8\nSMUGGLED\r\n0\r\n\r\n"),
    ("data-overrun", b"5\r\nhelloSMUGGLED\r\n0\r\n\r\n"),
];

/// What a backend that switches protocols sends.
const SWITCH: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nSMUGGLED";

/// The backend's answer to request `id` for `path`, and whether it closes
/// after it: `/r/LEN` has a Content-Length body of LEN bytes, `/c/LEN` a
/// chunked one, `/u/LEN` one delimited by the close.
fn reply(id: u64, path: &str) -> (Vec<u8>, bool) {
    if let Some(name) = path.strip_prefix("/bad/") {
        let (_, canned) = BAD_HEADS.iter().find(|(n, _)| *n == name).expect("known bad response");
        return (canned.to_vec(), true);
    }
    if let Some(name) = path.strip_prefix("/bad-body/") {
        let (_, body) = BAD_BODIES.iter().find(|(n, _)| *n == name).expect("known bad body");
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        out.extend_from_slice(body);
        return (out, true);
    }
    let len: usize = path.get(3..).and_then(|l| l.parse().ok()).unwrap_or(0);
    let body = body_of(id, len);
    let head =
        |framing: &str| format!("HTTP/1.1 200 OK\r\nX-Request-Id: {id}\r\n{framing}\r\n\r\n").into_bytes();
    match path.get(..3) {
        Some("/c/") => {
            let mut out = head("Transfer-Encoding: chunked");
            for chunk in body.chunks(700) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(LAST_CHUNK);
            (out, false)
        }
        Some("/u/") => {
            let mut out = head("Connection: close");
            out.extend(body);
            (out, true)
        }
        _ => {
            let mut out = head(&format!("Content-Length: {len}"));
            out.extend(body);
            (out, false)
        }
    }
}

/// Bytes of the backend's response head for `path`.
fn reply_head_len(id: u64, path: &str) -> usize {
    find(&reply(id, path).0, b"\r\n\r\n").expect("head end") + 4
}

/// A hand-rolled backend that records every request it received whole
/// (head and body, by its framing) with its `X-Request-Id`, then answers it
/// by [`reply`]. A request broken off mid-way is not recorded: it did not
/// reach the application. It switches protocols for `/switch` and for any
/// `Upgrade: h2c`, as a backend that trusts its proxy would.
struct LogBackend {
    addr: SocketAddr,
    received: Arc<Received>,
}

/// Every request a backend received whole: its `X-Request-Id` and its head.
type Received = Mutex<Vec<(Option<u64>, String)>>;

impl LogBackend {
    fn start() -> LogBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().take(10_000) {
                let Ok(s) = s else { continue };
                let log = log.clone();
                std::thread::spawn(move || serve_logged(s, &log));
            }
        });
        LogBackend { addr, received }
    }

    /// How many times request `id` was received whole.
    fn count(&self, id: u64) -> usize {
        lock(&self.received).iter().filter(|(i, _)| *i == Some(id)).count()
    }

    fn head(&self, id: u64) -> Option<String> {
        lock(&self.received).iter().find(|(i, _)| *i == Some(id)).map(|(_, h)| h.clone())
    }
}

fn serve_logged(s: TcpStream, log: &Received) {
    let _ = s.set_read_timeout(Some(IDLE_BOUND));
    let mut buf = Vec::new();
    for _ in 0..100_000 {
        let Some(head_len) = fill_head(&s, &mut buf) else { return };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let Some(framing) = framing(&head, false) else { return };
        let Some(end) = fill_message(&s, &mut buf, head_len, framing) else { return };
        buf.drain(..end);
        let id = header(&head, "x-request-id").and_then(|v| v.parse().ok());
        lock(log).push((id, head.clone()));
        let path = head.split(' ').nth(1).unwrap_or("/");
        let h2c = header(&head, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("h2c"));
        let (answer, close) =
            if path == "/switch" || h2c { (SWITCH.to_vec(), true) } else { reply(id.unwrap_or(0), path) };
        if (&s).write_all(&answer).is_err() || close {
            return;
        }
    }
}

// ------------------------------------------------------------------- relay

/// A fault the relay injects into one exchange (one request and its response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Forwards `after` bytes of the request (all of it, if fewer), then
    /// resets the connection to Fulcrum (RST, by SO_LINGER 0) and closes the
    /// backend's; no response byte goes out.
    ResetRequest {
        after: usize,
    },
    /// Forwards `after` bytes of the response, then closes (FIN).
    CloseResponse {
        after: usize,
    },
    /// Forwards `after` bytes of the response, then resets.
    ResetResponse {
        after: usize,
    },
    /// Forwards `after` bytes of the response, holds the rest for `hold`.
    Stall {
        after: usize,
        hold: Duration,
    },
    /// Holds the whole response for this long (less than `backend_response`).
    Latency(Duration),
    /// Forwards a chunked response without its last chunk, then closes.
    TruncateChunked,
    /// Forwards a response `short` bytes short of its Content-Length, then closes.
    ShortLength {
        short: usize,
    },
}

/// One request as the relay saw it go by.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    id: Option<u64>,
    /// The relay connection it came on (Fulcrum's backend connection).
    conn: usize,
    /// Its place on that connection: above 0, Fulcrum reused the connection.
    index: usize,
    mode: Mode,
    /// Bytes of the request as Fulcrum sent it, head and body.
    length: Option<usize>,
}

impl Attempt {
    /// Whether the whole request reached the backend.
    fn reached(&self) -> bool {
        match self.mode {
            Mode::ResetRequest { after } => self.length.is_some_and(|l| after >= l),
            _ => true,
        }
    }
}

/// What the relay does, switchable while traffic runs.
struct Faults {
    /// The fault for requests without a plan of their own.
    mode: Mutex<Mode>,
    /// One-shot faults by request id: the first attempt meets its fault, a
    /// retry of the same request does not (a transient failure).
    plan: Mutex<HashMap<u64, Mode>>,
    attempts: Mutex<Vec<Attempt>>,
}

impl Faults {
    fn take(&self, id: Option<u64>) -> Mode {
        let planned = id.and_then(|id| lock(&self.plan).remove(&id));
        planned.unwrap_or_else(|| *lock(&self.mode))
    }
}

/// A TCP proxy on 127.0.0.1:0 in front of one backend, injecting faults
/// per exchange; it parses just enough HTTP/1.1 to know where messages end.
struct Relay {
    addr: SocketAddr,
    faults: Arc<Faults>,
}

impl Relay {
    fn start(backend: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let faults = Arc::new(Faults {
            mode: Mutex::new(Mode::Pass),
            plan: Mutex::new(HashMap::new()),
            attempts: Mutex::new(Vec::new()),
        });
        let f = faults.clone();
        std::thread::spawn(move || {
            for (conn, front) in listener.incoming().take(10_000).enumerate() {
                let Ok(front) = front else { continue };
                let f = f.clone();
                std::thread::spawn(move || relay(front, backend, &f, conn));
            }
        });
        Relay { addr, faults }
    }

    fn set(&self, mode: Mode) {
        *lock(&self.faults.mode) = mode;
    }

    fn plan(&self, id: u64, mode: Mode) {
        lock(&self.faults.plan).insert(id, mode);
    }

    fn attempts(&self, id: u64) -> Vec<Attempt> {
        lock(&self.faults.attempts).iter().filter(|a| a.id == Some(id)).copied().collect()
    }
}

/// One relayed connection: Fulcrum's side and the backend's, shared by the
/// two pumps.
struct Link {
    front: TcpStream,
    back: TcpStream,
    /// Set once `front` is to end in a reset rather than a FIN.
    reset: AtomicBool,
}

impl Link {
    /// Ends the connection to Fulcrum with a reset: SO_LINGER 0 makes the
    /// last close send RST. Shutting reads wakes both pumps without a FIN.
    fn reset(&self) {
        let _ = socket2::SockRef::from(&self.front).set_linger(Some(Duration::ZERO));
        self.reset.store(true, Ordering::SeqCst);
        let _ = self.front.shutdown(Shutdown::Read);
        let _ = self.back.shutdown(Shutdown::Both);
    }

    /// Ends both sides with a FIN, unless a reset is under way.
    fn close(&self) {
        if !self.reset.load(Ordering::SeqCst) {
            let _ = self.front.shutdown(Shutdown::Both);
        }
        let _ = self.back.shutdown(Shutdown::Both);
    }
}

fn relay(front: TcpStream, backend: SocketAddr, faults: &Faults, conn: usize) {
    let Ok(back) = TcpStream::connect(backend) else { return };
    for s in [&front, &back] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(IDLE_BOUND));
    }
    let link = Arc::new(Link { front, back, reset: AtomicBool::new(false) });
    let (tx, rx) = mpsc::channel();
    let down = {
        let link = link.clone();
        std::thread::spawn(move || downstream(&link, &rx))
    };
    upstream(&link, &tx, faults, conn);
    drop(tx);
    link.close();
    let _ = down.join();
    // The last reference closes both sockets: with a reset if one was set up.
}

/// Pumps requests from Fulcrum to the backend one at a time, each under the
/// fault it draws, which it hands to the response pump.
fn upstream(link: &Link, tx: &mpsc::Sender<Mode>, faults: &Faults, conn: usize) {
    let mut buf = Vec::new();
    for index in 0..100_000 {
        let Some(head_len) = fill_head(&link.front, &mut buf) else { return };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let Some(framing) = framing(&head, false) else { return };
        let id = header(&head, "x-request-id").and_then(|v| v.parse().ok());
        let mode = faults.take(id);
        let length = match framing {
            Framing::Length(n) => Some(head_len + n),
            _ => None,
        };
        lock(&faults.attempts).push(Attempt { id, conn, index, mode, length });
        if tx.send(mode).is_err() {
            return;
        }
        let limit = match mode {
            Mode::ResetRequest { after } => Some(after),
            _ => None,
        };
        let mut sent = 0;
        for _ in 0..100_000 {
            let end = match framing {
                Framing::Length(n) => Some(head_len + n),
                _ => match chunked_end(&buf[head_len..]) {
                    Ok(end) => end.map(|e| head_len + e),
                    Err(()) => return,
                },
            };
            let upto = end.unwrap_or(buf.len()).min(buf.len()).min(limit.unwrap_or(usize::MAX));
            if upto > sent {
                if (&link.back).write_all(&buf[sent..upto]).is_err() {
                    return;
                }
                sent = upto;
            }
            let done = end == Some(sent);
            if limit.is_some_and(|l| sent >= l) || (limit.is_some() && done) {
                // The backend has had its say once it closes after our FIN
                // (it records a whole request before that): only then is
                // Fulcrum told, so the test's count cannot race the 502.
                let _ = link.back.shutdown(Shutdown::Write);
                let mut sink = Vec::new();
                for _ in 0..10_000 {
                    sink.clear();
                    if read_more(&link.back, &mut sink) == 0 {
                        break;
                    }
                }
                link.reset();
                return;
            }
            if done {
                buf.drain(..sent);
                break;
            }
            if read_more(&link.front, &mut buf) == 0 {
                return;
            }
        }
    }
}

/// Pumps responses from the backend to Fulcrum, each whole-read first and
/// then delivered under its exchange's fault.
fn downstream(link: &Link, rx: &mpsc::Receiver<Mode>) {
    let mut buf = Vec::new();
    while let Ok(mode) = rx.recv() {
        if let Mode::ResetRequest { .. } = mode {
            return; // the request pump resets; no response byte goes out
        }
        let Some(head_len) = fill_head(&link.back, &mut buf) else { return link.close() };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let framing = framing(&head, true).unwrap_or(Framing::Close);
        let Some(end) = fill_message(&link.back, &mut buf, head_len, framing) else { return link.close() };
        let response: Vec<u8> = buf.drain(..end).collect();
        if !deliver(link, &response, head_len, framing, mode) || framing == Framing::Close {
            return link.close();
        }
    }
}

/// Sends `response` to Fulcrum under `mode`; false when the connection is
/// finished (by the fault, or because Fulcrum went away).
fn deliver(link: &Link, response: &[u8], head_len: usize, framing: Framing, mode: Mode) -> bool {
    let mut front = &link.front;
    let len = response.len();
    let cut_then = |n: usize, end: &dyn Fn()| {
        let _ = (&link.front).write_all(&response[..n.min(len)]);
        end();
        false
    };
    match mode {
        Mode::Pass | Mode::ResetRequest { .. } => front.write_all(response).is_ok(),
        Mode::Latency(delay) => {
            std::thread::sleep(delay);
            front.write_all(response).is_ok()
        }
        Mode::Stall { after, hold } => {
            let after = after.min(len);
            if front.write_all(&response[..after]).is_err() {
                return false;
            }
            std::thread::sleep(hold);
            front.write_all(&response[after..]).is_ok()
        }
        Mode::CloseResponse { after } => cut_then(after, &|| link.close()),
        Mode::ResetResponse { after } => cut_then(after, &|| link.reset()),
        Mode::TruncateChunked if framing == Framing::Chunked => {
            cut_then(len - LAST_CHUNK.len(), &|| link.close())
        }
        Mode::TruncateChunked => cut_then(len - 1, &|| link.close()),
        Mode::ShortLength { short } => cut_then(len - short.min(len - head_len), &|| link.close()),
    }
}

// ------------------------------------------------------------------ client

/// What a client of Fulcrum saw for one request.
#[derive(Debug)]
enum Seen {
    /// A whole response; a chunked body is decoded.
    Whole { status: u16, head: String, body: Vec<u8> },
    /// A response head, then the connection ended before the body did
    /// (`reset`: by an error rather than EOF); the raw bytes after the head.
    Cut { status: u16, reset: bool, raw: Vec<u8> },
    /// The connection ended before a whole response head (and how).
    #[allow(dead_code)] // read through Debug, in failure messages
    Nothing(String),
}

impl std::fmt::Display for Seen {
    /// The status, framing and size: enough to judge an exchange without a dump of its body.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Whole { status, head, body } => {
                let first = head.lines().next().unwrap_or_default();
                write!(f, "a whole response ({first:?}, {} body bytes", body.len())?;
                match header(head, "connection") {
                    Some(c) => write!(f, ", Connection: {c})"),
                    None => write!(f, ")"),
                }?;
                if *status >= 500 {
                    write!(f, ": {:?}", String::from_utf8_lossy(body).trim_end())?;
                }
                Ok(())
            }
            Seen::Cut { status, reset, raw } => {
                let how = if *reset { "a reset" } else { "EOF" };
                write!(f, "a {status} response cut short by {how} after {} body bytes", raw.len())
            }
            Seen::Nothing(why) => write!(f, "no response: {why}"),
        }
    }
}

impl Seen {
    fn status(&self) -> Option<u16> {
        match self {
            Seen::Whole { status, .. } | Seen::Cut { status, .. } => Some(*status),
            Seen::Nothing(_) => None,
        }
    }

    /// Whether the client must open a new connection for its next request.
    fn closes(&self) -> bool {
        match self {
            Seen::Whole { head, .. } => {
                header(head, "connection").is_some_and(|c| c.eq_ignore_ascii_case("close"))
            }
            _ => true,
        }
    }

    /// Whether this is the whole 200 response to request `id` for `path`.
    fn is_answer_to(&self, id: u64, path: &str) -> bool {
        let len: usize = path.get(3..).and_then(|l| l.parse().ok()).unwrap_or(0);
        matches!(self, Seen::Whole { status: 200, head, body }
            if header(head, "x-request-id") == Some(id.to_string().as_str()) && *body == body_of(id, len))
    }
}

/// One client connection to Fulcrum; every read is bounded by `HANG`, and
/// running into that bound fails the test: Fulcrum must never leave a
/// client waiting.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect to fulcrum");
        s.set_read_timeout(Some(HANG)).expect("read timeout");
        s.set_nodelay(true).expect("nodelay");
        Client { s, buf: Vec::new() }
    }

    /// Reads more; `Ok(0)` at EOF, `Err` on a reset.
    fn fill(&mut self, what: &str) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no {what} from fulcrum within {HANG:?}: a hang")
            }
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, request: &[u8]) -> Seen {
        if let Err(e) = self.s.write_all(request) {
            return Seen::Nothing(format!("writing the request: {e}"));
        }
        self.response()
    }

    fn response(&mut self) -> Seen {
        let started = Instant::now();
        let head_len = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(started.elapsed() < HANG, "a response head trickling for {HANG:?}");
            match self.fill("response head") {
                Ok(0) => return Seen::Nothing(format!("EOF after {} head bytes", self.buf.len())),
                Err(e) => return Seen::Nothing(format!("{e} after {} head bytes", self.buf.len())),
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let framing =
            framing(&head, true).unwrap_or_else(|| panic!("fulcrum sent an ambiguous head: {head:?}"));
        loop {
            let end = match framing {
                Framing::Length(n) => (self.buf.len() >= head_len + n).then_some(head_len + n),
                Framing::Chunked => chunked_end(&self.buf[head_len..])
                    .unwrap_or_else(|()| panic!("fulcrum sent broken chunks after {head:?}"))
                    .map(|e| head_len + e),
                Framing::Close => None,
            };
            if let Some(end) = end {
                let raw: Vec<u8> = self.buf.drain(..end).skip(head_len).collect();
                let body = if framing == Framing::Chunked { dechunk(&raw) } else { raw };
                return Seen::Whole { status, head, body };
            }
            assert!(started.elapsed() < 2 * HANG, "a response body trickling for {:?}", 2 * HANG);
            let raw = |c: &Client| c.buf[head_len..].to_vec();
            match self.fill("response body") {
                Ok(0) if framing == Framing::Close => {
                    return Seen::Whole { status, head, body: self.buf.drain(..).skip(head_len).collect() }
                }
                Ok(0) => return Seen::Cut { status, reset: false, raw: raw(self) },
                Err(_) => return Seen::Cut { status, reset: true, raw: raw(self) },
                Ok(_) => {}
            }
        }
    }
}

// ----------------------------------------------------------------- fulcrum

/// Fulcrum in http mode in front of `backend` with short timeouts, one
/// retry, no health checks and no passive ejection (they would turn the
/// injected faults into 503s); `pooled` keeps idle backend connections.
fn fulcrum_to(backend: SocketAddr, pooled: bool) -> Fulcrum {
    let service = format!(
        "retries = 1\n[service.timeouts]\nconnect = \"500ms\"\nbackend_response = \"{}ms\"\nrequest_headers = \"2s\"",
        BACKEND_RESPONSE.as_millis()
    );
    let pool = format!(
        "{}[pool.health]\nkind = \"none\"\n[pool.passive]\nconsecutive_failures = 0",
        if pooled { "" } else { "max_idle_per_backend = 0\n" }
    );
    Fulcrum::start(&config("http", &[("b", backend, 1)], &service, &pool), 1)
}

/// Switches the relay to `mode` and sends one request on a new connection;
/// what the client saw and how long it took.
fn one(f: &Fulcrum, relay: &Relay, method: &str, path: &str, id: u64, mode: Mode) -> (Seen, Duration) {
    relay.set(mode);
    let started = Instant::now();
    let seen =
        Client::connect(f.addr()).send(&request(method, path, id, if method == "POST" { 3000 } else { 0 }));
    (seen, started.elapsed())
}

// ------------------------------------------------------------------- tests

#[test]
fn a_request_reset_on_its_way_is_502_and_never_replayed() {
    let backend = LogBackend::start();
    let relay = Relay::start(backend.addr);
    let f = fulcrum_to(relay.addr, false);
    // `after` bytes of the forwarded request get through: none, part of the
    // request line, part of a POST body, all of it (the backend has it).
    let cases = [
        ("GET", 0),
        ("GET", 16),
        ("GET", usize::MAX),
        ("POST", 0),
        ("POST", 16),
        ("POST", 1000),
        ("POST", usize::MAX),
    ];
    for (id, (method, after)) in (1..).zip(cases) {
        let (seen, took) = one(&f, &relay, method, "/r/100", id, Mode::ResetRequest { after });
        assert!(matches!(seen, Seen::Whole { status: 502, .. }), "{method} reset after {after}: {seen}");
        assert!(took < PROMPT, "{method} reset after {after}: answered in {took:?}");
        let reached = usize::from(after == usize::MAX);
        assert_eq!(backend.count(id), reached, "{method} reset after {after}: received by the backend");
        assert_eq!(
            relay.attempts(id).len(),
            1,
            "{method} reset after {after} on a new connection was sent again"
        );
    }
    let (seen, _) = one(&f, &relay, "POST", "/r/100", 99, Mode::Pass);
    assert!(seen.is_answer_to(99, "/r/100"), "{seen}");
}

#[test]
fn a_large_upload_reset_mid_way_still_gets_its_502() {
    let backend = LogBackend::start();
    let relay = Relay::start(backend.addr);
    let f = fulcrum_to(relay.addr, false);
    relay.plan(1, Mode::ResetRequest { after: 100_000 });
    let mut client = Client::connect(f.addr());
    // Far more than socket buffers hold, so Fulcrum cannot have read it all.
    let total = 64 << 20;
    let head =
        format!("POST /r/10 HTTP/1.1\r\nHost: faults\r\nX-Request-Id: 1\r\nContent-Length: {total}\r\n\r\n");
    let mut writer = client.s.try_clone().expect("clone");
    // Fulcrum stops reading the body when the backend goes: write from
    // another thread, so the client can read the answer meanwhile.
    let upload = std::thread::spawn(move || {
        writer.set_write_timeout(Some(HANG)).expect("write timeout");
        writer.write_all(head.as_bytes())?;
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..total / block.len() {
            writer.write_all(&block)?;
        }
        Ok::<(), std::io::Error>(())
    });
    let started = Instant::now();
    let seen = client.response();
    assert!(matches!(seen, Seen::Whole { status: 502, .. }), "{seen}");
    assert!(started.elapsed() < PROMPT, "answered in {:?}", started.elapsed());
    let _ = upload.join().expect("upload thread"); // ends by error once Fulcrum closes, or by its timeout
    assert_eq!(backend.count(1), 0);
}

#[test]
fn a_failed_reused_connection_retries_only_bodiless_idempotent_requests() {
    let backend = LogBackend::start();
    let relay = Relay::start(backend.addr);
    let f = fulcrum_to(relay.addr, true);
    // Faults that end the exchange before any response byte, after the
    // whole request reached the backend.
    let faults = [
        Mode::ResetRequest { after: usize::MAX },
        Mode::CloseResponse { after: 0 },
        Mode::ResetResponse { after: 0 },
    ];
    let mut id = 0;
    for method in ["GET", "POST"] {
        for fault in faults {
            let mut client = Client::connect(f.addr());
            id += 1;
            let warm = client.send(&request("GET", "/r/10", id, 0));
            assert!(warm.is_answer_to(id, "/r/10"), "{warm}");
            let warm_conn = relay.attempts(id)[0].conn;
            // Fulcrum pools the backend connection before it reads the next
            // request from this client, so the next exchange reuses it.
            id += 1;
            relay.plan(id, fault);
            let started = Instant::now();
            let seen = client.send(&request(method, "/r/10", id, 500));
            assert!(started.elapsed() < PROMPT, "{method} {fault:?}: answered in {:?}", started.elapsed());
            let attempts = relay.attempts(id);
            assert!(
                attempts[0].conn == warm_conn && attempts[0].index > 0,
                "{method} {fault:?}: not on the reused connection {warm_conn}: {attempts:?}"
            );
            if method == "GET" {
                assert!(seen.is_answer_to(id, "/r/10"), "GET {fault:?}: {seen}");
                assert_eq!(attempts.len(), 2, "GET {fault:?}: one retry on a new connection: {attempts:?}");
                assert_eq!(
                    attempts[1].index, 0,
                    "GET {fault:?}: the retry reused a connection: {attempts:?}"
                );
                assert_eq!(backend.count(id), 2, "GET {fault:?}: received by the backend");
            } else {
                assert!(matches!(seen, Seen::Whole { status: 502, .. }), "POST {fault:?}: {seen}");
                assert_eq!(attempts.len(), 1, "POST {fault:?} was replayed: {attempts:?}");
                assert_eq!(backend.count(id), 1, "POST {fault:?}: received by the backend");
            }
        }
    }
}

#[test]
fn a_response_broken_before_its_head_ends_is_502() {
    let backend = LogBackend::start();
    let relay = Relay::start(backend.addr);
    let f = fulcrum_to(relay.addr, false);
    let head_len = reply_head_len(1, "/r/100");
    let faults = [
        Mode::CloseResponse { after: 0 },
        Mode::CloseResponse { after: 10 },
        Mode::CloseResponse { after: head_len - 1 },
        Mode::ResetResponse { after: 0 },
        Mode::ResetResponse { after: 10 },
    ];
    let mut id = 0;
    for method in ["GET", "POST"] {
        for fault in faults {
            id += 1;
            let (seen, took) = one(&f, &relay, method, "/r/100", id, fault);
            assert!(matches!(seen, Seen::Whole { status: 502, .. }), "{method} {fault:?}: {seen}");
            assert!(took < PROMPT, "{method} {fault:?}: answered in {took:?}");
            assert_eq!(relay.attempts(id).len(), 1, "{method} {fault:?} was sent again");
            assert_eq!(backend.count(id), 1, "{method} {fault:?}: received by the backend");
        }
    }
}

#[test]
fn a_stalled_backend_is_504_promptly_and_latency_is_no_fault() {
    let backend = LogBackend::start();
    let relay = Relay::start(backend.addr);
    let f = fulcrum_to(relay.addr, false);
    for (id, after) in [(1, 0), (2, 10)] {
        let (seen, took) = one(&f, &relay, "GET", "/r/100", id, Mode::Stall { after, hold: STALL });
        assert!(matches!(seen, Seen::Whole { status: 504, .. }), "stall after {after}: {seen}");
        assert!(took >= BACKEND_RESPONSE && took < PROMPT, "stall after {after}: answered in {took:?}");
    }
    let (seen, took) = one(&f, &relay, "POST", "/r/100", 3, Mode::Stall { after: 0, hold: STALL });
    assert!(matches!(seen, Seen::Whole { status: 504, .. }), "{seen}");
    assert!(took < PROMPT, "answered in {took:?}");
    assert_eq!(backend.count(3), 1);
    assert_eq!(relay.attempts(3).len(), 1, "a timed-out POST was sent again");
    for (id, path) in [(4, "/r/5000"), (5, "/c/5000")] {
        let (seen, took) = one(&f, &relay, "GET", path, id, Mode::Latency(BACKEND_RESPONSE / 4));
        assert!(seen.is_answer_to(id, path), "{path} with latency: {seen}");
        assert!(took >= BACKEND_RESPONSE / 4, "{took:?}");
    }
}

#[test]
fn a_response_body_cut_short_closes_the_client_connection() {
    let backend = LogBackend::start();
    let relay = Relay::start(backend.addr);
    let f = fulcrum_to(relay.addr, false);
    let head = reply_head_len(1, "/r/5000");
    let chunked_head = reply_head_len(1, "/c/5000");
    let cases = [
        ("/r/5000", Mode::ShortLength { short: 1 }),
        ("/r/5000", Mode::CloseResponse { after: head + 2000 }),
        ("/r/5000", Mode::ResetResponse { after: head + 2000 }),
        ("/r/5000", Mode::Stall { after: head + 2000, hold: STALL }),
        ("/c/5000", Mode::TruncateChunked),
        ("/c/5000", Mode::CloseResponse { after: chunked_head + 1000 }),
        ("/c/5000", Mode::ResetResponse { after: chunked_head + 1000 }),
        ("/c/5000", Mode::Stall { after: chunked_head + 1000, hold: STALL }),
    ];
    for (id, (path, fault)) in (1..).zip(cases) {
        let (seen, took) = one(&f, &relay, "GET", path, id, fault);
        // An HTTP/1.1 client sees the end come before the announced length
        // or the last chunk: the response cannot pass for a finished one.
        assert!(matches!(seen, Seen::Cut { status: 200, .. }), "{path} {fault:?}: {seen}");
        assert!(took < PROMPT, "{path} {fault:?}: cut after {took:?}");
        assert_eq!(relay.attempts(id).len(), 1, "{path} {fault:?}");
    }
}

#[test]
fn a_close_delimited_body_broken_midway_ends_in_a_reset() {
    // A body delimited by the close (a backend's without length or chunks,
    // or a chunked one re-framed for an HTTP/1.0 client) has no end marker:
    // a FIN after a broken one passes for the end of a whole response. Only
    // a reset, or chunks toward an HTTP/1.1 client, tell the client it is not.
    let backend = LogBackend::start();
    let relay = Relay::start(backend.addr);
    let f = fulcrum_to(relay.addr, false);
    let get = |version: &str, path: &str, id: u64| {
        format!("GET {path} HTTP/{version}\r\nHost: faults\r\nX-Request-Id: {id}\r\n\r\n").into_bytes()
    };
    for (id, path) in [(1, "/c/5000"), (2, "/u/5000")] {
        relay.set(Mode::Pass);
        let whole = Client::connect(f.addr()).send(&get("1.0", path, id));
        assert!(whole.is_answer_to(id, path), "HTTP/1.0 {path}: {whole}");
    }
    let cases = [
        (3, "1.0", "/c/5000", Mode::CloseResponse { after: reply_head_len(3, "/c/5000") + 1000 }),
        (4, "1.0", "/c/5000", Mode::TruncateChunked),
        (5, "1.0", "/u/5000", Mode::ResetResponse { after: reply_head_len(5, "/u/5000") + 1000 }),
        (6, "1.1", "/u/5000", Mode::ResetResponse { after: reply_head_len(6, "/u/5000") + 1000 }),
    ];
    let mut silent = Vec::new();
    for (id, version, path, fault) in cases {
        relay.set(fault);
        let seen = Client::connect(f.addr()).send(&get(version, path, id));
        let told = match &seen {
            Seen::Cut { status: 200, reset, .. } => *reset || version == "1.1",
            _ => false,
        };
        if !told {
            silent.push(format!("HTTP/{version} {path} {fault:?}: {seen}"));
        }
    }
    assert!(
        silent.is_empty(),
        "broken responses a client cannot tell from whole ones:\n{}",
        silent.join("\n")
    );
}

#[test]
fn ambiguous_or_malformed_responses_are_502() {
    let backend = LogBackend::start();
    let f = fulcrum_to(backend.addr, true);
    for (id, (name, _)) in (1..).zip(BAD_HEADS) {
        let mut client = Client::connect(f.addr());
        let seen = client.send(&request("GET", &format!("/bad/{name}"), id, 0));
        match &seen {
            Seen::Whole { status: 502, body, .. } => {
                assert!(find(body, b"SMUGGLED").is_none(), "{name}: {}", String::from_utf8_lossy(body))
            }
            other => panic!("{name}: {other}"),
        }
        assert_eq!(backend.count(id), 1, "{name}: an ambiguous response made Fulcrum send the request again");
    }
}

#[test]
fn a_broken_chunked_response_body_closes_the_client_connection() {
    let backend = LogBackend::start();
    let f = fulcrum_to(backend.addr, true);
    for (id, (name, _)) in (1..).zip(BAD_BODIES) {
        let mut client = Client::connect(f.addr());
        let seen = client.send(&request("GET", &format!("/bad-body/{name}"), id, 0));
        match &seen {
            Seen::Cut { status: 200, raw, .. } => {
                assert!(find(raw, b"SMUGGLED").is_none(), "{name}: {}", String::from_utf8_lossy(raw))
            }
            other => panic!("{name}: {other}"),
        }
    }
}

#[test]
fn an_h2c_upgrade_is_never_tunnelled() {
    let backend = LogBackend::start();
    let f = fulcrum_to(backend.addr, true);
    let h2c =
        "GET /r/10 HTTP/1.1\r\nHost: faults\r\nX-Request-Id: 1\r\nConnection: Upgrade, HTTP2-Settings\r\n\
               Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let seen = Client::connect(f.addr()).send(h2c.as_bytes());
    // Normalised: the backend gets a plain request and answers it as one.
    assert!(seen.is_answer_to(1, "/r/10"), "{seen}");
    let head = backend.head(1).expect("forwarded").to_ascii_lowercase();
    assert!(!head.contains("upgrade") && !head.contains("http2-settings"), "{head}");
    // A backend that switches protocols unasked is not tunnelled to.
    let seen = Client::connect(f.addr()).send(&request("GET", "/switch", 2, 0));
    match &seen {
        Seen::Whole { status: 502, body, .. } => assert!(find(body, b"SMUGGLED").is_none()),
        other => panic!("{other}"),
    }
}

/// One planned request of the soak.
#[derive(Clone, Debug)]
struct Planned {
    id: u64,
    method: &'static str,
    path: String,
    body: usize,
    mode: Mode,
}

/// What the client should see for `p`, given the relay's record of its
/// first attempt: a whole 200 (after a retry, if `true`), a status, or a cut body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Answer { retried: bool },
    Status(u16),
    Cut,
}

fn expect(p: &Planned, first: &Attempt) -> Expect {
    let head_len = reply_head_len(p.id, &p.path);
    let no_response_byte = matches!(
        p.mode,
        Mode::ResetRequest { .. } | Mode::CloseResponse { after: 0 } | Mode::ResetResponse { after: 0 }
    );
    // RFC 9112 §9.3.1: only an idempotent request without a body, failed on
    // a reused connection before any response byte, is sent again.
    if no_response_byte && first.index > 0 && p.method == "GET" {
        return Expect::Answer { retried: true };
    }
    match p.mode {
        Mode::Pass | Mode::Latency(_) => Expect::Answer { retried: false },
        Mode::ResetRequest { .. } => Expect::Status(502),
        Mode::CloseResponse { after } | Mode::ResetResponse { after } if after < head_len => {
            Expect::Status(502)
        }
        Mode::Stall { after, .. } if after < head_len => Expect::Status(504),
        _ => Expect::Cut,
    }
}

/// Draws the soak's requests: GETs and POSTs, Content-Length and chunked
/// responses, a fault at a random point for a little over half of them.
fn plan(rng: &mut fastrand::Rng, n: u64) -> Vec<Planned> {
    (1..=n)
        .map(|id| {
            let method = if rng.bool() { "GET" } else { "POST" };
            let chunked = rng.bool();
            let len = rng.usize(1..6000);
            let path = format!("/{}/{len}", if chunked { "c" } else { "r" });
            let body = if method == "POST" { rng.usize(1..3000) } else { 0 };
            let total = reply(id, &path).0.len();
            let head_len = reply_head_len(id, &path);
            // Response faults strike strictly inside the response, so each
            // breaks its own exchange and no later one: before any byte, in
            // the head, or in the body.
            let point = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
                0 => 0,
                1 => rng.usize(1..head_len),
                _ => rng.usize(head_len..total),
            };
            let mode = match rng.u32(0..100) {
                0..=44 => Mode::Pass,
                45..=51 => Mode::Latency(Duration::from_millis(rng.u64(0..100))),
                52..=61 if rng.bool() => Mode::ResetRequest { after: usize::MAX },
                52..=61 => Mode::ResetRequest { after: rng.usize(0..200 + body) },
                62..=71 => Mode::CloseResponse { after: point(rng) },
                72..=79 => Mode::ResetResponse { after: point(rng) },
                80..=85 => Mode::Stall { after: point(rng), hold: STALL },
                _ if chunked => Mode::TruncateChunked,
                _ => Mode::ShortLength { short: rng.usize(1..=len.min(10)) },
            };
            Planned { id, method, path, body, mode }
        })
        .collect()
}

#[test]
fn faults_at_random_points_lose_nothing_and_replay_no_post() {
    let seed = std::env::var("FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f00d_u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    let planned = plan(&mut rng, 600);
    let backend = LogBackend::start();
    let relay = Relay::start(backend.addr);
    for p in &planned {
        relay.plan(p.id, p.mode);
    }
    let f = fulcrum_to(relay.addr, true);
    let started = Instant::now();
    let budget = Duration::from_secs(25);
    let addr = f.addr();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mine: Vec<Planned> = planned.iter().filter(|p| p.id % 4 == t).cloned().collect();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut client = Client::connect(addr);
                for p in mine {
                    if started.elapsed() > budget {
                        break;
                    }
                    let t0 = Instant::now();
                    let s = client.send(&request(p.method, &p.path, p.id, p.body));
                    let took = t0.elapsed();
                    if s.closes() {
                        client = Client::connect(addr);
                    }
                    seen.push((p.id, s, took));
                }
                seen
            })
        })
        .collect();
    let mut seen: HashMap<u64, (Seen, Duration)> = HashMap::new();
    for t in threads {
        for (id, s, took) in t.join().expect("client thread") {
            seen.insert(id, (s, took));
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(
        seen.len(),
        planned.len(),
        "only {} of {} requests done in {budget:?}",
        seen.len(),
        planned.len()
    );

    let mut wrong = Vec::new();
    let mut tally: HashMap<&str, usize> = HashMap::new();
    for p in &planned {
        let (s, took) = &seen[&p.id];
        let attempts = relay.attempts(p.id);
        let received = backend.count(p.id);
        let Some(first) = attempts.first() else {
            wrong.push(format!("{p:?}: never reached the relay; the client saw {s}"));
            continue;
        };
        let expected = expect(p, first);
        let ok = match expected {
            Expect::Answer { .. } => s.is_answer_to(p.id, &p.path),
            Expect::Status(code) => matches!(s, Seen::Whole { status, .. } if *status == code),
            Expect::Cut => matches!(s, Seen::Cut { status: 200, .. }),
        };
        let tries = if expected == (Expect::Answer { retried: true }) { 2 } else { 1 };
        let reached = attempts.iter().filter(|a| a.reached()).count();
        if !ok || attempts.len() != tries || received != reached || *took >= PROMPT {
            wrong.push(format!(
                "{p:?}: expected {expected:?} in {tries} attempt(s), saw {s} after {took:?}; attempts {attempts:?}; \
                 the backend received it {received} time(s), the relay delivered it {reached}"
            ));
        }
        // The promises themselves, whatever the expectation said.
        if p.method == "POST" && received > 1 {
            wrong.push(format!("{p:?}: a POST received {received} times"));
        }
        if s.status() == Some(200) && matches!(s, Seen::Whole { .. }) && received == 0 {
            wrong.push(format!("{p:?}: a 200 the backend never received"));
        }
        let outcome = match (s, received) {
            (Seen::Whole { status: 200, .. }, 2) => "200 after a retry, GET received twice",
            (Seen::Whole { status: 200, .. }, _) if attempts.len() == 2 => {
                "200 after a retry, GET received once"
            }
            (Seen::Whole { status: 200, .. }, _) => "200",
            (Seen::Whole { status: 502, .. }, 0) => "502, not received",
            (Seen::Whole { status: 502, .. }, _) => "502, received",
            (Seen::Whole { status: 504, .. }, 0) => "504, not received",
            (Seen::Whole { status: 504, .. }, _) => "504, received",
            (Seen::Cut { .. }, _) => "cut short, connection closed",
            _ => "other",
        };
        *tally.entry(outcome).or_default() += 1;
    }
    let mut tally: Vec<_> = tally.into_iter().collect();
    tally.sort();
    eprintln!(
        "soak (FAULTS_SEED={seed}): {} requests through injected faults in {elapsed:?}: {tally:?}",
        planned.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} requests went wrong:\n{}",
        wrong.len(),
        planned.len(),
        wrong.join("\n")
    );
}
