//! `http` mode: HTTP/1.x request by request, keep-alive on both sides,
//! backend connections reused, bodies streamed.
//!
//! Written on `httparse` and the core's framing rules rather than on hyper:
//! a load balancer must refuse ambiguous messages hyper would normalise
//! silently, say 431/414/408 exactly, keep the backend connection choice
//! per request, and own the syscalls per request (a plain hyper server with
//! hyper-util's pooled client measured about 0.8× HAProxy on this machine).

mod body;
mod persistence;
mod record;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fulcrum_core::http::{
    error_response, is_idempotent, parse_request, parse_response, simple_response, write_request_head,
    write_response_head, BodyKind, ClientInfo, HeadError, RequestHead, ResponseFraming, ResponseHead,
    Version,
};
use fulcrum_core::model::RouteAction;
use fulcrum_core::route::{normalize_path, RequestView};
use fulcrum_core::session::{Session, SessionState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::service::{remember_source, ServiceRuntime, Sticky};
use crate::upstream::{ConnectOptions, PoolRuntime, Upstream};
use body::{CopyError, Encode};
use record::{Record, Tally};

/// A client connection and the bytes read from it but not yet used.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

/// What happens to the client connection after an exchange.
enum Next {
    KeepAlive,
    Close,
    /// The response broke mid-body: reset the connection, so that no client
    /// can take what it got for a whole response.
    Abort,
}

/// Why an exchange with a backend failed before a response head arrived.
enum Failure {
    /// A reused idle connection broke before any response byte: the backend
    /// had closed it, so the request never reached it and may be sent again.
    Stale,
    /// The backend failed before its response headers: 502.
    Backend(String),
    /// No response headers within `backend_response`: 504.
    Timeout,
    /// The client vanished or sent a broken body.
    Client(CopyError),
    /// The response cannot be passed on to this client: 502, not the backend's fault.
    Unforwardable(String),
}

/// Serves one http-mode client connection until it closes, idles out, or
/// Fulcrum shuts down (between requests). `row` is the session's row in
/// the session table, kept current request by request.
pub fn serve<'a>(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    first: BytesMut,
    service: &'a ServiceRuntime,
    shutdown: &'a CancellationToken,
    row: Option<&'a Session>,
) -> impl Future<Output = ()> + Send + 'a {
    // No buffer until the first byte: an idle connection holds none.
    let mut client = Client { stream, buf: first };
    let info = ClientInfo { client: peer, listener: local };
    // An async block, not an async fn: it uses what it captures in place,
    // where an async fn keeps its arguments and the values made from them
    // both in the task's state, which every idle connection pays for.
    async move {
        // A refusal leaves the loop before it is answered: awaited inside,
        // the parse result would stay in the task's state all along.
        let refused = loop {
            let bytes = [AtomicU64::new(0), AtomicU64::new(0)];
            let tally = Tally { row, service: &service.stats, exchange: &bytes };
            let head = match read_request(&mut client, service, shutdown).await {
                Ok(Some(head)) => head,
                Ok(None) => break None,
                Err(refused) => break Some(refused),
            };
            // Boxed: the exchange's state (the request head, timers, both
            // directions of the relay) is on the heap only while a request is
            // in flight.
            let next = Box::pin(forward(&mut client, head, &info, service, shutdown, row, tally)).await;
            if client.buf.is_empty() {
                client.buf = BytesMut::new();
            }
            match next {
                Next::KeepAlive => continue,
                Next::Close => break None,
                Next::Abort => {
                    close(row);
                    // SO_LINGER 0: the close sends a reset, not an end of stream,
                    // which for a body delimited by the close would read as complete.
                    let _ = socket2::SockRef::from(&client.stream).set_linger(Some(Duration::ZERO));
                    return;
                }
            }
        };
        if let Some(refused) = refused {
            Box::pin(refuse_request(client, service, info.client, row, refused)).await;
            return;
        }
        close(row);
        let _ = client.stream.shutdown().await;
    }
}

/// Forwards the request whose `head` was just read, and counts it.
async fn forward(
    client: &mut Client,
    head: RequestHead,
    info: &ClientInfo,
    service: &ServiceRuntime,
    shutdown: &CancellationToken,
    row: Option<&Session>,
    tally: Tally<'_>,
) -> Next {
    client.buf.advance(head.head_len);
    let mut rec = Record::start(tally, head.head_len);
    let next = exchange(client, &head, info, service, shutdown, row, &mut rec).await;
    rec.finish(service, info.client, Some(&head));
    next
}

/// Answers a request refused before forwarding (`status`, `message`) and closes.
async fn refuse_request(
    mut client: Client,
    service: &ServiceRuntime,
    peer: SocketAddr,
    row: Option<&Session>,
    (status, message): (u16, &'static str),
) {
    tracing::info!(service = %service.name, client = %peer, status, message, "request refused");
    let bytes = [AtomicU64::new(0), AtomicU64::new(0)];
    let tally = Tally { row, service: &service.stats, exchange: &bytes };
    let mut rec = Record::start(tally, client.buf.len());
    let response = error_response(status, message, true);
    if client.stream.write_all(&response).await.is_ok() {
        tally.outbound(None).add(response.len() as u64);
    }
    rec.status = status;
    rec.finish(service, peer, None);
    close(row);
    linger_close(client.stream).await;
}

fn close(row: Option<&Session>) {
    if let Some(row) = row {
        row.set_state(SessionState::Closing);
    }
}

/// Waits for the next request head: up to `client_idle` for its first byte
/// (or until shutdown), then up to `request_headers` for the rest.
/// `Ok(None)` means the connection should just close; `Err` carries the
/// status and message to refuse the request with.
async fn read_request(
    client: &mut Client,
    service: &ServiceRuntime,
    shutdown: &CancellationToken,
) -> Result<Option<RequestHead>, (u16, &'static str)> {
    let t = &service.timeouts;
    let idle_deadline = Instant::now() + t.client_idle;
    let mut started = (!client.buf.is_empty()).then(Instant::now);
    loop {
        if !client.buf.is_empty() {
            match parse_request(&client.buf) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(e) => return Err((e.status(), refusal_message(&e))),
            }
        }
        let deadline = started.map_or(idle_deadline, |s| s + t.request_headers);
        let read = tokio::select! {
            biased;
            () = shutdown.cancelled(), if started.is_none() => return Ok(None),
            r = tokio::time::timeout_at(deadline, read_when_ready(client)) => r,
        };
        match read {
            Err(_) if started.is_none() => return Ok(None),
            Err(_) => return Err((408, "request headers not received in time")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => started = started.or_else(|| Some(Instant::now())),
        }
    }
}

/// Reads into the client's buffer once the connection is readable, taking
/// the buffer only then: an idle connection holds none. A new socket reads
/// as ready before any byte came, so a read that would block gives an empty
/// buffer back and waits again.
///
/// The read goes through `poll_read`, not `try_read_buf`: tokio takes a read
/// that leaves part of the buffer empty as proof that the socket is drained
/// only there, so after each request the next wait goes to epoll rather than
/// to a read that would block (one recvfrom per keep-alive request, seen
/// with strace).
async fn read_when_ready(client: &mut Client) -> std::io::Result<usize> {
    loop {
        // poll_read_ready, not readable(): no waiter node in this future's state.
        std::future::poll_fn(|cx| client.stream.poll_read_ready(cx)).await?;
        if client.buf.capacity() - client.buf.len() < 4096 {
            client.buf.reserve(8 * 1024);
        }
        let once = std::future::poll_fn(|cx| {
            Poll::Ready(tokio_util::io::poll_read_buf(Pin::new(&mut client.stream), cx, &mut client.buf))
        });
        match once.await {
            Poll::Ready(read) => return read,
            Poll::Pending if client.buf.is_empty() => client.buf = BytesMut::new(),
            Poll::Pending => {}
        }
    }
}

fn refusal_message(e: &HeadError) -> &'static str {
    match e {
        HeadError::Malformed(why) => why,
        HeadError::TooLarge => "request header fields too large",
        HeadError::UriTooLong => "request line too long",
        HeadError::UnsupportedCoding => "only the chunked transfer coding is supported",
        HeadError::MethodNotAllowed => "CONNECT is not served by a reverse proxy",
    }
}

/// How a relayed exchange ended.
enum Relayed {
    /// The backend agreed to switch protocols (101); nothing is written to
    /// the client yet, and the bytes after the head are in the buffer.
    Upgrade(ResponseHead, BytesMut),
    /// A response went to the client, whole or broken on the way.
    Response {
        status: u16,
        /// The client connection may carry another request.
        keep_client: bool,
        /// The backend connection may carry another request.
        reusable: bool,
        /// The response body broke on the way: the client connection is reset.
        broken: bool,
    },
}

/// Forwards one request and its response.
async fn exchange<'s>(
    client: &mut Client,
    head: &RequestHead,
    info: &ClientInfo,
    service: &'s ServiceRuntime,
    shutdown: &CancellationToken,
    row: Option<&Session>,
    rec: &mut Record<'s>,
) -> Next {
    let t = &service.timeouts;
    let no_body = head.body == BodyKind::None;
    // A request answered here keeps the connection only if nothing of it is
    // left unread. A refusal by policy always closes: each password guess
    // then costs a new session, which the rate per client bounds.
    let keep = no_body && head.keep_alive && !shutdown.is_cancelled();
    // Answers to HEAD carry no body, or the client would read it as the next response.
    let head_only = head.method == "HEAD";
    let authorization = head.headers.iter().find(|h| h.is("authorization")).map(|h| h.value.as_slice());
    if let Err(refusal) = service.policy.check_auth(authorization).await {
        let response = crate::front::refusal_response(&refusal, true);
        return answer(client, rec, head_only, refusal.status(), response, false).await;
    }
    // Routes see the path normalised, so `/%61dmin` or `/x/../admin` cannot
    // slip past a route for `/admin`; the backend gets the target as sent.
    let route = if service.routes.is_empty() {
        None // the common case pays nothing for the URL map
    } else {
        let mut view = RequestView::of(head);
        let path = normalize_path(view.path);
        view.path = &path;
        service.classify(&view)
    };
    if let Some(policy) = route.and_then(|r| r.policy.as_ref()) {
        let allowed = match policy.check_source(info.client.ip()) {
            Ok(()) => policy.check_auth(authorization).await,
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = allowed {
            let response = crate::front::refusal_response(&refusal, true);
            return answer(client, rec, head_only, refusal.status(), response, false).await;
        }
    }
    let pool = match route.map(|r| (&r.route.action, r.pool.as_ref())) {
        Some((RouteAction::Redirect { status, location }, _)) => {
            let response = simple_response(*status, &[("Location", location)], "", !keep);
            return answer(client, rec, head_only, *status, response, keep).await;
        }
        Some((RouteAction::Respond { status, body }, _)) => {
            let headers = [("Content-Type", "text/plain; charset=utf-8")];
            let response = simple_response(*status, &headers, body, !keep);
            return answer(client, rec, head_only, *status, response, keep).await;
        }
        Some((RouteAction::Pool(_), pool)) => pool,
        None => service.pool.as_ref(),
    };
    let Some(pool) = pool else {
        return reply_error(client, rec, head_only, 404, "no route matches this request", keep).await;
    };

    let mut out = Vec::with_capacity(1024);
    write_request_head(head, info, &mut out);
    // Only a request with no body can be sent again: its bytes are all in `out`.
    let replayable = no_body && is_idempotent(&head.method);
    let now = crate::clock::now();
    let sticky = Sticky::lookup(&service.persistence, pool, info.client.ip(), &head.headers, now);
    let mut opts = ConnectOptions {
        key: crate::l4::hash_ip(info.client.ip()),
        prefer: sticky.prefer,
        ring_key: sticky.ring_key,
        proxy: Some((info.client, info.listener)),
        retries: service.retries,
        connect_timeout: t.connect,
        reuse_within: Some(t.backend_idle),
    };
    loop {
        let mut up = match pool.connect(opts).await {
            Ok(up) => up,
            Err(e) => {
                return reply_error(client, rec, head_only, 503, &e.to_string(), no_body && head.keep_alive)
                    .await;
            }
        };
        let _session = pool.open_session(up.backend);
        rec.backend = Some((pool, up.backend));
        if let Some(row) = row {
            crate::sessions::connected(row, pool, &up);
        }
        remember_source(&service.persistence, pool, info.client.ip(), up.backend, now);
        let backend = up.backend;
        let mut on_head = |response: &mut ResponseHead| {
            persistence::on_response(service, pool, backend, &sticky, response, now);
        };
        let outcome =
            relay(client, &mut up, &out, head, service, pool, shutdown, &mut on_head, rec.tally).await;
        // Passive checks learn from every exchange the backend had a part in.
        match &outcome {
            Ok(Relayed::Response { status, .. }) if *status >= 500 => {
                pool.session_failed(up.backend, &format!("HTTP {status}"))
            }
            Ok(_) => pool.session_ok(up.backend),
            Err(Failure::Backend(why)) => pool.session_failed(up.backend, why),
            Err(Failure::Timeout) => pool.session_failed(up.backend, "no response in time"),
            Err(Failure::Stale | Failure::Client(_) | Failure::Unforwardable(_)) => {}
        }
        return match outcome {
            Ok(Relayed::Response { status, keep_client, reusable, broken }) => {
                rec.status = status;
                if reusable {
                    pool.release(up, t.backend_idle);
                }
                match (broken, keep_client) {
                    (true, _) => Next::Abort,
                    (false, true) => Next::KeepAlive,
                    (false, false) => Next::Close,
                }
            }
            Ok(Relayed::Upgrade(response, bbuf)) => match head.upgrade {
                Some(_) => {
                    rec.status = response.status;
                    let backend = &pool.backend(up.backend).stats;
                    let meters = crate::l4::Meters {
                        a_to_b: rec.tally.inbound(Some(backend)),
                        b_to_a: rec.tally.outbound(Some(backend)),
                        activity: row.map(|r| &r.last_activity_unix_ms),
                    };
                    let to_client = rec.tally.outbound(None);
                    upgrade(client, &mut up, bbuf, &response, head.version, t.client_idle, &meters, to_client)
                        .await
                }
                None => {
                    let msg = "the backend switched protocols unasked";
                    reply_error(client, rec, head_only, 502, msg, false).await
                }
            },
            Err(Failure::Stale) if replayable => {
                tracing::debug!(service = %service.name, "pooled backend connection was closed; retrying on a new one");
                pool.backend(up.backend).stats.retries.fetch_add(1, Ordering::Relaxed);
                opts.reuse_within = None;
                continue;
            }
            Err(Failure::Stale) => {
                let msg = "the backend closed the connection before responding";
                reply_error(client, rec, head_only, 502, msg, false).await
            }
            Err(Failure::Backend(why)) => {
                let backend = pool.backend(up.backend);
                tracing::warn!(service = %service.name, backend = %backend.name, error = %why, "backend failed before responding");
                reply_error(client, rec, head_only, 502, &why, false).await
            }
            Err(Failure::Unforwardable(why)) => reply_error(client, rec, head_only, 502, &why, false).await,
            Err(Failure::Timeout) => {
                let msg = format!("no response from the backend within {:?}", t.backend_response);
                reply_error(client, rec, head_only, 504, &msg, false).await
            }
            Err(Failure::Client(e)) => match e {
                CopyError::Framing(_) => {
                    reply_error(client, rec, head_only, 400, &e.to_string(), false).await
                }
                _ => Next::Close,
            },
        };
    }
}

/// Sends the request to the backend and its response to the client, both
/// ways at once: the request body keeps streaming while the response does,
/// for backends that answer before they have read everything. Interim (1xx)
/// responses are relayed to HTTP/1.1 clients. `Err` means no response head
/// reached the client.
#[allow(clippy::too_many_arguments)] // one exchange's whole context; a struct would only rename it
async fn relay(
    client: &mut Client,
    up: &mut Upstream,
    out: &[u8],
    head: &RequestHead,
    service: &ServiceRuntime,
    pool: &PoolRuntime,
    shutdown: &CancellationToken,
    on_head: &mut (dyn FnMut(&mut ResponseHead) + Send),
    tally: Tally<'_>,
) -> Result<Relayed, Failure> {
    let t = &service.timeouts;
    let stats = &pool.backend(up.backend).stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    join_burst().await;
    if let Err(e) = body::write(&mut up.stream, out, t.backend_response).await {
        return Err(if up.reused { Failure::Stale } else { Failure::Backend(e.to_string()) });
    }
    stats.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
    // The latency clock: from the request sent (head, or body once done) to the response head.
    let mut sent = Instant::now();
    let mut bbuf = BytesMut::with_capacity(8 * 1024);
    let (mut cr, mut cw) = client.stream.split();
    let (mut br, mut bw) = up.stream.split();
    let encode = if head.body == BodyKind::Chunked { Encode::Chunked } else { Encode::Raw };
    let meter = tally.inbound(Some(stats));
    let upload = body::copy(&mut cr, &mut client.buf, &mut bw, head.body, encode, t.client_idle, meter);
    tokio::pin!(upload);
    let mut uploading = head.body != BodyKind::None;
    let mut upload_broke = false;
    // The response clock starts once the request is sent: an upload has its own idle bound.
    let mut deadline = (!uploading).then(|| Instant::now() + t.backend_response);
    let mut interim = false;
    let response = loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut upload, if uploading => {
                uploading = false;
                sent = Instant::now();
                deadline = Some(sent + t.backend_response);
                match r {
                    Ok(_) => {}
                    Err(e) if e.is_sender() => return Err(Failure::Client(e)),
                    // The backend stopped reading; it may have answered already.
                    Err(_) => upload_broke = true,
                }
            }
            r = read_head(&mut br, &mut bbuf, &head.method) => match r {
                Ok(resp) if resp.status < 200 && resp.status != 101 => {
                    interim = true;
                    stats.bytes_in.fetch_add(resp.head_len as u64, Ordering::Relaxed);
                    if head.version == Version::Http11 {
                        let mut msg = Vec::new();
                        write_response_head(&resp, ResponseFraming::NoBody, Version::Http11, true, &mut msg);
                        if let Err(e) = body::write(&mut cw, &msg, t.client_idle).await {
                            return Err(Failure::Client(e));
                        }
                        tally.outbound(None).add(msg.len() as u64);
                    }
                    bbuf.advance(resp.head_len);
                }
                Ok(resp) => break resp,
                Err(None) if up.reused && !interim && bbuf.is_empty() => return Err(Failure::Stale),
                Err(None) => return Err(Failure::Backend("the backend closed the connection before responding".into())),
                Err(Some(why)) => return Err(Failure::Backend(why)),
            },
            () = timer => return Err(Failure::Timeout),
        }
    };
    stats.latency.observe(sent.elapsed());
    let mut response = response;
    bbuf.advance(response.head_len);
    stats.bytes_in.fetch_add(response.head_len as u64, Ordering::Relaxed);
    crate::stats::count_status(&stats.responses, response.status);
    on_head(&mut response);
    let status = response.status;
    if status == 101 {
        if uploading {
            return Err(Failure::Backend("the backend switched protocols during the request body".into()));
        }
        return Ok(Relayed::Upgrade(response, bbuf));
    }
    // A body the backend delimits by closing goes to an HTTP/1.1 client
    // re-chunked, so a break is visible (no last chunk) and the client
    // connection can stay; unless it carries a transfer coding of its own,
    // which only a close can delimit.
    let framing = match ResponseFraming::decide(response.body, head.version) {
        ResponseFraming::Chunked
            if response.body == BodyKind::UntilClose
                && response.headers.iter().any(|h| h.is("transfer-encoding")) =>
        {
            ResponseFraming::Close
        }
        framing => framing,
    };
    if response.coded && framing != ResponseFraming::Chunked {
        return Err(Failure::Unforwardable(
            "the response has a transfer coding an HTTP/1.0 client cannot take".into(),
        ));
    }
    // A client still sending is told the connection ends with this response.
    let keep_client = head.keep_alive
        && !uploading
        && !upload_broke
        && framing != ResponseFraming::Close
        && !shutdown.is_cancelled();
    let mut msg = Vec::with_capacity(512);
    write_response_head(&response, framing, head.version, keep_client, &mut msg);
    // A small response whose body is already read goes out in one write.
    let mut body_kind = response.body;
    if let BodyKind::Length(n) = body_kind {
        if bbuf.len() as u64 >= n {
            msg.extend_from_slice(&bbuf[..n as usize]);
            bbuf.advance(n as usize);
            stats.bytes_in.fetch_add(n, Ordering::Relaxed);
            body_kind = BodyKind::None;
        }
    }
    let encode = if framing == ResponseFraming::Chunked { Encode::Chunked } else { Encode::Raw };
    let downloaded = {
        let download = async {
            body::write(&mut cw, &msg, t.client_idle).await?;
            tally.outbound(None).add(msg.len() as u64);
            let meter = tally.outbound(Some(stats));
            body::copy(&mut br, &mut bbuf, &mut cw, body_kind, encode, t.backend_response, meter).await
        };
        tokio::pin!(download);
        loop {
            tokio::select! {
                r = &mut upload, if uploading => {
                    uploading = false;
                    match r {
                        Ok(_) => {}
                        // The client broke off its request mid-response: end both.
                        Err(e) if e.is_sender() => {
                            return Ok(Relayed::Response { status, keep_client: false, reusable: false, broken: false });
                        }
                        Err(_) => upload_broke = true,
                    }
                }
                r = &mut download => break r,
            }
        }
    };
    if let Err(e) = downloaded {
        // Never pretend a broken response finished: closing tells the client.
        if e.is_sender() {
            let name = &pool.backend(up.backend).name;
            tracing::warn!(service = %service.name, backend = %name, error = %e, "response body broken");
        }
        // A reset, not an end of stream, when the body was the backend's fault.
        return Ok(Relayed::Response { status, keep_client: false, reusable: false, broken: e.is_sender() });
    }
    let request_done = !uploading && !upload_broke;
    // A response bodiless by rule (HEAD, 204, 304) that announced a body may
    // be followed by stray body bytes later: such a connection is not reused.
    let announced = response.body == BodyKind::None
        && response
            .headers
            .iter()
            .any(|h| h.is("transfer-encoding") || (h.is("content-length") && h.value.trim_ascii() != b"0"));
    let reusable = response.keep_alive && request_done && bbuf.is_empty() && !announced;
    Ok(Relayed::Response { status, keep_client: keep_client && request_done, reusable, broken: false })
}

/// Before a request goes to its backend: lets every other session with a
/// request ready read it first, so the requests go to the backends in one
/// burst and a backend woken once finds several. Sent at once, each wakes a
/// backend (and preempts Fulcrum) on its own: measured 39-40k req/s against
/// HAProxy's 46k, and 46k with the yield (one worker, 50 connections,
/// bench/run's set-up).
///
/// On a current-thread runtime (`run`'s), only a request that is not the
/// first one sent since the thread last blocked waiting for events yields:
/// a lone request goes at once, as a yield costs an extra epoll_wait
/// (timeout 0) and finds no one to batch with. The park count counts only
/// those blocking waits, not the epoll_wait a yield causes. Elsewhere (the
/// multi-thread runtime of `demo`) every request yields.
async fn join_burst() {
    thread_local! {
        /// The runtime's park count when this thread last sent a request.
        static SENT_AT_PARK: Cell<u64> = const { Cell::new(u64::MAX) };
    }
    let runtime = tokio::runtime::Handle::current();
    let alone = runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread && {
        let parks = runtime.metrics().worker_park_count(0);
        SENT_AT_PARK.with(|at| at.replace(parks)) != parks
    };
    drop(runtime);
    if !alone {
        tokio::task::yield_now().await;
    }
}

/// Reads until a whole response head is in `buf`. `Err(None)` is a close or
/// reset, `Err(Some(why))` a malformed head. Cancel-safe: bytes read stay in `buf`.
async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    method: &str,
) -> Result<ResponseHead, Option<String>> {
    loop {
        if !buf.is_empty() {
            match parse_response(buf, method) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(Some(format!("invalid response from the backend: {e}"))),
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8 * 1024);
        }
        match r.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

/// The backend accepted a protocol switch: relay the 101, then bytes both
/// ways, counted by `meters` (`to_client` counts what only the client sees).
#[allow(clippy::too_many_arguments)] // the tunnel's meters come on top of the exchange's state
async fn upgrade(
    client: &mut Client,
    up: &mut Upstream,
    bbuf: BytesMut,
    response: &ResponseHead,
    version: Version,
    idle: Duration,
    meters: &crate::l4::Meters<'_>,
    to_client: crate::sessions::Meter<'_>,
) -> Next {
    let mut out = Vec::with_capacity(256 + bbuf.len());
    write_response_head(response, ResponseFraming::NoBody, version, true, &mut out);
    let head_len = out.len();
    out.extend_from_slice(&bbuf);
    if client.stream.write_all(&out).await.is_err() {
        return Next::Close;
    }
    // The backend's head was counted as it was read; the bytes after it were not.
    to_client.add(head_len as u64);
    meters.b_to_a.add(bbuf.len() as u64);
    if !client.buf.is_empty() && up.stream.write_all(&client.buf).await.is_err() {
        return Next::Close;
    }
    meters.a_to_b.add(client.buf.len() as u64);
    client.buf.clear();
    let _ = crate::l4::tunnel(&mut client.stream, &mut up.stream, idle, meters).await;
    Next::Close
}

/// Sends a response Fulcrum made itself with `status` (its head only for a
/// HEAD request); keeps the connection only if `keep`.
async fn answer(
    client: &mut Client,
    rec: &mut Record<'_>,
    head_only: bool,
    status: u16,
    mut response: Vec<u8>,
    keep: bool,
) -> Next {
    if head_only {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            response.truncate(end + 4);
        }
    }
    rec.status = status;
    if client.stream.write_all(&response).await.is_err() {
        return Next::Close;
    }
    rec.tally.outbound(None).add(response.len() as u64);
    if keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Answers the client with an error; keeps the connection only if `keep`.
async fn reply_error(
    client: &mut Client,
    rec: &mut Record<'_>,
    head_only: bool,
    status: u16,
    message: &str,
    keep: bool,
) -> Next {
    answer(client, rec, head_only, status, error_response(status, message, !keep), keep).await
}

/// Closes after an error response without losing it: shut our side, then
/// read what the client still sends for a moment, so the close does not
/// reset the connection before the client reads the response.
pub async fn linger_close(stream: TcpStream) {
    // Boxed, as are the other rare paths of a session: their state would
    // otherwise sit in every session task, idle ones included.
    Box::pin(linger(stream)).await;
}

async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0;
        while let Ok(n @ 1..) = stream.read(&mut sink).await {
            total += n;
            if total > 256 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
