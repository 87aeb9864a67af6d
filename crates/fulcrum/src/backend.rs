//! `fulcrum backend`: a small HTTP/1.1 server for demos, tests and benchmarks.
//!
//! Any path answers 200 with `X-Backend: NAME` and body `NAME\n`; `/healthz`
//! answers 200; `/status/N` answers status N; `/delay/MS` answers after MS
//! milliseconds; `/bytes/N` streams N bytes. A request body is read whole
//! (counted, never stored) and its length returned in `X-Body-Bytes`.
//! `/_counters` answers `{"connections":N,"requests":M}` (JSON): the client
//! connections this backend has accepted and the requests it has received
//! since it started, this one included. `bench/run` reads it before and after
//! a run to see how well a proxy reuses its backend connections; the counts
//! are per listening backend, so the demo's in-process backends keep theirs
//! apart.
//! Built on hyper, an HTTP implementation independent of Fulcrum's own, so
//! tests through Fulcrum exercise two parsers against each other.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Most a `/delay/MS` may ask for, so a typo cannot park a connection for days.
const MAX_DELAY_MS: u64 = 3_600_000;

/// Runs a backend until Ctrl-C or SIGTERM.
pub fn main(listen: SocketAddr, name: &str) -> ExitCode {
    let Some(runtime) = crate::run::runtime(false) else { return ExitCode::FAILURE };
    runtime.block_on(async {
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: backend {name:?}: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stop = crate::shutdown::signal();
        let address = listener.local_addr().map_or(listen, |a| a);
        println!("listening backend={name} address={address}");
        tokio::select! {
            () = serve(listener, Arc::from(name)) => {}
            () = stop => {}
        }
        ExitCode::SUCCESS
    })
}

/// What `/_counters` reports. Relaxed atomics: the two counts are read apart,
/// and a benchmark reading them between runs needs no ordering between them.
#[derive(Default)]
struct Counters {
    /// Client connections accepted.
    connections: AtomicU64,
    /// Requests whose head was read, counted before the answer is written.
    requests: AtomicU64,
}

/// Serves connections from `listener` forever, as backend `name`.
pub async fn serve(listener: TcpListener, name: Arc<str>) {
    let counters = Arc::new(Counters::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, name.clone(), counters.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    counters: Arc<Counters>,
) -> Result<Response<Reply>, Infallible> {
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let mut body = req.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let mut reply = if path == "/_counters" { counters_reply(&counters) } else { route(&path, &name).await };
    let headers = reply.headers_mut();
    if let Ok(v) = name.parse() {
        headers.insert("x-backend", v);
    }
    headers.insert("x-body-bytes", received.into());
    Ok(reply)
}

async fn route(path: &str, name: &str) -> Response<Reply> {
    let named = || Reply::Full(Bytes::from(format!("{name}\n")));
    let number = |prefix: &str| path.strip_prefix(prefix).map(|n| n.parse::<u64>());
    if path == "/healthz" {
        return respond(StatusCode::OK, Reply::Full(Bytes::from_static(b"ok\n")));
    }
    if let Some(n) = number("/status/") {
        return match n.ok().and_then(|n| u16::try_from(n).ok()).and_then(|n| StatusCode::from_u16(n).ok()) {
            Some(s) if s.as_u16() >= 200 => {
                let body = if s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
                    Reply::Full(Bytes::new())
                } else {
                    named()
                };
                respond(s, body)
            }
            _ => bad("/status/N takes a status from 200 to 599"),
        };
    }
    if let Some(ms) = number("/delay/") {
        return match ms {
            Ok(ms) if ms <= MAX_DELAY_MS => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                respond(StatusCode::OK, named())
            }
            _ => bad("/delay/MS takes milliseconds up to 3600000"),
        };
    }
    if let Some(n) = number("/bytes/") {
        return match n {
            Ok(n) => respond(StatusCode::OK, Reply::Zeros(n)),
            Err(_) => bad("/bytes/N takes a byte count"),
        };
    }
    respond(StatusCode::OK, named())
}

fn counters_reply(counters: &Counters) -> Response<Reply> {
    let body = format!(
        "{{\"connections\":{},\"requests\":{}}}\n",
        counters.connections.load(Ordering::Relaxed),
        counters.requests.load(Ordering::Relaxed)
    );
    let mut r = respond(StatusCode::OK, Reply::Full(Bytes::from(body)));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn respond(status: StatusCode, body: Reply) -> Response<Reply> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn bad(message: &str) -> Response<Reply> {
    respond(StatusCode::BAD_REQUEST, Reply::Full(Bytes::from(format!("{message}\n"))))
}

/// A response body: a small text, or a stream of zero bytes of a given length.
enum Reply {
    Full(Bytes),
    Zeros(u64),
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(match &mut *self {
            Reply::Full(b) if b.is_empty() => None,
            Reply::Full(b) => Some(Ok(Frame::data(std::mem::take(b)))),
            Reply::Zeros(0) => None,
            Reply::Zeros(left) => {
                let n = (*left).min(ZEROS.len() as u64);
                *left -= n;
                Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n as usize]))))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Reply::Full(b) if b.is_empty()) || matches!(self, Reply::Zeros(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Full(b) => SizeHint::with_exact(b.len() as u64),
            Reply::Zeros(n) => SizeHint::with_exact(*n),
        }
    }
}

/// Lets the demo run backends in-process: binds and serves in the background.
pub async fn spawn(
    listen: SocketAddr,
    name: &str,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    Ok((address, serve(listener, Arc::from(name))))
}
