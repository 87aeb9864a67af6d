//! Parsing request and response heads with `httparse`, then deciding framing
//! and connection semantics by RFC 9112's rules.

use super::{has_token, BodyKind, HeadError, Header, Version};
use super::{MAX_HEADERS, MAX_HEAD_BYTES, MAX_REQUEST_LINE};
use std::mem::MaybeUninit;

/// A parsed request head with its framing decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: Version,
    /// Every field as received, in order.
    pub headers: Vec<Header>,
    pub body: BodyKind,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// The protocol the client asks to switch to (`Upgrade` + `Connection: upgrade`),
    /// except `h2c`, which a proxy must not tunnel blindly.
    pub upgrade: Option<Vec<u8>>,
    /// `Expect: 100-continue` from an HTTP/1.1 client.
    pub expect_continue: bool,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
}

/// A parsed response head with its framing decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub version: Version,
    pub headers: Vec<Header>,
    pub body: BodyKind,
    /// The backend will keep the connection open after this response.
    pub keep_alive: bool,
    /// The body has transfer codings besides `chunked` (`gzip, chunked`):
    /// only an HTTP/1.1 client can take it.
    pub coded: bool,
    pub head_len: usize,
}

/// Parses a request head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and within limits, the head
/// once complete (its body, if any, starts at `head_len`), or the error to
/// answer the client with.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    // RFC 9112 §2.2: empty lines before a request line (a client's stray CRLF
    // after a body) are skipped, and counted in `head_len`.
    let skip = buf.chunks(2).take_while(|c| *c == b"\r\n").count() * 2;
    Ok(parse_request_line_on(&buf[skip..])?.map(|mut head| {
        head.head_len += skip;
        head
    }))
}

/// Methods whose case-insensitive lookalikes are refused: a backend that
/// upper-cases `head` would frame the response differently than Fulcrum.
const STANDARD_METHODS: [&str; 9] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT"];

fn parse_request_line_on(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let Some(head_end) = find_head_end(buf) else {
        return incomplete(buf, true).map(|()| None);
    };
    let head = &buf[..head_end];
    check_line_endings(head)?;
    if line_len(head) > MAX_REQUEST_LINE {
        return Err(HeadError::UriTooLong);
    }
    // Uninitialised slots: httparse writes only those it fills. Clearing all
    // 100 here and in parse_response cost 567 instructions a keep-alive
    // request (callgrind, bench/RESULTS.md session 7).
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut fields) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("malformed request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("unsupported HTTP version")),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    }
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default().to_owned();
    let version = if req.version == Some(0) { Version::Http10 } else { Version::Http11 };
    let headers = collect(req.headers)?;
    if STANDARD_METHODS.iter().any(|m| m.eq_ignore_ascii_case(&method) && *m != method) {
        return Err(HeadError::Malformed("method names are case-sensitive; standard methods are upper case"));
    }
    if method == "CONNECT" {
        return Err(HeadError::MethodNotAllowed);
    }
    let origin_or_absolute =
        target.starts_with('/') || target.starts_with("http://") || target.starts_with("https://");
    let asterisk = target == "*" && method == "OPTIONS";
    if !(origin_or_absolute || asterisk) {
        return Err(HeadError::Malformed("invalid request target"));
    }
    let hosts = headers.iter().filter(|h| h.is("host")).count();
    if hosts > 1 || (hosts == 0 && version == Version::Http11) {
        return Err(HeadError::Malformed("an HTTP/1.1 request needs exactly one Host header"));
    }

    let body = match (transfer_encoding(&headers)?, content_length(&headers)?) {
        (Some(_), Some(_)) => return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding")),
        (Some(_), None) if version == Version::Http10 => {
            return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(Codings::Chunked), None) => BodyKind::Chunked,
        // RFC 9112 §6.3: a request whose final coding is not chunked has no
        // reliable length; only chunked alone is forwarded.
        (Some(_), None) => return Err(HeadError::UnsupportedCoding),
        (None, Some(0)) | (None, None) => BodyKind::None,
        (None, Some(n)) => BodyKind::Length(n),
    };

    let connection = joined(&headers, "connection");
    let keep_alive = match version {
        Version::Http11 => !has_token(&connection, "close"),
        Version::Http10 => has_token(&connection, "keep-alive") && !has_token(&connection, "close"),
    };
    let upgrade = match headers.iter().find(|h| h.is("upgrade")) {
        Some(u) if version == Version::Http11 && has_token(&connection, "upgrade") => {
            (!has_token(&u.value, "h2c")).then(|| u.value.clone())
        }
        _ => None,
    };
    let expect_continue = version == Version::Http11
        && headers.iter().any(|h| h.is("expect") && h.value.eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        method,
        target,
        version,
        headers,
        body,
        keep_alive,
        upgrade,
        expect_continue,
        head_len: head_end,
    }))
}

/// Parses a response head at the start of `buf`, for a request of `method`.
///
/// Same contract as [`parse_request`]; any error means the backend is broken
/// and the client gets 502.
pub fn parse_response(buf: &[u8], method: &str) -> Result<Option<ResponseHead>, HeadError> {
    let Some(head_end) = find_head_end(buf) else {
        return incomplete(buf, false).map(|()| None);
    };
    let head = &buf[..head_end];
    check_line_endings(head)?;
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, head, &mut fields) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        _ => return Err(HeadError::Malformed("malformed response head")),
    }
    let status = res.code.unwrap_or_default();
    let reason = res.reason.unwrap_or_default().to_owned();
    let version = if res.version == Some(0) { Version::Http10 } else { Version::Http11 };
    let headers = collect(res.headers)?;
    if !(100..=599).contains(&status) {
        return Err(HeadError::Malformed("response status out of range"));
    }

    let no_body = method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
    let te = transfer_encoding(&headers)?;
    let cl = content_length(&headers)?;
    let body = match (no_body, te, cl) {
        (true, _, _) => BodyKind::None,
        (false, Some(_), Some(_)) => {
            return Err(HeadError::Malformed("response has both Content-Length and Transfer-Encoding"))
        }
        (false, Some(Codings::Chunked | Codings::CodedThenChunked), None) => BodyKind::Chunked,
        (false, Some(Codings::NotChunked), None) => BodyKind::UntilClose,
        (false, None, Some(n)) => BodyKind::Length(n),
        (false, None, None) => BodyKind::UntilClose,
    };
    let connection = joined(&headers, "connection");
    let keep_alive = body != BodyKind::UntilClose
        && match version {
            Version::Http11 => !has_token(&connection, "close"),
            Version::Http10 => has_token(&connection, "keep-alive"),
        };
    let coded = !no_body && te == Some(Codings::CodedThenChunked);
    Ok(Some(ResponseHead { status, reason, version, headers, body, keep_alive, coded, head_len: head_end }))
}

/// Where the head ends (just past CRLFCRLF), if it is all in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let limit = buf.len().min(MAX_HEAD_BYTES);
    buf[..limit].windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Decides whether an incomplete head may still become valid.
fn incomplete(buf: &[u8], request: bool) -> Result<(), HeadError> {
    if request && line_len(buf) > MAX_REQUEST_LINE {
        return Err(HeadError::UriTooLong);
    }
    if buf.len() >= MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    // Catch garbage early rather than waiting for 16 KiB of it or a timeout:
    // a head with a bare LF never ends in CRLFCRLF.
    if buf.contains(&0) {
        return Err(HeadError::Malformed("NUL byte in message head"));
    }
    check_line_endings(buf.strip_suffix(b"\r").unwrap_or(buf))
}

/// Length of the first line (or of `buf` if it has no line end yet).
fn line_len(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len())
}

/// Every LF must follow a CR: httparse accepts bare LF, another parser might
/// not, so a message with one is refused rather than reinterpreted.
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Err(HeadError::Malformed("bare LF in message head"));
        }
        if b == b'\r' && head.get(i + 1) != Some(&b'\n') {
            return Err(HeadError::Malformed("bare CR in message head"));
        }
    }
    Ok(())
}

fn collect(fields: &[httparse::Header<'_>]) -> Result<Vec<Header>, HeadError> {
    fields
        .iter()
        .map(|f| {
            // httparse admits obs-text and HTAB; refuse the other controls
            // (NUL, DEL) it would let through in some versions.
            if f.value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(HeadError::Malformed("control byte in header value"));
            }
            Ok(Header { name: f.name.to_owned(), value: f.value.to_vec() })
        })
        .collect()
}

/// Every value of `name` joined with commas, as RFC 9110 §5.3 combines them.
fn joined(headers: &[Header], name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for h in headers.iter().filter(|h| h.is(name)) {
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(&h.value);
    }
    out
}

/// The transfer codings of a message, when it has a Transfer-Encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codings {
    /// Exactly `chunked`.
    Chunked,
    /// Other codings, then `chunked` last (`gzip, chunked`).
    CodedThenChunked,
    /// No `chunked` at all: the length is unknowable.
    NotChunked,
}

/// Reads Transfer-Encoding; `chunked` twice, or not last, is malformed.
fn transfer_encoding(headers: &[Header]) -> Result<Option<Codings>, HeadError> {
    if !headers.iter().any(|h| h.is("transfer-encoding")) {
        return Ok(None);
    }
    let value = joined(headers, "transfer-encoding");
    let codings: Vec<&[u8]> = value.split(|&b| b == b',').map(|c| c.trim_ascii()).collect();
    let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
    match codings.iter().filter(|c| chunked(c)).count() {
        0 => Ok(Some(Codings::NotChunked)),
        1 if codings.last().is_some_and(chunked) && codings.len() == 1 => Ok(Some(Codings::Chunked)),
        1 if codings.last().is_some_and(chunked) => Ok(Some(Codings::CodedThenChunked)),
        _ => Err(HeadError::Malformed("invalid Transfer-Encoding")),
    }
}

/// The one Content-Length of a message: repeated values (in several fields or
/// a comma list) must all be the same decimal number (RFC 9110 §8.6).
fn content_length(headers: &[Header]) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    for h in headers.iter().filter(|h| h.is("content-length")) {
        for part in h.value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("invalid Content-Length"));
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match found {
                Some(m) if m != n => return Err(HeadError::Malformed("conflicting Content-Length values")),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(text.as_bytes())
    }

    #[test]
    fn simple_get_keeps_alive() {
        let h = req("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/a?b"));
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive);
        assert_eq!(h.head_len, 30);
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_methods_are_case_sensitive() {
        let h = req("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.head_len, 4 + 27);
        assert_eq!(req("\r\n"), Ok(None));
        assert!(req("head / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
        assert!(req("PURGE / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().is_some(), "other methods pass as sent");
    }

    #[test]
    fn partial_head_waits() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(req("GET / HTTP/1.1\r\nHost: x\r"), Ok(None));
        assert!(req("GET / HTTP/1.1\nHost: x\n").is_err(), "bare LF is refused before the head ends");
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        assert!(!req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(!req("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap().unwrap().keep_alive);
    }

    #[test]
    fn framing() {
        let cl = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!(cl.body, BodyKind::Length(5));
        let same = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(same.unwrap().unwrap().body, BodyKind::Length(5));
        let te = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(te.body, BodyKind::Chunked);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad = [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nBad Name: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET nope HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        ];
        for text in bad {
            let got = req(text);
            assert!(matches!(got, Err(HeadError::Malformed(_))), "{text:?} gave {got:?}");
        }
        let gzip = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(gzip, Err(HeadError::UnsupportedCoding));
        assert_eq!(req("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), Err(HeadError::MethodNotAllowed));
    }

    #[test]
    fn limits() {
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(req(&long_line), Err(HeadError::UriTooLong));
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(req(&big), Err(HeadError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: y\r\n")).collect();
        assert_eq!(req(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")), Err(HeadError::TooLarge));
        let res = |extra: &str| parse_response(format!("HTTP/1.1 200 OK\r\n{extra}\r\n").as_bytes(), "GET");
        assert_eq!(res(&many), Err(HeadError::TooLarge));
        // Exactly as many fields as there are slots: all kept, in order.
        let full: String = (0..MAX_HEADERS - 1).map(|i| format!("X{i}: y{i}\r\n")).collect();
        let head = req(&format!("GET / HTTP/1.1\r\nHost: x\r\n{full}\r\n")).unwrap().unwrap();
        assert_eq!(head.headers.len(), MAX_HEADERS);
        assert_eq!(head.headers[MAX_HEADERS - 1].value, format!("y{}", MAX_HEADERS - 2).into_bytes());
        let full: String = (0..MAX_HEADERS).map(|i| format!("X{i}: y{i}\r\n")).collect();
        let head = res(&full).unwrap().unwrap();
        assert_eq!(head.headers.len(), MAX_HEADERS);
        assert_eq!(head.headers[0].name, "X0");
    }

    #[test]
    fn upgrade_and_expect() {
        let ws = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(req(ws).unwrap().unwrap().upgrade.as_deref(), Some(&b"websocket"[..]));
        let h2c = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n";
        assert_eq!(req(h2c).unwrap().unwrap().upgrade, None);
        let no_conn = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(req(no_conn).unwrap().unwrap().upgrade, None);
        let ex = "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert!(req(ex).unwrap().unwrap().expect_continue);
    }

    #[test]
    fn responses() {
        let r = |t: &str, m: &str| parse_response(t.as_bytes(), m);
        let ok = r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "GET").unwrap().unwrap();
        assert_eq!((ok.status, ok.body, ok.keep_alive), (200, BodyKind::Length(3), true));
        let head = r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "HEAD").unwrap().unwrap();
        assert_eq!(head.body, BodyKind::None);
        let eof = r("HTTP/1.1 200 OK\r\n\r\n", "GET").unwrap().unwrap();
        assert_eq!((eof.body, eof.keep_alive), (BodyKind::UntilClose, false));
        let gz = r("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "GET").unwrap().unwrap();
        assert_eq!((gz.body, gz.coded), (BodyKind::Chunked, true));
        let no = r("HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", "GET").unwrap().unwrap();
        assert_eq!(no.body, BodyKind::None);
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(r(both, "GET").is_err());
        assert!(r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "GET").is_err());
        assert!(r("HTTP/1.1 999 What\r\n\r\n", "GET").is_err());
        let old = r("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "GET").unwrap().unwrap();
        assert!(!old.keep_alive);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_request(&bytes);
            let _ = parse_response(&bytes, "GET");
        }

        #[test]
        fn a_complete_head_is_never_longer_than_the_input(
            path in "/[a-z0-9/]{0,40}",
            extra in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..8),
        ) {
            let mut text = format!("GET {path} HTTP/1.1\r\nHost: h\r\n");
            for (n, v) in &extra {
                text.push_str(&format!("X-{n}: {v}\r\n"));
            }
            text.push_str("\r\n");
            if let Ok(Some(h)) = parse_request(text.as_bytes()) {
                proptest::prop_assert_eq!(h.head_len, text.len());
                proptest::prop_assert_eq!(h.target, path);
            }
        }
    }
}
