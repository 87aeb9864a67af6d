//! `http` mode: HTTP/1.x request by request, keep-alive on both sides,
//! backend connections reused, bodies streamed.
//!
//! Written on `httparse` and the core's framing rules rather than on hyper:
//! a load balancer must refuse ambiguous messages hyper would normalise
//! silently, say 431/414/408 exactly, keep the backend connection choice
//! per request, and own the syscalls per request (a plain hyper server with
//! hyper-util's pooled client measured about 0.8× HAProxy on this machine).

mod body;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fulcrum_core::http::{
    error_response, is_idempotent, parse_request, parse_response, write_request_head, write_response_head,
    BodyKind, ClientInfo, HeadError, RequestHead, ResponseFraming, ResponseHead, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::server::ServiceRuntime;
use crate::upstream::{ConnectOptions, Upstream};
use body::{CopyError, Encode};

/// A client connection and the bytes read from it but not yet used.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

/// What happens to the client connection after an exchange.
enum Next {
    KeepAlive,
    Close,
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
}

/// Serves one http-mode client connection until it closes, idles out, or
/// Fulcrum shuts down (between requests).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    service: &ServiceRuntime,
    shutdown: &CancellationToken,
) {
    let mut client = Client { stream, buf: BytesMut::with_capacity(8 * 1024) };
    let info = ClientInfo { client: peer, listener: local };
    loop {
        let head = match read_request(&mut client, service, shutdown).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err((status, message)) => {
                tracing::info!(service = %service.name, client = %peer, status, message, "request refused");
                let _ = client.stream.write_all(&error_response(status, message, true)).await;
                linger_close(client.stream).await;
                return;
            }
        };
        client.buf.advance(head.head_len);
        match exchange(&mut client, &head, &info, service, shutdown).await {
            Next::KeepAlive => continue,
            Next::Close => break,
        }
    }
    let _ = client.stream.shutdown().await;
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
        if client.buf.capacity() - client.buf.len() < 4096 {
            client.buf.reserve(8 * 1024);
        }
        let read = tokio::select! {
            biased;
            () = shutdown.cancelled(), if started.is_none() => return Ok(None),
            r = tokio::time::timeout_at(deadline, client.stream.read_buf(&mut client.buf)) => r,
        };
        match read {
            Err(_) if started.is_none() => return Ok(None),
            Err(_) => return Err((408, "request headers not received in time")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => started = started.or_else(|| Some(Instant::now())),
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

/// Forwards one request and its response.
async fn exchange(
    client: &mut Client,
    head: &RequestHead,
    info: &ClientInfo,
    service: &ServiceRuntime,
    shutdown: &CancellationToken,
) -> Next {
    let t = &service.timeouts;
    let mut out = Vec::with_capacity(1024);
    write_request_head(head, info, &mut out);
    // Only a request with no body can be sent again: its bytes are all in `out`.
    let replayable = head.body == BodyKind::None && is_idempotent(&head.method);
    let no_body = head.body == BodyKind::None;
    let mut opts = ConnectOptions {
        key: crate::l4::hash_ip(info.client.ip()),
        retries: service.retries,
        connect_timeout: t.connect,
        reuse_within: Some(t.backend_idle),
    };
    let (mut up, _session, mut bbuf, response, request_done) = loop {
        let mut up = match service.pool.connect(opts).await {
            Ok(up) => up,
            Err(e) => return reply_error(client, 503, &e.to_string(), no_body && head.keep_alive).await,
        };
        let session = service.pool.open_session(up.backend);
        let mut bbuf = BytesMut::with_capacity(8 * 1024);
        match send_request(client, &mut up, &mut bbuf, &out, head, t).await {
            Ok((response, done)) => break (up, session, bbuf, response, done),
            Err(Failure::Stale) if replayable => {
                tracing::debug!(service = %service.name, "pooled backend connection was closed; retrying on a new one");
                opts.reuse_within = None;
            }
            Err(Failure::Stale) => {
                let msg = "the backend closed the connection before responding";
                return reply_error(client, 502, msg, false).await;
            }
            Err(Failure::Backend(why)) => {
                let backend = service.pool.backend(up.backend);
                tracing::warn!(service = %service.name, backend = %backend.name, error = %why, "backend failed before responding");
                return reply_error(client, 502, &why, false).await;
            }
            Err(Failure::Timeout) => {
                let msg = format!("no response from the backend within {:?}", t.backend_response);
                return reply_error(client, 504, &msg, false).await;
            }
            Err(Failure::Client(e)) => {
                return match e {
                    CopyError::Framing(_) => reply_error(client, 400, &e.to_string(), false).await,
                    _ => Next::Close,
                };
            }
        }
    };
    bbuf.advance(response.head_len);
    let backend = up.backend;

    if response.status == 101 {
        return match head.upgrade {
            Some(_) => upgrade(client, &mut up, bbuf, &response, head.version, t.client_idle).await,
            None => reply_error(client, 502, "the backend switched protocols unasked", false).await,
        };
    }

    let framing = ResponseFraming::decide(response.body, head.version);
    let keep_client =
        head.keep_alive && request_done && framing != ResponseFraming::Close && !shutdown.is_cancelled();
    let mut out = Vec::with_capacity(512);
    write_response_head(&response, framing, head.version, keep_client, &mut out);
    // A small response whose body is already read goes out in one write.
    let mut body_kind = response.body;
    if let BodyKind::Length(n) = body_kind {
        if bbuf.len() as u64 >= n {
            out.extend_from_slice(&bbuf[..n as usize]);
            bbuf.advance(n as usize);
            body_kind = BodyKind::None;
        }
    }
    if body::write(&mut client.stream, &out, t.client_idle).await.is_err() {
        return Next::Close;
    }
    let encode = if framing == ResponseFraming::Chunked { Encode::Chunked } else { Encode::Raw };
    if let Err(e) =
        body::copy(&mut up.stream, &mut bbuf, &mut client.stream, body_kind, encode, t.backend_response).await
    {
        // Never pretend a broken response finished: closing tells the client.
        if e.is_sender() {
            let name = &service.pool.backend(backend).name;
            tracing::warn!(service = %service.name, backend = %name, error = %e, "response body broken");
        }
        return Next::Close;
    }
    if response.keep_alive && request_done && bbuf.is_empty() {
        service.pool.release(backend, up.stream);
    }
    if keep_client {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Sends the request head and body to the backend and waits for its final
/// response head, relaying interim (1xx) responses to the client. Returns the
/// head and whether the whole request body was sent.
async fn send_request(
    client: &mut Client,
    up: &mut Upstream,
    bbuf: &mut BytesMut,
    out: &[u8],
    head: &RequestHead,
    t: &fulcrum_core::model::Timeouts,
) -> Result<(ResponseHead, bool), Failure> {
    if let Err(e) = body::write(&mut up.stream, out, t.backend_response).await {
        return Err(if up.reused { Failure::Stale } else { Failure::Backend(e.to_string()) });
    }
    let (mut cr, mut cw) = client.stream.split();
    let (mut br, mut bw) = up.stream.split();
    let encode = if head.body == BodyKind::Chunked { Encode::Chunked } else { Encode::Raw };
    let upload = body::copy(&mut cr, &mut client.buf, &mut bw, head.body, encode, t.client_idle);
    tokio::pin!(upload);
    let mut uploading = head.body != BodyKind::None;
    let mut upload_broke = false;
    // The response clock starts once the request is sent: an upload has its own idle bound.
    let mut deadline = (!uploading).then(|| Instant::now() + t.backend_response);
    let mut interim = false;
    loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut upload, if uploading => {
                uploading = false;
                deadline = Some(Instant::now() + t.backend_response);
                match r {
                    Ok(_) => {}
                    Err(e) if e.is_sender() => return Err(Failure::Client(e)),
                    // The backend stopped reading; it may have answered already.
                    Err(_) => upload_broke = true,
                }
            }
            r = read_head(&mut br, bbuf, &head.method) => match r {
                Ok(resp) if resp.status < 200 && resp.status != 101 => {
                    interim = true;
                    if head.version == Version::Http11 {
                        let mut msg = Vec::new();
                        write_response_head(&resp, ResponseFraming::NoBody, Version::Http11, true, &mut msg);
                        if let Err(e) = body::write(&mut cw, &msg, t.client_idle).await {
                            return Err(Failure::Client(e));
                        }
                    }
                    bbuf.advance(resp.head_len);
                }
                Ok(resp) => return Ok((resp, !uploading && !upload_broke)),
                Err(None) if up.reused && !interim && bbuf.is_empty() => return Err(Failure::Stale),
                Err(None) => return Err(Failure::Backend("the backend closed the connection before responding".into())),
                Err(Some(why)) => return Err(Failure::Backend(why)),
            },
            () = timer => return Err(Failure::Timeout),
        }
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

/// The backend accepted a protocol switch: relay the 101, then bytes both ways.
async fn upgrade(
    client: &mut Client,
    up: &mut Upstream,
    bbuf: BytesMut,
    response: &ResponseHead,
    version: Version,
    idle: Duration,
) -> Next {
    let mut out = Vec::with_capacity(256 + bbuf.len());
    write_response_head(response, ResponseFraming::NoBody, version, true, &mut out);
    out.extend_from_slice(&bbuf);
    if client.stream.write_all(&out).await.is_err() {
        return Next::Close;
    }
    if !client.buf.is_empty() && up.stream.write_all(&client.buf).await.is_err() {
        return Next::Close;
    }
    client.buf.clear();
    let _ = crate::l4::tunnel(&mut client.stream, &mut up.stream, idle).await;
    Next::Close
}

/// Answers the client with an error; keeps the connection only if `keep`.
async fn reply_error(client: &mut Client, status: u16, message: &str, keep: bool) -> Next {
    if client.stream.write_all(&error_response(status, message, !keep)).await.is_err() || !keep {
        return Next::Close;
    }
    Next::KeepAlive
}

/// Closes after an error response without losing it: shut our side, then
/// read what the client still sends for a moment, so the close does not
/// reset the connection before the client reads the response.
pub async fn linger_close(mut stream: TcpStream) {
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
