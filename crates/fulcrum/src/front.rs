//! The front of every session, before tcp or http handling: the PROXY
//! protocol header from a trusted upstream load balancer, and the service's
//! source policy and session limits, answered as a client expects.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use fulcrum_core::http::simple_response;
use fulcrum_core::model::Mode;
use fulcrum_core::policy::Refusal;
use fulcrum_core::proxy::{self, ProxyHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::service::ServiceRuntime;

/// The client's address from the PROXY header a trusted peer sends first
/// (the caller checks that the service accepts one from this peer). Bytes read past the header stay in `buf`.
/// `None`: the header was missing, malformed or late; the connection is closed.
pub async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    service: &ServiceRuntime,
    buf: &mut BytesMut,
) -> Option<SocketAddr> {
    debug_assert!(service.expects_proxy_header(peer.ip()));
    let deadline = tokio::time::Instant::now() + service.timeouts.request_headers;
    loop {
        match proxy::parse(buf) {
            Ok(Some((header, used))) => {
                buf.advance(used);
                return Some(match header {
                    ProxyHeader::Local => peer,
                    ProxyHeader::Proxied { client, .. } => client,
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::info!(service = %service.name, peer = %peer, error = %e, "PROXY header refused");
                return None;
            }
        }
        buf.reserve(512);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                tracing::info!(service = %service.name, peer = %peer, "no PROXY header in time");
                return None;
            }
        }
    }
}

/// Counts a connection accepted by a listener of `service`, before any refusal.
pub fn count_accepted(service: &ServiceRuntime) {
    service.stats.sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Counts a connection turned away at `max_connections` (a 503 in http mode).
pub fn count_refused_at_limit(service: &ServiceRuntime) {
    service.stats.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if service.mode == Mode::Http {
        crate::stats::count_status(&service.stats.responses, 503);
    }
}

/// Turns a session away for its policy: in http mode with the status and
/// headers a client expects (403, 401 with `WWW-Authenticate`, 429 with
/// `Retry-After`), in tcp mode with a close. Counted as refused, and as a
/// response by its class in http mode.
pub async fn refuse(mut stream: TcpStream, service: &ServiceRuntime, client: SocketAddr, refusal: &Refusal) {
    service.stats.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(service = %service.name, client = %client, status = refusal.status(), reason = ?refusal, "session refused by policy");
    if service.mode == Mode::Http {
        crate::stats::count_status(&service.stats.responses, refusal.status());
        let _ = stream.write_all(&refusal_response(refusal, true)).await;
        crate::l7::linger_close(stream).await;
    }
}

/// The response for a refusal.
pub fn refusal_response(refusal: &Refusal, close: bool) -> Vec<u8> {
    let status = refusal.status();
    let reason = fulcrum_core::http::reason(status);
    match refusal {
        Refusal::Forbidden(why) => {
            simple_response(status, &[], &format!("{status} {reason}: {why}\n"), close)
        }
        Refusal::Unauthorized { challenge } => simple_response(
            status,
            &[("WWW-Authenticate", challenge)],
            &format!("{status} {reason}\n"),
            close,
        ),
        Refusal::TooMany { retry_after_secs } => {
            let after = retry_after_secs.to_string();
            simple_response(status, &[("Retry-After", &after)], &format!("{status} {reason}\n"), close)
        }
    }
}
