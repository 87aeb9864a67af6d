//! Test harness: real `fulcrum` processes on loopback, talked to as a client
//! would. Every process is killed when its handle drops; tests synchronise on
//! the `listening` lines the processes print, never on sleeps.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fulcrum"))
}

/// A child process that is killed on drop, with its stderr kept in a file.
pub struct Proc {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// Lines of stdout after the `listening` ones, as they come.
    pub stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Proc {
    fn spawn(args: &[&str], dir: tempfile::TempDir) -> Proc {
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new(bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn fulcrum");
        Proc { child, dir, stdout: None }
    }

    /// Reads stdout lines until `n` lines starting with `listening` were seen;
    /// returns their `address=` values in order.
    fn listening(&mut self, n: usize) -> Vec<SocketAddr> {
        let out = self.child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(out);
        let mut addrs = Vec::new();
        let mut line = String::new();
        while addrs.len() < n {
            line.clear();
            let read = reader.read_line(&mut line).expect("read stdout");
            if read == 0 {
                panic!("process exited before listening; stderr:\n{}", self.stderr());
            }
            if let Some(rest) = line.trim().strip_prefix("listening ") {
                let addr = rest.split("address=").nth(1).expect("address=");
                addrs.push(addr.parse().expect("listen address"));
            }
        }
        self.stdout = Some(reader);
        addrs
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(30)).expect("exit after SIGTERM")
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

/// Resident set size of process `pid` in KiB, from /proc (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of process `pid`, from /proc (0 once it is gone).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Raises this process's soft open-file limit to its hard limit (the
/// Fulcrum it starts inherits it) and returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on this process with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return 0;
        }
    }
    lim.rlim_cur
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- stderr of fulcrum {} ---\n{}", self.child.id(), self.stderr());
        }
    }
}

/// A built-in backend (`fulcrum backend`).
pub struct Backend {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub name: String,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Self::start_at("127.0.0.1:0", name)
    }

    pub fn start_at(listen: &str, name: &str) -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut proc = Proc::spawn(&["backend", "--listen", listen, "--name", name], dir);
        let addr = proc.listening(1)[0];
        Backend { proc, addr, name: name.to_owned() }
    }
}

/// A running `fulcrum run` with its listeners.
pub struct Fulcrum {
    pub proc: Proc,
    /// Bound listener addresses, in configuration order.
    pub addrs: Vec<SocketAddr>,
}

impl Fulcrum {
    /// Starts `fulcrum run` on `config` and waits for `listeners` listening lines.
    pub fn start(config: &str, listeners: usize) -> Fulcrum {
        Self::start_with(config, listeners, &[])
    }

    pub fn start_with(config: &str, listeners: usize, extra: &[&str]) -> Fulcrum {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, config).expect("write config");
        let path = path.to_str().expect("utf-8 path").to_owned();
        let mut args = vec!["run", "-c", path.as_str()];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args, dir);
        let addrs = proc.listening(listeners);
        Fulcrum { proc, addrs }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs[0])
    }
}

/// A configuration with one service `web` of `mode` on 127.0.0.1:0 over
/// `backends`, plus `service_extra` lines inside the service table and
/// `pool_extra` lines inside the pool table.
pub fn config(
    mode: &str,
    backends: &[(&str, SocketAddr, u32)],
    service_extra: &str,
    pool_extra: &str,
) -> String {
    let mut c = format!(
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"{mode}\"\npool = \"web\"\n{service_extra}\n\n[[pool]]\nname = \"web\"\n{pool_extra}\n"
    );
    for (name, addr, weight) in backends {
        c.push_str(&format!(
            "\n[[pool.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\nweight = {weight}\n"
        ));
    }
    c
}

/// Sends `request` on a new connection and reads until the peer closes (or 10 s).
pub fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `done` until it holds; fails the test, naming `what`, after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads a `fulcrum backend`'s `/_counters` over `s` as (connections,
/// requests); the read counts itself as a request.
pub fn backend_counters(s: &mut TcpStream) -> (u64, u64) {
    s.write_all(b"GET /_counters HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let response = read_response(s);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.rsplit("\r\n\r\n").next().unwrap_or_default().trim();
    let number = |key: &str| -> u64 {
        let rest = body.split(&format!("\"{key}\":")).nth(1).unwrap_or_else(|| panic!("no {key} in {body}"));
        rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("a count")
    };
    (number("connections"), number("requests"))
}

/// A keep-alive connection known to be admitted: its first request was answered 200.
pub fn held_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let r = read_response(&mut s);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    s
}

/// Reads one HTTP/1.1 response with a Content-Length body from a blocking stream.
pub fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).expect("read head") == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>())
        })
        .and_then(Result::ok)
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read body");
    head + &String::from_utf8_lossy(&body)
}

/// A hand-rolled HTTP backend for what the built-in one cannot show: it
/// records every request head it receives and counts its connections.
/// Answers each request with 200 and body `ok`, keeping connections open;
/// `GET /chunked` gets a chunked body (`hello world`), `GET /truncated` a body
/// cut short, `GET /smuggle` an ambiguous response, and a WebSocket upgrade a
/// 101 and then an echo of every byte.
pub struct Recorder {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (heads.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                std::thread::spawn(move || serve_recorded(stream, h));
            }
        });
        Recorder { addr, heads, connections }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

fn serve_recorded(mut s: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let lower = head.to_ascii_lowercase();
        let len: usize = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        while buf.len() < len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        heads.lock().expect("lock").push(head.clone());
        let reply: &[u8] = if lower.contains("upgrade: websocket") {
            // Switch protocols, then echo bytes until the client half-closes.
            let _ = s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            );
            let _ = s.write_all(&buf);
            let mut b = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut b) {
                if s.write_all(&b[..n]).is_err() {
                    return;
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            return;
        } else if head.starts_with("GET /chunked") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n"
        } else if head.starts_with("GET /truncated") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this");
            return;
        } else if head.starts_with("GET /smuggle") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        if s.write_all(reply).is_err() {
            return;
        }
    }
}

/// An address nothing listens on (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A running load agent (`fulcrum agent`).
pub struct Agent {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Agent {
    /// Starts `fulcrum agent --listen 127.0.0.1:0` with `extra` arguments and
    /// waits for its listening line.
    pub fn start(extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["agent", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args, dir);
        let addr = proc.listening(1)[0];
        Agent { proc, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Proc {
    /// Waits (bounded) until stderr has a line containing every one of
    /// `needles`; the log line is the event tests synchronise on.
    pub fn wait_log(&self, needles: &[&str], limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let stderr = self.stderr();
            if let Some(line) = stderr.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(
                start.elapsed() < limit,
                "no log line with {needles:?} within {limit:?}; stderr:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A free loopback address (bound, then closed) for a backend that must
/// come back on the same address.
pub fn free_addr() -> SocketAddr {
    dead_addr()
}

/// A backend that answers every request with `status` and `X-Backend: NAME`.
pub fn status_backend(name: &'static str, status: u16) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply = format!(
                            "HTTP/1.1 {status} Status\r\nX-Backend: {name}\r\nContent-Length: 0\r\n\r\n"
                        );
                        if s.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A backend for one request: it signals when the request arrives, answers
/// `finished` (with `X-Backend: gated`) when released, then holds the
/// connection a while. Lets a test act while a session is surely in flight.
pub fn gated() -> (SocketAddr, std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        arrived_tx.send(()).expect("signal");
        let _ = release_rx.recv();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Backend: gated\r\nContent-Length: 8\r\n\r\nfinished");
        std::thread::sleep(Duration::from_secs(5));
    });
    (addr, arrived, release)
}

impl Proc {
    /// Reads the next `n` `listening` lines printed after the first ones (a
    /// reload prints one per listener it adds).
    pub fn more_listening(&mut self, n: usize) -> Vec<SocketAddr> {
        let reader = self.stdout.as_mut().expect("listening() was called first");
        let mut addrs = Vec::new();
        let mut line = String::new();
        while addrs.len() < n {
            line.clear();
            if reader.read_line(&mut line).expect("read stdout") == 0 {
                panic!("process exited; stderr:\n{}", self.stderr());
            }
            if let Some(rest) = line.trim().strip_prefix("listening ") {
                let addr = rest.split("address=").nth(1).expect("address=");
                addrs.push(addr.parse().expect("listen address"));
            }
        }
        addrs
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// How many stderr lines contain every one of `needles`.
    pub fn count_log(&self, needles: &[&str]) -> usize {
        self.stderr().lines().filter(|l| needles.iter().all(|n| l.contains(n))).count()
    }
}

impl Fulcrum {
    /// Rewrites the configuration file and sends SIGHUP; waits for the
    /// reload's verdict in the log and returns that line.
    pub fn reload(&self, config: &str) -> String {
        let done =
            self.proc.count_log(&["configuration reloaded"]) + self.proc.count_log(&["reload refused"]);
        std::fs::write(self.proc.dir.path().join("fulcrum.toml"), config).expect("write config");
        self.proc.signal(libc::SIGHUP);
        let start = Instant::now();
        loop {
            let lines: Vec<String> = self
                .proc
                .stderr()
                .lines()
                .filter(|l| l.contains("configuration reloaded") || l.contains("reload refused"))
                .map(str::to_owned)
                .collect();
            if lines.len() > done {
                return lines[done].clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no reload verdict; stderr:\n{}",
                self.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// An http service `web` over `backends` (weight 1, round robin, no health
/// checks), the admin API on a free port, and `admin_extra` lines in `[admin]`.
pub fn admin_config(backends: &[(&str, SocketAddr)], admin_extra: &str) -> String {
    admin_config_with(backends, "", admin_extra)
}

/// [`admin_config`] with `service_extra` lines inside the service table.
pub fn admin_config_with(backends: &[(&str, SocketAddr)], service_extra: &str, admin_extra: &str) -> String {
    let backends: Vec<(&str, SocketAddr, u32)> = backends.iter().map(|&(n, a)| (n, a, 1)).collect();
    let pool = "algorithm = \"round_robin\"\n[pool.health]\nkind = \"none\"\n";
    let service = config("http", &backends, service_extra, pool);
    format!("{service}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n")
}
