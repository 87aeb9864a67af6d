//! `tcp` mode: connect the client to a backend and move bytes both ways,
//! keeping half-closes (a client's shutdown(WR) reaches the backend while the
//! reply still flows back), until both sides finish or the session idles out.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

use bytes::BytesMut;
use fulcrum_core::session::{Session, SessionState};
use fulcrum_core::sni::{self, Peek};

use crate::service::{remember_source, PolicyRuntime, ServiceRuntime, Sticky};
use crate::sessions::Meter;
use crate::upstream::{ConnectOptions, PoolRuntime};

/// Serves one tcp-mode client connection from `client` (the real client:
/// the peer, or the address a trusted PROXY header gave) to `local`; `first`
/// holds bytes already read from it. `row` is the session's row in the
/// session table (`None` when the table is off): its state, backend side,
/// bytes and last activity are kept current.
pub async fn serve(
    mut stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    mut first: BytesMut,
    service: &ServiceRuntime,
    row: Option<&Session>,
) {
    let Some((pool, route_policy)) = choose_pool(&mut stream, &mut first, service).await else {
        return;
    };
    if let Some(Err(refusal)) = route_policy.map(|p| p.check_source(client.ip())) {
        service.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(service = %service.name, client = %client, reason = ?refusal, "tcp session refused by route policy");
        return;
    }
    let started = Instant::now();
    let now = crate::clock::now();
    let sticky = Sticky::lookup(&service.persistence, pool, client.ip(), &[], now);
    let opts = ConnectOptions {
        key: hash_ip(client.ip()),
        prefer: sticky.prefer,
        ring_key: None,
        proxy: Some((client, local)),
        retries: service.retries,
        connect_timeout: service.timeouts.connect,
        reuse_within: None,
    };
    let mut upstream = match pool.connect(opts).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(service = %service.name, error = %e, "tcp session refused");
            if crate::sessions::access_log() {
                access(service, client, pool, "-", (0, 0), started);
            }
            return;
        }
    };
    remember_source(&service.persistence, pool, client.ip(), upstream.backend, now);
    pool.session_ok(upstream.backend);
    let _session = pool.open_session(upstream.backend);
    let backend = pool.backend(upstream.backend);
    backend.stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(row) = row {
        crate::sessions::connected(row, pool, &upstream);
    }
    // Client to backend: bytes in for the service and the row, out for the backend.
    let up = Meter([
        row.map(|r| &r.bytes_in),
        Some(&service.stats.bytes_in),
        Some(&backend.stats.bytes_out),
        None,
    ]);
    let down = Meter([
        row.map(|r| &r.bytes_out),
        Some(&service.stats.bytes_out),
        Some(&backend.stats.bytes_in),
        None,
    ]);
    let moved = if !first.is_empty() && upstream.stream.write_all(&first).await.is_err() {
        Err(io::Error::new(io::ErrorKind::BrokenPipe, "the backend closed before the first bytes"))
    } else {
        up.add(first.len() as u64);
        let meters = Meters { a_to_b: up, b_to_a: down, activity: row.map(|r| &r.last_activity_unix_ms) };
        tunnel(&mut stream, &mut upstream.stream, service.timeouts.client_idle, &meters)
            .await
            .map(|(to_backend, to_client)| (to_backend + first.len() as u64, to_client))
    };
    if let Some(row) = row {
        row.set_state(SessionState::Closing);
    }
    if let Err(e) = &moved {
        tracing::debug!(service = %service.name, error = %e, "tcp session ended with an error");
    }
    if crate::sessions::access_log() {
        // After an error the tunnel's totals are lost; the row has them when kept.
        let bytes = match (&moved, row) {
            (Ok(totals), _) => *totals,
            (Err(_), Some(r)) => (r.bytes_in.load(Ordering::Relaxed), r.bytes_out.load(Ordering::Relaxed)),
            (Err(_), None) => (0, 0),
        };
        access(service, client, pool, &backend.name, bytes, started);
    }
}

/// The access log line of a tcp session: `bytes` from and to the client.
fn access(
    service: &ServiceRuntime,
    client: SocketAddr,
    pool: &PoolRuntime,
    backend: &str,
    (bytes_in, bytes_out): (u64, u64),
    started: Instant,
) {
    tracing::info!(
        target: "access",
        service = %service.name,
        client = %client,
        pool = %pool.name,
        backend = %backend,
        bytes_in,
        bytes_out,
        duration_ms = started.elapsed().as_millis() as u64,
        "tcp session"
    );
}

/// The pool of a tcp session: by the TLS server name when the service has
/// routes (peeking the ClientHello, which stays in `first` to be forwarded
/// untouched), else the service's pool. `None` refuses the session.
async fn choose_pool<'s>(
    stream: &mut TcpStream,
    first: &mut BytesMut,
    service: &'s ServiceRuntime,
) -> Option<(&'s std::sync::Arc<PoolRuntime>, Option<&'s PolicyRuntime>)> {
    if service.routes.is_empty() {
        return service.pool.as_ref().map(|p| (p, None));
    }
    let deadline = Instant::now() + service.timeouts.request_headers;
    let name = loop {
        match sni::peek_server_name(first) {
            Ok(Peek::ServerName(name)) => break name,
            Ok(Peek::NeedMore) => {}
            Err(e) => {
                tracing::info!(service = %service.name, error = %e, "tcp session refused: no usable TLS ClientHello");
                return None;
            }
        }
        first.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                tracing::info!(service = %service.name, "tcp session refused: ClientHello incomplete");
                return None;
            }
        }
    };
    match service.classify_sni(name.as_deref()) {
        Some(route) => match &route.pool {
            Some(pool) => Some((pool, route.policy.as_ref())),
            None => None,
        },
        None => {
            if service.pool.is_none() {
                tracing::info!(service = %service.name, server_name = ?name, "tcp session refused: no route for this server name");
            }
            service.pool.as_ref().map(|p| (p, None))
        }
    }
}

/// A stable 64-bit key of a client address for hashing selectors.
pub fn hash_ip(ip: std::net::IpAddr) -> u64 {
    // The core's stable keyed hash, not std's DefaultHasher: a client must
    // hash to the same backend across restarts, builds and nodes.
    match ip.to_canonical() {
        std::net::IpAddr::V4(a) => fulcrum_core::persist::header_key(&a.octets()),
        std::net::IpAddr::V6(a) => fulcrum_core::persist::header_key(&a.octets()),
    }
}

/// What a tunnel counts as bytes move: a meter each way, and the session
/// row's last activity (wall-clock ms), kept current per chunk.
#[derive(Default)]
pub struct Meters<'a> {
    pub a_to_b: Meter<'a>,
    pub b_to_a: Meter<'a>,
    pub activity: Option<&'a AtomicU64>,
}

/// Moves bytes between `a` and `b` until both directions reach EOF, either
/// fails, or nothing moves for `idle`, adding every chunk to `meters` as it
/// goes. Returns the bytes moved (a→b, b→a).
pub async fn tunnel(
    a: &mut TcpStream,
    b: &mut TcpStream,
    idle: Duration,
    meters: &Meters<'_>,
) -> io::Result<(u64, u64)> {
    let start = Instant::now();
    // Wall-clock ms at `start`, to turn the elapsed time into the row's last activity.
    let start_unix_ms = if meters.activity.is_some() { crate::sessions::unix_ms() } else { 0 };
    // Milliseconds since `start` of the last byte moved either way.
    let last = AtomicU64::new(0);
    let touch = |meter: &Meter<'_>, n: u64| {
        meter.add(n);
        let ms = start.elapsed().as_millis() as u64;
        last.store(ms, Ordering::Relaxed);
        if let Some(activity) = meters.activity {
            activity.store(start_unix_ms + ms, Ordering::Relaxed);
        }
    };
    let ab = |n| touch(&meters.a_to_b, n);
    let ba = |n| touch(&meters.b_to_a, n);
    let both = async {
        if SPLICE {
            tokio::try_join!(splice_one_way(a, b, &ab), splice_one_way(b, a, &ba))
        } else {
            let (mut ar, mut aw) = a.split();
            let (mut br, mut bw) = b.split();
            tokio::try_join!(copy_one_way(&mut ar, &mut bw, &ab), copy_one_way(&mut br, &mut aw, &ba))
        }
    };
    let watchdog = async {
        loop {
            let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = both => r,
        () = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {idle:?}"))),
    }
}

/// Whether tunnels use splice(2) rather than copying through user space.
/// Measured on this 2-core machine, 2 GiB through a tcp service, 3 rounds
/// (release build, one worker): splice 1.76/2.27/2.11 GB/s against copying
/// 1.65/1.55/1.61 GB/s, with less proxy CPU. Copying stays for builds where
/// splice is not wanted (flip this and rebuild to compare).
const SPLICE: bool = true;

/// Copies `r` into `w` until EOF, then shuts `w` down for writing; `moved`
/// hears of every chunk written.
async fn copy_one_way<R, W>(r: &mut R, w: &mut W, moved: &impl Fn(u64)) -> io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        moved(n as u64);
    }
}

/// What a pipe is grown to (F_SETPIPE_SZ), and so the most one splice(2)
/// moves: 1 MiB, the default /proc/sys/fs/pipe-max-size. Measured on this
/// 2-core VM, 64 MiB downloads through a tcp service, proxy CPU per download
/// (perf stat task-clock): 64 KiB 12.8 ms, 256 KiB 5.6 ms, 1 MiB 3.8 ms with
/// cubic senders (2100, 590 and 255 splice calls); 22-24, 16-23 and 14-18
/// ms with this machine's bbr default. Download speed: 64 KiB 0.65x direct;
/// 256 KiB and 1 MiB within noise of each other (0.85-0.88x with cubic,
/// 0.45-0.62x with bbr, whose per-packet pacing timers on both TCP hops set
/// the pace, not this loop).
const PIPE_SIZE: usize = 1024 * 1024;

/// Empty pipes kept for the next burst. A direction holds a pipe only while
/// bytes are in flight: the kernel charges pipe capacity to the user whether
/// or not it holds data, and once an unprivileged user's pipes pass
/// /proc/sys/fs/pipe-user-pages-soft (16384 pages) every new pipe is born
/// with 8 KiB and cannot grow (measured as a non-root user: the 65th 1 MiB
/// pipe, the 257th at 256 KiB). With two pipes per session for its whole
/// life, 300 idle sessions of a non-root Fulcrum held 600 pipes and 64 MiB
/// downloads beside them ran at 824-1,054 MiB/s (8 runs); with pipes held
/// per burst, 1 pipe and 1,802-2,406 MiB/s, as with no idle sessions. A
/// direction waiting on a slow reader keeps its pipe, so at 1 MiB a non-root
/// Fulcrum has 64 such before new pipes shrink (root is not limited). Reuse
/// spares the four syscalls of making and closing a pipe per burst.
static IDLE_PIPES: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());

/// Idle pipes kept at most (each still counts PIPE_SIZE against the user);
/// one given back beyond this is closed. Not tuned: any small number keeps
/// the syscalls away.
const IDLE_PIPES_MAX: usize = 16;

/// Pipes open now, idle or in use: the test counts those on loan with it.
#[cfg(test)]
static PIPES_OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A non-blocking pipe to splice through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Whether F_SETPIPE_SZ took: a pipe stuck small (the user was over the
    /// soft limit when it was made) is closed after use, not kept.
    grown: bool,
}

impl Pipe {
    /// An idle pipe, or a new one grown to `PIPE_SIZE` where allowed.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = IDLE_PIPES.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(pipe);
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Failure (a lower pipe-max-size, the user over pipe-user-pages-soft)
        // keeps the pipe's size: it only costs speed.
        // SAFETY: F_SETPIPE_SZ on an open pipe descriptor with an int argument.
        let grown =
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) } >= 0;
        #[cfg(test)]
        PIPES_OPEN.fetch_add(1, Ordering::Relaxed);
        Ok(Pipe { read, write, grown })
    }

    /// Returns an empty pipe for reuse. A pipe that may still hold bytes
    /// (a direction that failed midway) must be dropped instead.
    fn give_back(self) {
        let mut idle = IDLE_PIPES.lock().unwrap_or_else(|e| e.into_inner());
        if self.grown && idle.len() < IDLE_PIPES_MAX {
            idle.push(self);
        }
    }
}

#[cfg(test)]
impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES_OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Moves `src` into `dst` through a pipe with splice(2): the payload stays in
/// the kernel. Shuts `dst` down for writing at EOF; `moved` hears of every
/// write, so a slow reader draining one full pipe still shows activity.
///
/// Fills an empty pipe with what `src` has (up to `PIPE_SIZE`), then drains
/// it into `dst` before reading again. Reading while the pipe still holds
/// bytes was measured too (0.88x against 0.87x of direct, 30 downloads each,
/// within noise) and is not worth it: a splice into a partly full pipe can
/// fail with EAGAIN because the pipe is out of slots, which would read as
/// "socket empty" and lose the socket's readiness.
async fn splice_one_way(src: &TcpStream, dst: &TcpStream, moved: &impl Fn(u64)) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // Waiting for bytes holds no pipe.
        src.readable().await?;
        let pipe = Pipe::take()?;
        let fill = || splice(src.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE);
        let n = match src.try_io(Interest::READABLE, fill) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give_back();
                continue;
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            pipe.give_back();
            socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            let drain = || splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left);
            match dst.try_io(Interest::WRITABLE, drain) {
                Ok(m) => {
                    left -= m;
                    total += m as u64;
                    moved(m as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        pipe.give_back();
    }
}

/// One non-blocking splice(2) of up to `len` bytes from `from` to `to`.
/// Without SPLICE_F_MORE: with it, the tail of every chunk waited in the
/// socket for more (measured 290 MiB/s against 4,000 MiB/s without).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the duration of the call; null
    // offsets are what splice takes for sockets and pipes.
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.expect("connect"), accepted.expect("accept").0)
    }

    /// Writes `out` into `s`, half-closes it, and reads `s` to its end.
    async fn exchange(mut s: TcpStream, out: Vec<u8>) -> (TcpStream, Vec<u8>) {
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(&out).await.expect("write");
            w.shutdown().await.expect("half-close");
        };
        let mut got = Vec::new();
        let recv = r.read_to_end(&mut got);
        let ((), n) = tokio::join!(send, recv);
        n.expect("read");
        (s, got)
    }

    #[tokio::test]
    async fn more_than_a_pipe_each_way_arrives_whole_and_idle_directions_hold_no_pipe() {
        let (client, mut a) = pair().await;
        let (mut b, mut server) = pair().await;
        let run =
            tokio::spawn(
                async move { tunnel(&mut a, &mut b, Duration::from_secs(30), &Meters::default()).await },
            );

        // A round trip smaller than a pipe: both directions then wait for
        // bytes, which must not hold a pipe (here they took turns with one).
        let mut client = client;
        client.write_all(b"ping").await.expect("write");
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await.expect("read");
        server.write_all(b"pong").await.expect("write");
        client.read_exact(&mut four).await.expect("read");
        assert_eq!(&four, b"pong");
        assert_eq!(pipes_on_loan(), 0, "an idle tunnel holds no pipe");

        let up: Vec<u8> = (0..3 * PIPE_SIZE + 17).map(|i| i as u8).collect();
        let down: Vec<u8> = (0..2 * PIPE_SIZE + 5).map(|i| (i / 7) as u8).collect();
        let ((_, at_client), (_, at_server)) =
            tokio::join!(exchange(client, up.clone()), exchange(server, down.clone()));
        assert!(at_server == up, "client to server: {} bytes of {}", at_server.len(), up.len());
        assert!(at_client == down, "server to client: {} bytes of {}", at_client.len(), down.len());
        let moved = run.await.expect("tunnel task").expect("tunnel");
        assert_eq!(moved, (up.len() as u64 + 4, down.len() as u64 + 4));
        assert_eq!(pipes_on_loan(), 0, "a finished tunnel gave its pipes back");
    }

    /// Pipes taken and not given back. Exact only while no other tunnel
    /// runs: this is the one unit test in the crate that runs tunnels, and a
    /// new one would have to take a lock shared with it.
    fn pipes_on_loan() -> usize {
        let idle = IDLE_PIPES.lock().unwrap_or_else(|e| e.into_inner()).len();
        let open = PIPES_OPEN.load(Ordering::Relaxed);
        open.checked_sub(idle)
            .unwrap_or_else(|| panic!("{idle} idle pipes but {open} open: another tunnel ran"))
    }
}
