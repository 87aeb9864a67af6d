//! The bodies of Fulcrum's fuzz targets, one function per target.
//!
//! Each function takes the fuzzer's bytes, drives one public `fulcrum_core`
//! entry point the way the daemon does, and panics only when a promise of
//! that API breaks: the parser itself panics, the writer emits a head
//! Fulcrum's own parser reads differently, the chunked decoder answers
//! differently when its input arrives in two reads, path normalisation is
//! not idempotent. A panic is what libFuzzer records as a crash.
//!
//! This file is compiled twice: as the `fulcrum_fuzz` library the targets in
//! `fuzz_targets/` call, and as a module of
//! `crates/fulcrum-core/tests/fuzz_corpus.rs`, which replays every file of
//! `corpus/<target>/` and `regressions/<target>/` on stable with
//! `cargo test`. One copy of each body, so CI checks what the fuzzer ran.
//! It may use only `std` and `fulcrum_core`.

use std::net::{Ipv4Addr, SocketAddr};

use fulcrum_core::http::{
    parse_request, parse_response, write_request_head, write_response_head, BodyKind, ChunkError,
    ChunkedDecoder, ClientInfo, Decoded, HeadError, ResponseFraming, Version,
};

/// Most messages read from one input: enough for pipelining, bounded so a
/// run stays fast.
const MAX_MESSAGES: usize = 16;

/// A target's body: the fuzzer's bytes in, a panic on a broken promise.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and corpus folder.
pub const TARGETS: [(&str, Target); 7] = [
    ("http_request", http_request),
    ("http_response", http_response),
    ("chunked", chunked),
    ("config", config),
    ("proxy_protocol", proxy_protocol),
    ("client_hello", client_hello),
    ("route_path", route_path),
];

/// A client connection as the daemon would describe it to the writer.
fn client_info() -> ClientInfo {
    ClientInfo {
        client: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 50_000)),
        listener: SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7), 80)),
    }
}

/// Request heads one after another (pipelining), each rewritten for a
/// backend and its body skipped (`Content-Length`) or decoded (chunked).
///
/// Checks: the rewritten head parses back, by Fulcrum's own parser, as the
/// same method, target, framing and upgrade (a backend that reads framing
/// differently from Fulcrum is request smuggling); `head_len` is within the
/// input and a head cut short is waited for (`Ok(None)`), not refused; the
/// chunked decoder always makes progress.
pub fn http_request(data: &[u8]) {
    let info = client_info();
    let mut rest = data;
    for _ in 0..MAX_MESSAGES {
        let Ok(Some(head)) = parse_request(rest) else {
            return;
        };
        assert!(
            head.head_len > 0 && head.head_len <= rest.len(),
            "head_len {} of {}",
            head.head_len,
            rest.len()
        );
        for cut in cuts(head.head_len) {
            // A head that arrives in pieces is waited for, not refused.
            let partial = parse_request(&rest[..cut]);
            assert!(matches!(partial, Ok(None)), "{cut} bytes of a {}-byte head: {partial:?}", head.head_len);
        }

        let mut out = Vec::new();
        write_request_head(&head, &info, &mut out);
        match parse_request(&out) {
            Ok(Some(again)) => {
                assert_eq!(again.head_len, out.len(), "the rewritten head is one head");
                assert_eq!(
                    (&again.method, &again.target, again.body, &again.upgrade),
                    (&head.method, &head.target, head.body, &head.upgrade),
                    "the rewritten head reads differently:\n{}",
                    out.escape_ascii()
                );
            }
            // The added X-Forwarded-For/Forwarded fields can push a head at
            // the limit over it; the backend answers 431 itself.
            Err(HeadError::TooLarge) => {}
            other => panic!("the rewritten head does not parse ({other:?}):\n{}", out.escape_ascii()),
        }

        rest = &rest[head.head_len..];
        match head.body {
            BodyKind::None => {}
            BodyKind::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= rest.len() => rest = &rest[n..],
                _ => return,
            },
            BodyKind::Chunked => match decode_all(rest) {
                (_, Outcome::Done(consumed)) => rest = &rest[consumed..],
                _ => return,
            },
            BodyKind::UntilClose => unreachable!("a request body is never delimited by close"),
        }
    }
}

/// Response heads for a GET and a HEAD, each written toward HTTP/1.0 and
/// HTTP/1.1 clients, kept alive or not, with the framing
/// `ResponseFraming::decide` picks.
///
/// Checks: a head cut short is waited for, not refused; the written head
/// parses back for the same method with the same status and the body framing
/// announced (so the client frames the body as Fulcrum sends it).
pub fn http_response(data: &[u8]) {
    for method in ["GET", "HEAD"] {
        let Ok(Some(head)) = parse_response(data, method) else {
            continue;
        };
        assert!(
            head.head_len > 0 && head.head_len <= data.len(),
            "head_len {} of {}",
            head.head_len,
            data.len()
        );
        for cut in cuts(head.head_len) {
            let partial = parse_response(&data[..cut], method);
            assert!(matches!(partial, Ok(None)), "{cut} bytes of a {}-byte head: {partial:?}", head.head_len);
        }
        for client_version in [Version::Http10, Version::Http11] {
            let framing = ResponseFraming::decide(head.body, client_version);
            for keep_alive in [false, true] {
                let mut out = Vec::new();
                write_response_head(&head, framing, client_version, keep_alive, &mut out);
                let again = match parse_response(&out, method) {
                    Ok(Some(again)) => again,
                    Err(HeadError::TooLarge) => continue,
                    other => panic!(
                        "{method} response toward {client_version:?}: the written head does not \
                         parse ({other:?}):\n{}",
                        out.escape_ascii()
                    ),
                };
                let expected = match framing {
                    ResponseFraming::NoBody => BodyKind::None,
                    ResponseFraming::Length(n) => BodyKind::Length(n),
                    ResponseFraming::Chunked => BodyKind::Chunked,
                    ResponseFraming::Close => BodyKind::UntilClose,
                };
                assert_eq!(
                    (again.status, again.body),
                    (head.status, expected),
                    "{method} response toward {client_version:?} (keep-alive {keep_alive}): the \
                     written head frames the body differently:\n{}",
                    out.escape_ascii()
                );
            }
        }
    }
}

/// A chunked body fed in two reads, split where the first byte says.
///
/// Checks: the payload and the outcome (done at the same offset, waiting
/// for more, or the same error) do not depend on where the split falls.
pub fn chunked(data: &[u8]) {
    let Some((&at, body)) = data.split_first() else {
        return;
    };
    let split = usize::from(at) % (body.len() + 1);
    let whole = decode_all(body);
    let (first, second) = body.split_at(split);
    let parts = decode_parts(first, second);
    assert_eq!(parts, whole, "split at {split} of {}", body.len());
}

/// The configuration loader on the input as (lossy) UTF-8 text. It must
/// return, with a model or with errors, and each error must name a line
/// inside the text.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(errors) = fulcrum_core::config::load(&text) {
        assert!(!errors.is_empty(), "an Err with no errors");
        let lines = text.lines().count().max(1) + 1;
        for e in &errors {
            if let Some(line) = e.line {
                assert!((1..=lines).contains(&line), "line {line} of a {lines}-line text: {e}");
            }
        }
    }
}

/// The PROXY protocol reader. A complete header must fit the input and the
/// byte limits; a prefix of a complete header must not be refused; the
/// addresses it names, written by `encode` in either version, read back the
/// same.
pub fn proxy_protocol(data: &[u8]) {
    use fulcrum_core::model::ProxyVersion;
    use fulcrum_core::proxy::{encode, parse, ProxyHeader, V1_MAX_LEN, V2_MAX_LEN};
    if let Ok(Some((header, consumed))) = parse(data) {
        assert!(consumed > 0 && consumed <= data.len(), "consumed {consumed} of {}", data.len());
        let limit = if data[0] == b'P' { V1_MAX_LEN } else { V2_MAX_LEN };
        assert!(consumed <= limit, "consumed {consumed}, over the {limit}-byte limit");
        for cut in [consumed - 1, consumed / 2] {
            let partial = parse(&data[..cut]);
            assert!(
                matches!(partial, Ok(None)),
                "the {cut}-byte prefix of {:?}, a {consumed}-byte header read as {header:?}, is refused: {partial:?}",
                data[..consumed].escape_ascii().to_string()
            );
        }
        if let ProxyHeader::Proxied { client, server } = header {
            for version in [ProxyVersion::V1, ProxyVersion::V2] {
                let bytes = encode(version, client, server);
                assert_eq!(
                    parse(&bytes),
                    Ok(Some((header, bytes.len()))),
                    "{version:?} of {client} -> {server}: {}",
                    bytes.escape_ascii()
                );
            }
        }
    }
}

/// The ClientHello peek. Once it finds the server name, a longer input
/// (the client's next bytes) must give the same answer, and a shorter one
/// must not be refused (the client's bytes may arrive in any pieces).
pub fn client_hello(data: &[u8]) {
    use fulcrum_core::sni::{peek_server_name, Peek};
    let Ok(Peek::ServerName(name)) = peek_server_name(data) else {
        return;
    };
    if let Some(name) = &name {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "server name {name:?}"
        );
    }
    for cut in cuts(data.len()) {
        let partial = peek_server_name(&data[..cut]);
        assert!(
            matches!(&partial, Ok(Peek::NeedMore)) || partial == Ok(Peek::ServerName(name.clone())),
            "{cut} of {} bytes: {partial:?}",
            data.len()
        );
    }
    let mut longer = data.to_vec();
    longer.extend_from_slice(b"\x17\x03\x03\x00\x01\x00");
    assert_eq!(
        peek_server_name(&longer),
        Ok(Peek::ServerName(name)),
        "bytes after the ClientHello changed it"
    );
}

/// Path normalisation on the input as UTF-8: idempotent, and a path that
/// starts with `/` stays one.
pub fn route_path(data: &[u8]) {
    use fulcrum_core::route::normalize_path;
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let once = normalize_path(path);
    let twice = normalize_path(&once);
    assert_eq!(twice, once, "normalize_path({path:?}) is not idempotent");
    if path.starts_with('/') {
        assert!(once.starts_with('/'), "normalize_path({path:?}) = {once:?}");
    }
}

/// Where to cut a `len`-byte message to check its prefixes: near the start,
/// the middle and the end.
fn cuts(len: usize) -> impl Iterator<Item = usize> {
    [1, len / 2, len.saturating_sub(2), len.saturating_sub(1)].into_iter().filter(move |&c| c < len)
}

/// How a chunked body ended, for comparing two ways of feeding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The body ended after this many bytes of the input.
    Done(usize),
    /// All input was consumed, the body is not over.
    NeedMore,
    Error(ChunkError),
}

/// Decodes `input` in one read; returns the payload and the outcome.
fn decode_all(input: &[u8]) -> (Vec<u8>, Outcome) {
    decode_parts(input, &[])
}

/// Decodes `first` then, as a second read, `second`, carrying over what the
/// decoder left unconsumed as the daemon does.
fn decode_parts(first: &[u8], second: &[u8]) -> (Vec<u8>, Outcome) {
    let mut decoder = ChunkedDecoder::new();
    let mut payload = Vec::new();
    // Offset in `first ++ second` of buf[0].
    let mut base = 0;
    let mut buf: Vec<u8> = first.to_vec();
    let mut reads = [second].into_iter();
    loop {
        // Data steps consume at least one byte (checked below) and there is
        // one NeedMore per read, so this ends.
        let step = match decoder.decode(&buf) {
            Ok(step) => step,
            Err(e) => return (payload, Outcome::Error(e)),
        };
        match step {
            Decoded::Data { start, len } => {
                assert!(
                    start + len > 0 && start + len <= buf.len(),
                    "Data {{ start: {start}, len: {len} }} of {}",
                    buf.len()
                );
                payload.extend_from_slice(&buf[start..start + len]);
                buf.drain(..start + len);
                base += start + len;
            }
            Decoded::Done { consumed } => {
                assert!(consumed <= buf.len(), "Done {{ consumed: {consumed} }} of {}", buf.len());
                assert!(decoder.is_done(), "Done but not is_done()");
                return (payload, Outcome::Done(base + consumed));
            }
            Decoded::NeedMore { consumed } => {
                assert!(consumed <= buf.len(), "NeedMore {{ consumed: {consumed} }} of {}", buf.len());
                buf.drain(..consumed);
                base += consumed;
                match reads.next() {
                    Some(more) => buf.extend_from_slice(more),
                    None => return (payload, Outcome::NeedMore),
                }
            }
        }
    }
}
