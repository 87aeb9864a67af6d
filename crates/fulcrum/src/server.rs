//! Listeners and the accept loop: bind every service's addresses, admit each
//! connection under the service's limit, hand it to the tcp or http handler.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::BytesMut;
use fulcrum_core::http::error_response;
use fulcrum_core::model::{Limits, Mode, OnLimit};
use futures_util::FutureExt;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limit::ConnectionLimit;
use crate::service::ServiceRuntime;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("service {service:?}: cannot listen on {address}: {source}")]
    Listen { service: String, address: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Load(#[from] crate::service::LoadError),
}

/// Binds a listening socket the way every listener is bound.
fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    // Lets a restarted Fulcrum bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit it (Linux), which spares a setsockopt per connection.
    socket.set_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A bound listener for the admin API, on this thread's runtime.
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind(address)?)
}

/// A service's listening socket, watched by the runtime that will run its
/// accept loop ([`accept_loop`]): the first worker's, or this one without
/// workers. Registered here rather than in the loop, so that a failure
/// refuses the configuration like a failed bind.
pub type SessionListener = AsyncFd<std::net::TcpListener>;

/// Binds and registers a [`SessionListener`].
pub fn listen_for_sessions(address: SocketAddr) -> std::io::Result<SessionListener> {
    let listener = bind(address)?;
    let _acceptor = crate::workers::acceptor().map(|worker| worker.enter());
    // SAFETY: the std listener owns its descriptor and keeps it open and
    // unchanged for as long as the AsyncFd owns the listener.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }.map_err(std::io::Error::from)
}

/// Accepts connections on `listener`, bound to `local`, until `stop` (this
/// listener removed, or shutdown).
/// Each connection is served by the service the slot holds when it is
/// accepted, so a reload applies from the next connection on.
pub async fn accept_loop(
    listener: SessionListener,
    local: SocketAddr,
    slot: Arc<arc_swap::ArcSwap<ServiceRuntime>>,
    stop: CancellationToken,
    shutdown: CancellationToken,
    sessions: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = accept(&listener) => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // The reactor is gone (the runtime is shutting down): nothing to wait on.
                    tracing::debug!(address = %local, error = %e, "accept loop ends");
                    return;
                }
            },
        };
        let service = slot.load_full();
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if out_of_resources(&e) => {
                // Pause rather than spin: sessions that end free descriptors and memory.
                tracing::warn!(service = %service.name, error = %e, "accept failed; pausing 20 ms");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => {
                // One connection's failure (reset before it was accepted, and the
                // like): the next one is unaffected.
                tracing::debug!(service = %service.name, error = %e, "accept failed for one connection");
                continue;
            }
        };
        if stop.is_cancelled() {
            return; // shutting down: the tracker may be closed already, so no new session
        }
        let session = guarded(session(stream, peer, local, service, shutdown.clone()));
        match crate::workers::pick() {
            Some(worker) => sessions.spawn_on(session, worker),
            None => sessions.spawn(session),
        };
        // A burst of connections must not keep this runtime's sessions and
        // timers waiting: readiness alone spends no cooperative budget.
        tokio::task::coop::consume_budget().await;
    }
}

/// Whether an accept failed for want of descriptors or memory (so trying
/// again at once would fail again) rather than for one connection's sake.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// What one accept(2) gave: a connection and its peer, or its error.
type Accepted = std::io::Result<(std::net::TcpStream, SocketAddr)>;

/// Accepts one connection, leaving its socket unwatched: it is watched by
/// the runtime that will serve it, often a worker's. Tokio's own `accept`
/// would register it with this thread's epoll, and moving it to a worker
/// would deregister it again: two wasted epoll_ctl calls per connection.
/// `Err` is the listener's readiness failing (no reactor any more).
async fn accept(listener: &SessionListener) -> std::io::Result<Accepted> {
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|l| {
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            let (socket, peer) = socket2::SockRef::from(l.get_ref()).accept4(flags)?;
            let peer = peer
                .as_socket()
                .ok_or_else(|| std::io::Error::other("accepted a connection with no IP address"))?;
            Ok((socket.into(), peer))
        });
        if let Ok(result) = accepted {
            return Ok(result);
        }
    }
}

/// One session from its admission to its end. `stream` is registered with
/// the reactor of the runtime that runs the session: a worker's, or the
/// accepting one's without workers.
#[allow(clippy::manual_async_fn)] // an async fn would keep its arguments twice in every session task
fn session(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    service: Arc<ServiceRuntime>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    // An async block, not an async fn: see `l7::serve`.
    async move {
        let mut stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                let why = "accepted connection dropped: its socket could not be watched";
                return tracing::warn!(service = %service.name, client = %peer, error = %e, "{why}");
            }
        };
        crate::front::count_accepted(&service);
        let Some(_global) = GLOBAL.admit().await else {
            crate::front::count_refused_at_limit(&service);
            return refuse_for(stream, &service, "Fulcrum is at its connection limit").await;
        };
        let Some(_slot) = service.connections.admit().await else {
            crate::front::count_refused_at_limit(&service);
            refuse(stream, &service).await;
            return;
        };
        let mut first = BytesMut::new();
        let client = if service.expects_proxy_header(peer.ip()) {
            Box::pin(crate::front::client_address(&mut stream, peer, &service, &mut first)).await
        } else {
            Some(peer)
        };
        let Some(client) = client else { return };
        // The session's row in the session table, until this task ends.
        let row = crate::sessions::open(&service, client, local);
        let admitted =
            service.policy.check_source(client.ip()).and_then(|()| service.policy.admit(client.ip()));
        let _session = match admitted {
            Ok(slot) => slot,
            Err(refusal) => return crate::front::refuse(stream, &service, client, &refusal).await,
        };
        match service.mode {
            // Boxed: a tunnel's state is large and lives only while the session does.
            Mode::Tcp => {
                Box::pin(crate::l4::serve(stream, client, local, first, &service, row.as_deref())).await
            }
            Mode::Http => {
                crate::l7::serve(stream, client, local, first, &service, &shutdown, row.as_deref()).await
            }
        }
    }
}

/// Sessions whose task panicked since start (exported as `fulcrum_panics_total`).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Runs one session, catching a panic: a bug one input reaches ends that
/// session alone (its sockets close as the task unwinds), is logged once with
/// its message, and is counted, while every other session goes on.
///
/// Not an `async fn`: one would keep `session` twice in the task, as its
/// argument and as the future it awaits.
pub fn guarded(session: impl Future<Output = ()>) -> impl Future<Output = ()> {
    AssertUnwindSafe(session).catch_unwind().map(|outcome| {
        let Err(panic) = outcome else { return };
        PANICS.fetch_add(1, Ordering::Relaxed);
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(panic = %message, "a session panicked and was closed; the others go on");
    })
}

/// How often persistence tables drop expired entries (they also expire on lookup).
const EXPIRY_INTERVAL: Duration = Duration::from_secs(10);

/// Sweeps the service's persistence tables until its generation is
/// replaced (`retired`) or Fulcrum shuts down.
pub async fn expire_tables(
    service: Arc<ServiceRuntime>,
    retired: CancellationToken,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = retired.cancelled() => return,
            () = tokio::time::sleep(EXPIRY_INTERVAL) => service.persistence.expire(crate::clock::now()),
        }
    }
}

/// Turns away a connection over the limit: a 503 in http mode, a close in tcp mode.
async fn refuse(stream: TcpStream, service: &ServiceRuntime) {
    refuse_for(stream, service, &format!("service {:?} is at its connection limit", service.name)).await;
}

/// Turns a connection away with `why`: a 503 in http mode, a close in tcp mode.
async fn refuse_for(mut stream: TcpStream, service: &ServiceRuntime, why: &str) {
    tracing::info!(service = %service.name, reason = why, "connection refused");
    if service.mode == Mode::Http {
        let _ = stream.write_all(&error_response(503, why, true)).await;
        crate::l7::linger_close(stream).await;
    }
}

/// The whole process's connection limit (`[runtime.limits]`).
static GLOBAL: LazyLock<Arc<ConnectionLimit>> = LazyLock::new(|| {
    ConnectionLimit::new(Limits {
        max_connections: None,
        on_limit: OnLimit::Queue,
        queue_timeout: Duration::ZERO,
    })
});

/// Sets the process's connection limit (at start and on reload).
pub fn set_global_limits(limits: Limits) {
    GLOBAL.set(limits);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_session_is_caught_and_counted() {
        let before = PANICS.load(Ordering::Relaxed);
        let task = tokio::spawn(guarded(async { panic!("boom from a test") }));
        assert!(task.await.is_ok(), "the panic did not escape the session");
        assert_eq!(PANICS.load(Ordering::Relaxed), before + 1);
        // The runtime goes on serving other tasks.
        assert_eq!(tokio::spawn(async { 7 }).await.ok(), Some(7));
    }

    #[tokio::test]
    async fn accepted_connections_have_nagle_off_without_asking_each() {
        for address in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = listen_for_sessions(address.parse().unwrap()) else {
                assert!(address.starts_with('['), "cannot listen on {address}");
                continue; // no IPv6 loopback on this machine
            };
            let address = listener.get_ref().local_addr().unwrap();
            let _client = tokio::net::TcpStream::connect(address).await.unwrap();
            let (stream, _) = accept(&listener).await.unwrap().unwrap();
            assert!(stream.nodelay().unwrap(), "{address}: TCP_NODELAY comes from the listener");
        }
    }
}
