//! The probes: a TCP connect, an HTTP request, an agent report. Each returns
//! a verdict string for operators ("HTTP 503 from /healthz", "connect
//! refused", "timeout after 500ms") and never outlives its timeout.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_core::agent::AgentReport;
use fulcrum_core::http::{parse_response, BodyKind};
use fulcrum_core::model::{HttpCheck, ProxyVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::timed_out;

/// Most bytes read of a check or agent response.
const MAX_RESPONSE: usize = 1024 * 1024;

pub async fn tcp(address: SocketAddr, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok("connect ok".into()),
        Ok(Err(e)) => Err(connect_error(&e)),
        Err(_) => Err(timed_out(timeout)),
    }
}

/// An HTTP check; a pool that sends PROXY headers sends one on its checks
/// too, since its backends expect one first on every connection.
pub async fn http(
    address: SocketAddr,
    check: &HttpCheck,
    timeout: Duration,
    proxy: Option<ProxyVersion>,
) -> Result<String, String> {
    let host = check.host.clone().unwrap_or_else(|| address.to_string());
    let request = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fulcrum-check\r\nConnection: close\r\n\r\n",
        check.method, check.path
    );
    let (status, body) =
        match tokio::time::timeout(timeout, exchange(address, &request, &check.method, proxy)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out(timeout)),
        };
    let (low, high) = check.expect_status;
    if !(low..=high).contains(&status) {
        return Err(format!("HTTP {status} from {}", check.path));
    }
    if let Some(needle) = &check.body_contains {
        if !body.windows(needle.len().max(1)).any(|w| w == needle.as_bytes()) {
            return Err(format!("HTTP {status} from {} without {needle:?} in the body", check.path));
        }
    }
    Ok(format!("HTTP {status} from {}", check.path))
}

/// Reads the agent's report (`GET /report`).
pub async fn agent(address: SocketAddr, timeout: Duration) -> Result<AgentReport, String> {
    let request = format!("GET /report HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let (status, body) = match tokio::time::timeout(timeout, exchange(address, &request, "GET", None)).await {
        Ok(r) => r?,
        Err(_) => return Err(timed_out(timeout)),
    };
    if status != 200 {
        return Err(format!("HTTP {status} from the agent"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("unreadable report: {e}"))
}

/// Sends `request` on a new connection and reads the response: to the end
/// of its Content-Length body, or to the close. Returns the status and body.
async fn exchange(
    address: SocketAddr,
    request: &str,
    method: &str,
    proxy: Option<ProxyVersion>,
) -> Result<(u16, Vec<u8>), String> {
    let mut stream = TcpStream::connect(address).await.map_err(|e| connect_error(&e))?;
    if let Some(version) = proxy {
        let local = stream.local_addr().map_err(|e| format!("local address: {e}"))?;
        let header = fulcrum_core::proxy::encode(version, local, address);
        stream.write_all(&header).await.map_err(|e| format!("write: {e}"))?;
    }
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Ok(Some(head)) = parse_response(&buf, method) {
            let body = &buf[head.head_len..];
            match head.body {
                BodyKind::None => return Ok((head.status, Vec::new())),
                BodyKind::Length(n) if body.len() as u64 >= n => {
                    return Ok((head.status, body[..n as usize].to_vec()))
                }
                _ => {}
            }
        }
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 || buf.len() > MAX_RESPONSE {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    match parse_response(&buf, method) {
        Ok(Some(head)) => Ok((head.status, buf[head.head_len..].to_vec())),
        Ok(None) if buf.is_empty() => Err("closed without a response".into()),
        Ok(None) => Err("truncated response".into()),
        Err(e) => Err(format!("invalid response: {e}")),
    }
}

fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect refused".into(),
        _ => format!("connect: {e}"),
    }
}
