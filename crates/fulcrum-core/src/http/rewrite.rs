//! What a proxy writes to the next hop: heads with hop-by-hop fields removed
//! (RFC 9110 §7.6.1), framing re-stated once and unambiguously, and the
//! client's address added (`X-Forwarded-For`, `X-Forwarded-Proto`, RFC 7239
//! `Forwarded`).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use super::{has_token, BodyKind, Header, RequestHead, ResponseHead, Version};

/// Who sent a request, as the backend should learn it.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// The listener (VIP:port) the client connected to.
    pub listener: SocketAddr,
}

/// How a response body goes to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    NoBody,
    Length(u64),
    /// Re-encoded chunks (HTTP/1.1 clients).
    Chunked,
    /// Delimited by closing the client connection (an HTTP/1.0 client of a
    /// chunked response, or a backend that delimits by close).
    Close,
}

impl ResponseFraming {
    /// Picks the framing toward a client of `version` for a backend body of `kind`.
    pub fn decide(kind: BodyKind, version: Version) -> Self {
        match (kind, version) {
            (BodyKind::None, _) => Self::NoBody,
            (BodyKind::Length(n), _) => Self::Length(n),
            // Re-chunked: a body cut short then lacks its last chunk, where a
            // close-delimited one would look complete.
            (BodyKind::Chunked | BodyKind::UntilClose, Version::Http11) => Self::Chunked,
            (BodyKind::Chunked | BodyKind::UntilClose, Version::Http10) => Self::Close,
        }
    }
}

/// Fields that describe one connection, never forwarded as such.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length", // re-stated by the writer from the framing decision
];

/// Whether `h` is hop-by-hop, by the fixed list or by being named in
/// `Connection`. `Host` is end-to-end whatever `Connection` says: naming it
/// there would otherwise send an HTTP/1.1 request on without one.
fn is_hop_by_hop(h: &Header, connection: &[&Header]) -> bool {
    HOP_BY_HOP.iter().any(|n| h.is(n))
        || (!h.is("host") && connection.iter().any(|c| has_token(&c.value, &h.name)))
}

/// The non-empty values of the request's `name` fields (the hops before
/// this one), each followed by ", " for the hop appended after them.
fn write_earlier_hops(out: &mut Vec<u8>, head: &RequestHead, name: &str, connection: &[&Header]) {
    let earlier =
        head.headers.iter().filter(|h| h.is(name) && !h.value.is_empty() && !is_hop_by_hop(h, connection));
    for h in earlier {
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b", ");
    }
}

/// Writes the request head to send to a backend for `head` (always HTTP/1.1).
pub fn write_request_head(head: &RequestHead, info: &ClientInfo, out: &mut Vec<u8>) {
    let connection: Vec<&Header> = head.headers.iter().filter(|h| h.is("connection")).collect();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // Written straight into `out`, with no temporaries: this runs for every
    // request (callgrind: formatting the addresses with `fmt` cost about a
    // tenth of Fulcrum's instructions per keep-alive request).
    for h in &head.headers {
        if !is_hop_by_hop(h, &connection) && !h.is("x-forwarded-for") && !h.is("forwarded") {
            let ours = h.is("x-forwarded-proto") || (h.is("expect") && head.version == Version::Http10);
            // Ours replaces the client's X-Forwarded-Proto; a 1.0 client cannot take a 100.
            if !ours {
                put(out, &h.name, &h.value);
            }
        }
    }
    if !head.headers.iter().any(|h| h.is("host")) {
        out.extend_from_slice(b"Host: ");
        let _ = write!(out, "{}", info.listener);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    write_earlier_hops(out, head, "x-forwarded-for", &connection);
    write_ip(out, info.client.ip());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\nForwarded: ");
    write_earlier_hops(out, head, "forwarded", &connection);
    out.extend_from_slice(b"for=");
    write_node(out, info.client);
    out.extend_from_slice(b";by=");
    write_node(out, info.listener);
    out.extend_from_slice(b";proto=http\r\n");

    match head.body {
        BodyKind::Length(n) => put(out, "Content-Length", itoa::Buffer::new().format(n).as_bytes()),
        BodyKind::Chunked => put(out, "Transfer-Encoding", b"chunked"),
        // A POST with "Content-Length: 0" keeps it: some servers answer 411 without.
        BodyKind::None if head.headers.iter().any(|h| h.is("content-length")) => {
            put(out, "Content-Length", b"0")
        }
        BodyKind::None | BodyKind::UntilClose => {}
    }
    if let Some(proto) = &head.upgrade {
        put(out, "Connection", b"upgrade");
        put(out, "Upgrade", proto);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the response head to send to a client of `client_version`.
///
/// `keep_alive` is whether Fulcrum keeps the client connection after this
/// response (it says so explicitly to 1.0 clients, and says `close` to all).
pub fn write_response_head(
    head: &ResponseHead,
    framing: ResponseFraming,
    client_version: Version,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let connection: Vec<&Header> = head.headers.iter().filter(|h| h.is("connection")).collect();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(head.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        if !is_hop_by_hop(h, &connection) {
            put(out, &h.name, &h.value);
        }
    }
    match framing {
        ResponseFraming::Length(n) => put(out, "Content-Length", itoa::Buffer::new().format(n).as_bytes()),
        // Restated with the codings before chunked, which the client decodes.
        ResponseFraming::Chunked if head.coded => {
            let codings: Vec<&[u8]> = head
                .headers
                .iter()
                .filter(|h| h.is("transfer-encoding"))
                .map(|h| h.value.as_slice())
                .collect();
            put(out, "Transfer-Encoding", &codings.join(&b", "[..]));
        }
        ResponseFraming::Chunked => put(out, "Transfer-Encoding", b"chunked"),
        // HEAD and 304 responses keep the length they announce; 1xx and 204
        // must not carry one (RFC 9110 §8.6), a lenient client would read it.
        ResponseFraming::NoBody if head.status >= 200 && head.status != 204 => {
            if let Some(cl) = head.headers.iter().find(|h| h.is("content-length")) {
                let first = cl.value.split(|&b| b == b',').next().unwrap_or_default();
                put(out, "Content-Length", first.trim_ascii());
            }
        }
        ResponseFraming::NoBody | ResponseFraming::Close => {}
    }
    if head.status == 101 {
        put(out, "Connection", b"upgrade");
        if let Some(u) = head.headers.iter().find(|h| h.is("upgrade")) {
            put(out, "Upgrade", &u.value);
        }
    } else if !keep_alive {
        put(out, "Connection", b"close");
    } else if client_version == Version::Http10 {
        put(out, "Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete short response Fulcrum answers by itself (errors, refusals).
pub fn error_response(status: u16, message: &str, close: bool) -> Vec<u8> {
    let body = format!("{status} {}: {message}\n", reason(status));
    simple_response(status, &[("Content-Type", "text/plain; charset=utf-8")], &body, close)
}

/// A complete response with `headers` (name, value) and `body`: refusals
/// with their `WWW-Authenticate` or `Retry-After`, redirects, fixed answers.
pub fn simple_response(status: u16, headers: &[(&str, &str)], body: &str, close: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (name, value) in headers {
        put(&mut out, name, value.as_bytes());
    }
    put(&mut out, "Content-Length", body.len().to_string().as_bytes());
    put(&mut out, "Connection", if close { b"close" } else { b"keep-alive" });
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// The reason phrase of a final status (200..=599) from the IANA registry
/// as RFC 9110 and RFC 6585 name them; `None` for an unregistered one. One
/// table for every status Fulcrum writes: its own answers and the fixed
/// answers of routes. (The core depends on no HTTP crate.)
pub fn reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => return None,
    })
}

/// The reason phrase for a status line Fulcrum writes.
pub fn reason(status: u16) -> &'static str {
    reason_phrase(status).unwrap_or("Error")
}

fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// An address as `X-Forwarded-For` carries it.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A node of RFC 7239 `Forwarded`: IPv6 quoted in brackets.
fn write_node(out: &mut Vec<u8>, address: SocketAddr) {
    match address {
        SocketAddr::V4(v4) => write_ip(out, IpAddr::V4(*v4.ip())),
        SocketAddr::V6(v6) => {
            out.extend_from_slice(b"\"[");
            write_ip(out, IpAddr::V6(*v6.ip()));
            out.extend_from_slice(b"]\"");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, parse_response};
    use super::*;

    fn info() -> ClientInfo {
        ClientInfo { client: "10.1.2.3:5555".parse().unwrap(), listener: "127.0.0.1:8080".parse().unwrap() }
    }

    fn forward(text: &str) -> String {
        let head = parse_request(text.as_bytes()).unwrap().unwrap();
        let mut out = Vec::new();
        write_request_head(&head, &info(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ipv6_addresses_and_earlier_hops_are_forwarded() {
        let head = parse_request(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: \r\nX-Forwarded-For: 2.2.2.2\r\nForwarded: for=1.1.1.1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let info = ClientInfo {
            client: "[2001:db8::1]:5000".parse().unwrap(),
            listener: "[::1]:80".parse().unwrap(),
        };
        let mut out = Vec::new();
        write_request_head(&head, &info, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 2001:db8::1\r\n"), "{out}");
        assert!(
            out.contains("Forwarded: for=1.1.1.1, for=\"[2001:db8::1]\";by=\"[::1]\";proto=http\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("X-Forwarded-For").count(), 1, "{out}");
    }

    #[test]
    fn strips_hop_by_hop_and_adds_forwarding() {
        let out = forward(
            "GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: s\r\nTE: trailers\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
        );
        assert!(out.starts_with("GET /x HTTP/1.1\r\nHost: h\r\n"), "{out}");
        for gone in ["Connection", "Keep-Alive", "X-Secret", "TE:", "https"] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        assert!(out.contains("Accept: */*\r\n"));
        assert!(out.contains("X-Forwarded-For: 1.1.1.1, 10.1.2.3\r\n"));
        assert!(out.contains("X-Forwarded-Proto: http\r\n"));
        assert!(out.contains("Forwarded: for=10.1.2.3;by=127.0.0.1;proto=http\r\n"));
        assert!(out.ends_with("\r\n\r\n"));
    }

    #[test]
    fn restates_framing_once() {
        let out = forward("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n");
        assert_eq!(out.matches("Content-Length").count(), 1);
        assert!(out.contains("Content-Length: 3\r\n"));
        let out = forward("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        let out = forward("POST / HTTP/1.0\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n");
        assert!(out.contains("Content-Length: 0\r\n") && out.contains("Host: 127.0.0.1:8080\r\n"));
        assert!(!out.contains("Expect"));
    }

    #[test]
    fn upgrade_is_kept_only_for_upgrades() {
        let out = forward("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(out.contains("Connection: upgrade\r\nUpgrade: websocket\r\n"));
        let out = forward("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n");
        assert!(!out.contains("Upgrade") && !out.contains("upgrade"));
    }

    #[test]
    fn response_head_for_clients() {
        let head = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, X-A\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
            "GET",
        )
        .unwrap()
        .unwrap();
        let framing = ResponseFraming::decide(head.body, Version::Http10);
        assert_eq!(framing, ResponseFraming::Close);
        let mut out = Vec::new();
        write_response_head(&head, framing, Version::Http10, false, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX-B: 2\r\nConnection: close\r\n\r\n");

        let head = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", "HEAD").unwrap().unwrap();
        let mut out = Vec::new();
        write_response_head(&head, ResponseFraming::NoBody, Version::Http10, true, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("Content-Length: 7\r\n") && out.contains("Connection: keep-alive\r\n"));
    }

    #[test]
    fn close_delimited_bodies_are_rechunked_for_http11() {
        assert_eq!(ResponseFraming::decide(BodyKind::UntilClose, Version::Http11), ResponseFraming::Chunked);
        assert_eq!(ResponseFraming::decide(BodyKind::UntilClose, Version::Http10), ResponseFraming::Close);
    }

    #[test]
    fn status_lines_use_the_registered_phrase() {
        assert_eq!(reason(202), "Accepted");
        assert_eq!(reason(418), "Error");
        assert!(String::from_utf8(simple_response(410, &[], "", true))
            .unwrap()
            .starts_with("HTTP/1.1 410 Gone\r\n"));
    }

    #[test]
    fn error_responses_are_complete() {
        let r = String::from_utf8(error_response(503, "no backend available", true)).unwrap();
        let head = parse_response(r.as_bytes(), "GET").unwrap().unwrap();
        assert_eq!(head.status, 503);
        assert_eq!(head.body, BodyKind::Length((r.len() - head.head_len) as u64));
    }
}
