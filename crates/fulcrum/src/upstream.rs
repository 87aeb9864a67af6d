//! Connections to backends: pick by the pool's selector, connect (trying the
//! next backend after a failure), and keep idle keep-alive connections for
//! reuse.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fulcrum_core::model::{BackendId, Pool};
use fulcrum_core::select::{self, Selector};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// A pool as the data path sees it: the selector plus live per-backend state.
pub struct PoolRuntime {
    pub name: String,
    pub backends: Vec<BackendRuntime>,
    selector: Box<dyn Selector>,
    /// Most idle connections kept per backend; beyond it a finished one is closed.
    max_idle: usize,
}

/// One backend's live state; owned by the pool so it outlives selector rebuilds.
pub struct BackendRuntime {
    pub name: String,
    pub address: SocketAddr,
    /// Sessions (tcp connections, http exchanges) now open on this backend.
    pub sessions: AtomicU64,
    /// Idle keep-alive connections, most recently used last. A short lock:
    /// a push or pop per request, never held across an await.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// A connection to a backend, for one session.
pub struct Upstream {
    pub backend: BackendId,
    pub stream: TcpStream,
    /// Taken from the idle pool: the backend may have closed it meanwhile,
    /// so a request that failed on it without any response may be retried.
    pub reused: bool,
}

/// Why no backend connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no backend available in pool {pool:?}")]
    NoBackend { pool: String },
    #[error("no backend of pool {pool:?} could be reached: {attempts}")]
    ConnectFailed { pool: String, attempts: String },
}

/// What a session needs to connect: its hash key and the service's bounds.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    pub key: u64,
    /// Further backends to try after a failed connect.
    pub retries: u32,
    pub connect_timeout: Duration,
    /// Take an idle pooled connection when one is alive and younger than this.
    pub reuse_within: Option<Duration>,
}

impl PoolRuntime {
    pub fn new(pool: &Pool) -> Self {
        PoolRuntime {
            name: pool.name.clone(),
            backends: pool
                .backends
                .iter()
                .map(|b| BackendRuntime {
                    name: b.name.clone(),
                    address: b.address,
                    sessions: AtomicU64::new(0),
                    idle: Mutex::new(Vec::new()),
                })
                .collect(),
            selector: select::build(pool.algorithm, &pool.backends),
            max_idle: pool.max_idle_per_backend,
        }
    }

    pub fn backend(&self, id: BackendId) -> &BackendRuntime {
        &self.backends[id.0]
    }

    /// Picks a backend and connects to it; after a failed connect, tries the
    /// next pick that has not failed yet, `retries` more times at most.
    pub async fn connect(&self, opts: ConnectOptions) -> Result<Upstream, UpstreamError> {
        let mut failed: Vec<BackendId> = Vec::new();
        let mut attempts = String::new();
        for _ in 0..=opts.retries {
            let Some(id) = self.selector.pick(opts.key, &|b: BackendId| !failed.contains(&b)) else {
                break;
            };
            if let Some(within) = opts.reuse_within {
                if let Some(stream) = self.checkout(id, within) {
                    return Ok(Upstream { backend: id, stream, reused: true });
                }
            }
            let backend = self.backend(id);
            match connect(backend.address, opts.connect_timeout).await {
                Ok(stream) => return Ok(Upstream { backend: id, stream, reused: false }),
                Err(e) => {
                    tracing::warn!(pool = %self.name, backend = %backend.name, address = %backend.address, error = %e, "connect failed");
                    if !attempts.is_empty() {
                        attempts.push_str("; ");
                    }
                    attempts.push_str(&format!("{} ({}): {e}", backend.name, backend.address));
                    failed.push(id);
                }
            }
        }
        if failed.is_empty() {
            Err(UpstreamError::NoBackend { pool: self.name.clone() })
        } else {
            Err(UpstreamError::ConnectFailed { pool: self.name.clone(), attempts })
        }
    }

    /// Marks a session open on `id` until the guard drops.
    pub fn open_session(&self, id: BackendId) -> SessionGuard<'_> {
        self.backend(id).sessions.fetch_add(1, Ordering::Relaxed);
        self.selector.session_opened(id);
        SessionGuard { pool: self, id }
    }

    /// Returns a connection whose exchange ended cleanly to the idle pool.
    pub fn release(&self, id: BackendId, stream: TcpStream) {
        let mut idle = self.backend(id).idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            // Drop the oldest: it is the likeliest to be closed by the backend.
            idle.remove(0);
        }
        idle.push(Idle { stream, since: Instant::now() });
    }

    /// The freshest idle connection to `id` that is still open and younger than `within`.
    fn checkout(&self, id: BackendId, within: Duration) -> Option<TcpStream> {
        let mut idle = self.backend(id).idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() >= within {
                // Everything older than this one is older still.
                idle.clear();
                return None;
            }
            // An idle connection must have nothing to read: data or EOF means
            // the backend closed it or misbehaved.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn.stream),
                _ => continue,
            }
        }
        None
    }
}

/// Counts one session on a backend for as long as it lives.
pub struct SessionGuard<'a> {
    pool: &'a PoolRuntime,
    id: BackendId,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.pool.backend(self.id).sessions.fetch_sub(1, Ordering::Relaxed);
        self.pool.selector.session_closed(self.id);
    }
}

async fn connect(address: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    let stream = tokio::time::timeout(timeout, socket.connect(address)).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out after {timeout:?}"))
    })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
