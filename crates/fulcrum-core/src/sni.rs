//! Peeking the server name (SNI) out of a TLS ClientHello without terminating
//! TLS, so a `tcp` service can route by name and then forward the untouched
//! bytes.
//!
//! Records are reassembled here, by hand; the ClientHello body and its
//! extensions are parsed by `tls-parser`. Why the split: tls-parser's record
//! parsers (`parse_tls_plaintext`, `parse_tls_raw_record`) take one whole
//! record and do not join a handshake message spread over several, and its
//! nom `Incomplete` cannot tell "send more bytes" from "a length field that
//! overruns". The framing is two small headers (5-byte record, 4-byte
//! handshake), so this module decides NeedMore, TooLarge and the record-level
//! errors exactly, and hands tls-parser only a complete ClientHello body, where
//! any failure means malformed.

use std::borrow::Cow;

use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_handshake_client_hello, SNIType, TlsExtension,
};

/// The most bytes [`peek_server_name`] will wait for: a ClientHello whose
/// records (headers included) need more is refused as too large. A buffer of
/// this size always gets a verdict other than [`Peek::NeedMore`].
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// RFC 8446 §5.1: a record carries at most 2^14 bytes of plaintext.
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
/// RFC 1035: 253 characters in a name without its trailing dot, 63 in a label.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// What the first bytes of a connection say so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peek {
    /// A valid beginning of a ClientHello: read more and call again with
    /// everything buffered.
    NeedMore,
    /// The complete ClientHello's server name, lowercased; `None` when the
    /// client sent no server_name extension (e.g. it connected by address).
    ServerName(Option<String>),
}

/// Why the first bytes of a connection are not a ClientHello Fulcrum can
/// route. Each one means: close the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The first byte is not a TLS handshake record's.
    #[error(
        "not TLS: the connection starts with byte {first:#04x}, not a TLS handshake record \
         (0x16); is the client speaking plain text to a TLS service?"
    )]
    NotTls { first: u8 },
    /// TLS framing or a ClientHello that breaks the spec.
    #[error("malformed TLS ClientHello: {0}")]
    Malformed(String),
    /// A ClientHello that needs more than [`MAX_CLIENT_HELLO`] bytes.
    #[error("TLS ClientHello needs {size} bytes or more, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
}

/// Reads the server name from the first bytes received on a connection,
/// `buf`, which may hold more than the ClientHello (it is not consumed: the
/// caller forwards all of `buf` untouched).
///
/// Returns [`Peek::NeedMore`] while `buf` is a valid beginning of a
/// ClientHello (one or more handshake records), [`Peek::ServerName`] once the
/// whole ClientHello is in, and an error as soon as the bytes cannot be one:
/// from the first byte when it is not 0x16. The name is the `host_name` entry
/// of the server_name extension, lowercased, and must be an ASCII (IDNA
/// A-label) host name: letters, digits, `-` and `.`, no empty label. Never
/// panics.
pub fn peek_server_name(buf: &[u8]) -> Result<Peek, SniError> {
    // The ClientHello handshake message, joined from its records; borrowed
    // when it sits in one record, the common case.
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut record_start = 0;
    let mut record = 0;
    loop {
        record += 1;
        let header = &buf[record_start.min(buf.len())..buf.len().min(record_start + RECORD_HEADER_LEN)];
        match header.first() {
            None => return Ok(Peek::NeedMore),
            Some(&CONTENT_TYPE_HANDSHAKE) => {}
            Some(&first) if record == 1 => return Err(SniError::NotTls { first }),
            Some(&other) => {
                return Err(malformed(format!(
                    "record {record} has content type {other}, not handshake (22), before the \
                     ClientHello ends"
                )))
            }
        }
        if let Some(&major) = header.get(1) {
            if major != 3 {
                return Err(malformed(format!(
                    "record {record} has protocol version major byte {major:#04x}, not 0x03"
                )));
            }
        }
        let [_, _, _, high, low] = *header else {
            return Ok(Peek::NeedMore);
        };
        let length = usize::from(u16::from_be_bytes([high, low]));
        if length == 0 {
            return Err(malformed(format!("record {record} is empty")));
        }
        if length > MAX_RECORD_PAYLOAD {
            return Err(malformed(format!(
                "record {record} is {length} bytes, over TLS's {MAX_RECORD_PAYLOAD}"
            )));
        }
        let record_end = record_start + RECORD_HEADER_LEN + length;
        if record_end > MAX_CLIENT_HELLO {
            return Err(too_large(record_end));
        }
        let payload = &buf[(record_start + RECORD_HEADER_LEN).min(buf.len())..record_end.min(buf.len())];
        if message.is_empty() {
            message = Cow::Borrowed(payload);
        } else {
            message.to_mut().extend_from_slice(payload);
        }
        if let Some(&kind) = message.first() {
            if kind != HANDSHAKE_CLIENT_HELLO {
                return Err(malformed(format!(
                    "the first handshake message has type {kind}, not ClientHello (1)"
                )));
            }
        }
        if let Some(&[_, b1, b2, b3]) = message.get(..HANDSHAKE_HEADER_LEN) {
            let body_len = usize::from(b1) << 16 | usize::from(b2) << 8 | usize::from(b3);
            let message_len = HANDSHAKE_HEADER_LEN + body_len;
            // At least one record header per record so far, then the message.
            let wire_len = record * RECORD_HEADER_LEN + message_len;
            if wire_len > MAX_CLIENT_HELLO {
                return Err(too_large(wire_len));
            }
            if let Some(body) = message.get(HANDSHAKE_HEADER_LEN..message_len) {
                return server_name(body).map(Peek::ServerName);
            }
        }
        if buf.len() < record_end {
            return Ok(Peek::NeedMore);
        }
        // Every record is at least 6 bytes and the total is capped, so the
        // loop ends.
        record_start = record_end;
    }
}

/// The server name in a complete ClientHello body (after the 4-byte
/// handshake header).
fn server_name(body: &[u8]) -> Result<Option<String>, SniError> {
    let (rest, hello) = parse_tls_handshake_client_hello(body).map_err(|_| {
        malformed(
            "its fixed fields (version, random, session id, cipher suites, compression \
             methods) do not parse"
                .to_string(),
        )
    })?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} bytes follow the compression methods but do not form an extension list",
            rest.len()
        )));
    }
    let Some(extensions) = hello.ext else {
        return Ok(None);
    };
    // tls-parser stops at the first extension it cannot parse and returns
    // what came before; anything left over is that broken extension.
    let (rest, extensions) = parse_tls_client_hello_extensions(extensions)
        .map_err(|_| malformed("the extension list does not parse".to_string()))?;
    if let [high, low, ..] = *rest {
        return Err(malformed(format!(
            "extension {} is truncated or malformed",
            u16::from_be_bytes([high, low])
        )));
    } else if !rest.is_empty() {
        return Err(malformed("the extension list ends in a stray byte".to_string()));
    }
    let mut seen = false;
    let mut name = None;
    for extension in extensions {
        let TlsExtension::SNI(entries) = extension else {
            continue;
        };
        // RFC 8446 §4.2 and RFC 6066 §3: one server_name extension, at most
        // one name of each type, and a non-empty list.
        if seen {
            return Err(malformed("it has two server_name extensions".to_string()));
        }
        seen = true;
        if entries.is_empty() {
            return Err(malformed("its server_name list is empty".to_string()));
        }
        for (kind, raw) in entries {
            if kind != SNIType::HostName {
                continue;
            }
            if name.is_some() {
                return Err(malformed("its server_name list has two host names".to_string()));
            }
            name = Some(host_name(raw)?);
        }
    }
    Ok(name)
}

/// A server name as routes match it: ASCII lowercase, letters, digits, `-`
/// and `.`, non-empty labels (internationalized names arrive as `xn--`
/// A-labels; a raw UTF-8 name is refused, as TLS servers do).
fn host_name(raw: &[u8]) -> Result<String, SniError> {
    let name = raw.to_ascii_lowercase();
    let shown = || name.escape_ascii().to_string();
    if name.is_empty() {
        return Err(malformed("its server name is empty".to_string()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(malformed(format!("its server name is {} bytes, over DNS's {MAX_NAME_LEN}", name.len())));
    }
    if let Some(&byte) =
        name.iter().find(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'-' || **b == b'.'))
    {
        return Err(malformed(format!(
            "server name \"{}\" has byte {byte:#04x}; only ASCII letters, digits, '-' and '.' \
             are allowed (IDNA names in xn-- form)",
            shown()
        )));
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(malformed(format!("server name \"{}\" has an empty label", shown())));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(malformed(format!(
                "server name \"{}\" has a label over DNS's {MAX_LABEL_LEN} bytes",
                shown()
            )));
        }
    }
    Ok(name.iter().map(|&b| char::from(b)).collect())
}

fn malformed(reason: String) -> SniError {
    SniError::Malformed(reason)
}

fn too_large(size: usize) -> SniError {
    SniError::TooLarge { size, limit: MAX_CLIENT_HELLO }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `openssl s_client -connect 127.0.0.1:PORT -servername a.example.com`
    /// (OpenSSL 3.0.19), its first flight as captured by a plain listener:
    /// one record, a ClientHello with SNI, EC formats, groups, session
    /// ticket, encrypt-then-MAC, EMS, signature algorithms, supported
    /// versions, PSK modes and an X25519 key share.
    const OPENSSL_CLIENT_HELLO: [u8; 319] = [
        0x16, 0x03, 0x01, 0x01, 0x3a, 0x01, 0x00, 0x01, 0x36, 0x03, 0x03, 0x76, 0x51, 0x89, 0x78, 0x6c, 0xc4,
        0x0e, 0x93, 0x0f, 0x95, 0xef, 0xd1, 0x54, 0x5c, 0xd5, 0x22, 0x9a, 0xc3, 0x13, 0x90, 0x7a, 0x40, 0xea,
        0xef, 0x60, 0xb7, 0xf5, 0x91, 0xae, 0x21, 0xf5, 0xc6, 0x20, 0x90, 0x7d, 0xd9, 0xe6, 0xca, 0x2f, 0x70,
        0x20, 0x51, 0xa1, 0x93, 0xec, 0x30, 0x60, 0x62, 0xe8, 0xd1, 0x98, 0x27, 0xca, 0xff, 0x3d, 0xee, 0x5a,
        0xb5, 0xbc, 0x41, 0xed, 0x09, 0xcd, 0xdd, 0xad, 0x00, 0x3e, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0xc0,
        0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e,
        0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27, 0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00,
        0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d, 0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35,
        0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0xaf, 0x00, 0x00, 0x00, 0x12, 0x00, 0x10, 0x00, 0x00, 0x0d,
        0x61, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x63, 0x6f, 0x6d, 0x00, 0x0b, 0x00, 0x04,
        0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16, 0x00, 0x14, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00,
        0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x23, 0x00, 0x00,
        0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05,
        0x03, 0x06, 0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05,
        0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05,
        0x02, 0x06, 0x02, 0x00, 0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00,
        0x2d, 0x00, 0x02, 0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0x48, 0xc7,
        0x31, 0x14, 0x6c, 0x4b, 0x8b, 0xb0, 0xf6, 0x6e, 0x5d, 0xdd, 0xbb, 0xc5, 0x8e, 0x06, 0x45, 0x88, 0x3f,
        0x4f, 0x74, 0xc6, 0x2c, 0x15, 0x84, 0x75, 0xcf, 0xd7, 0x35, 0x2b, 0x25, 0x01,
    ];

    /// A handshake message: type, 24-bit length, body.
    fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).expect("small body").to_be_bytes();
        let mut message = vec![kind, len[1], len[2], len[3]];
        message.extend_from_slice(body);
        message
    }

    /// The fixed fields of a TLS 1.2-style ClientHello body.
    fn hello_fixed() -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x42; 32]); // random
        body.push(32);
        body.extend_from_slice(&[0x07; 32]); // legacy session id
        body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]); // two cipher suites
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body
    }

    /// A ClientHello handshake message with these (type, data) extensions.
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, data) in extensions {
            list.extend_from_slice(&kind.to_be_bytes());
            list.extend_from_slice(&(data.len() as u16).to_be_bytes());
            list.extend_from_slice(data);
        }
        let mut body = hello_fixed();
        body.extend_from_slice(&(list.len() as u16).to_be_bytes());
        body.extend_from_slice(&list);
        handshake(HANDSHAKE_CLIENT_HELLO, &body)
    }

    fn sni_entries(entries: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        (0, data)
    }

    fn sni(name: &[u8]) -> (u16, Vec<u8>) {
        sni_entries(&[(0, name)])
    }

    fn alpn(protocols: &[&[u8]]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for protocol in protocols {
            list.push(protocol.len() as u8);
            list.extend_from_slice(protocol);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        (16, data)
    }

    fn supported_versions() -> (u16, Vec<u8>) {
        (43, vec![4, 0x03, 0x04, 0x03, 0x03])
    }

    /// `message` cut into handshake records of at most `chunk` bytes.
    fn records(message: &[u8], chunk: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        for piece in message.chunks(chunk) {
            wire.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 0x03, 0x01]);
            wire.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            wire.extend_from_slice(piece);
        }
        wire
    }

    fn typical(name: &[u8]) -> Vec<u8> {
        hello(&[sni(name), alpn(&[b"h2", b"http/1.1"]), supported_versions()])
    }

    fn name(result: Result<Peek, SniError>) -> Option<String> {
        match result {
            Ok(Peek::ServerName(name)) => name,
            other => panic!("expected a server name, got {other:?}"),
        }
    }

    fn malformed(result: Result<Peek, SniError>) -> String {
        match result {
            Err(SniError::Malformed(reason)) => reason,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    fn assert_prefixes_need_more(wire: &[u8]) {
        for end in 0..wire.len() {
            assert_eq!(peek_server_name(&wire[..end]), Ok(Peek::NeedMore), "prefix of {end} bytes");
        }
    }

    #[test]
    fn reads_the_server_name_among_other_extensions() {
        let wire = records(&typical(b"a.example.com"), MAX_RECORD_PAYLOAD);
        assert_eq!(name(peek_server_name(&wire)).as_deref(), Some("a.example.com"));
    }

    #[test]
    fn bytes_after_the_client_hello_are_ignored() {
        let mut wire = records(&typical(b"a.example.com"), MAX_RECORD_PAYLOAD);
        // A TLS 1.3 middlebox-compatibility change_cipher_spec, then early data.
        wire.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 0xaa, 0xbb]);
        assert_eq!(name(peek_server_name(&wire)).as_deref(), Some("a.example.com"));
    }

    #[test]
    fn openssl_client_hello() {
        assert_eq!(name(peek_server_name(&OPENSSL_CLIENT_HELLO)).as_deref(), Some("a.example.com"));
        assert_prefixes_need_more(&OPENSSL_CLIENT_HELLO);
        // The same message re-framed into small records.
        let message = &OPENSSL_CLIENT_HELLO[RECORD_HEADER_LEN..];
        for chunk in [1, 3, 100] {
            let wire = records(message, chunk);
            assert_eq!(
                name(peek_server_name(&wire)).as_deref(),
                Some("a.example.com"),
                "records of {chunk} bytes"
            );
        }
    }

    #[test]
    fn every_prefix_needs_more() {
        let message = typical(b"a.example.com");
        for chunk in [MAX_RECORD_PAYLOAD, 60, 2, 1] {
            assert_prefixes_need_more(&records(&message, chunk));
        }
    }

    #[test]
    fn split_across_records() {
        let message = typical(b"split.example.com");
        for chunk in [1, 2, 3, 4, 5, 40, message.len() - 1] {
            let wire = records(&message, chunk);
            assert_eq!(
                name(peek_server_name(&wire)).as_deref(),
                Some("split.example.com"),
                "records of {chunk} bytes"
            );
        }
    }

    #[test]
    fn no_server_name() {
        let without_sni = hello(&[alpn(&[b"h2"]), supported_versions()]);
        assert_eq!(name(peek_server_name(&records(&without_sni, 1 << 14))), None);
        let empty_list = hello(&[]);
        assert_eq!(name(peek_server_name(&records(&empty_list, 1 << 14))), None);
        let no_list = handshake(HANDSHAKE_CLIENT_HELLO, &hello_fixed());
        assert_eq!(name(peek_server_name(&records(&no_list, 1 << 14))), None);
        // Only a name type other than host_name.
        let other_type = hello(&[sni_entries(&[(7, b"opaque")])]);
        assert_eq!(name(peek_server_name(&records(&other_type, 1 << 14))), None);
    }

    #[test]
    fn uppercase_name_is_lowercased() {
        let wire = records(&typical(b"A.Example.COM"), 1 << 14);
        assert_eq!(name(peek_server_name(&wire)).as_deref(), Some("a.example.com"));
        let wire = records(&typical(b"xn--bcher-kva.Example"), 1 << 14);
        assert_eq!(name(peek_server_name(&wire)).as_deref(), Some("xn--bcher-kva.example"));
    }

    #[test]
    fn not_tls_is_decided_from_the_first_byte() {
        assert_eq!(peek_server_name(b""), Ok(Peek::NeedMore));
        for (start, first) in [
            (&b"G"[..], b'G'),
            (&b"GET / HTTP/1.1\r\n"[..], b'G'),
            (&b"PROXY TCP4 "[..], b'P'),
            (&[0x80, 0x2e, 0x01][..], 0x80), // SSLv2-style hello
            (&[23, 3, 3, 0, 1, 0][..], 23),  // application data
        ] {
            assert_eq!(peek_server_name(start), Err(SniError::NotTls { first }));
        }
        let err = peek_server_name(b"GET /").expect_err("not TLS");
        assert!(err.to_string().contains("0x47"), "{err}");
    }

    #[test]
    fn framing_errors_are_decided_early() {
        assert!(malformed(peek_server_name(&[22, 2])).contains("major byte 0x02"));
        assert!(malformed(peek_server_name(&[22, 3, 1, 0, 0])).contains("empty"));
        assert!(malformed(peek_server_name(&[22, 3, 1, 0x40, 0x01])).contains("16385"));
        // A ServerHello where a ClientHello belongs.
        let reason = malformed(peek_server_name(&[22, 3, 3, 0, 50, 2]));
        assert!(reason.contains("type 2"), "{reason}");
        // The ClientHello interrupted by an application-data record.
        let message = typical(b"a.example.com");
        let mut wire = records(&message[..10], 1 << 14);
        wire.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        let reason = malformed(peek_server_name(&wire));
        assert!(reason.contains("record 2 has content type 23"), "{reason}");
    }

    #[test]
    fn truncated_lengths_are_malformed() {
        let fixed = hello_fixed();
        // Session id longer than 32.
        let mut body = fixed.clone();
        body[34] = 33;
        malformed(peek_server_name(&records(&handshake(1, &body), 1 << 14)));
        // Cipher suite length past the end of the body.
        let mut body = fixed.clone();
        body[67] = 0x40;
        malformed(peek_server_name(&records(&handshake(1, &body), 1 << 14)));
        // Extension list length past the end of the body.
        let mut body = fixed.clone();
        body.extend_from_slice(&[0x00, 0x20, 0x00, 0x00]);
        let reason = malformed(peek_server_name(&records(&handshake(1, &body), 1 << 14)));
        assert!(reason.contains("follow the compression methods"), "{reason}");
        // An extension whose length runs past the list.
        let mut body = fixed.clone();
        body.extend_from_slice(&[0x00, 0x06, 0x00, 0x10, 0x00, 0x09, 0x00, 0x02]);
        let reason = malformed(peek_server_name(&records(&handshake(1, &body), 1 << 14)));
        assert!(reason.contains("extension 16"), "{reason}");
        // A host name whose length runs past its extension.
        let mut sni = sni(b"a.example.com");
        sni.1[4] = 0x40;
        let reason = malformed(peek_server_name(&records(&hello(&[sni]), 1 << 14)));
        assert!(reason.contains("server_name"), "{reason}");
        // A handshake length shorter than the body it frames.
        let mut message = typical(b"a.example.com");
        let short = u32::try_from(message.len() - HANDSHAKE_HEADER_LEN - 10).expect("small");
        message[1..4].copy_from_slice(&short.to_be_bytes()[1..]);
        malformed(peek_server_name(&records(&message, 1 << 14)));
    }

    #[test]
    fn bad_names_are_malformed() {
        for bad in [
            &b""[..],
            b"a..example.com",
            b".example.com",
            b"example.com.",
            b"ex ample.com",
            b"a_b.example.com",
            "b\u{fc}cher.example".as_bytes(),
            b"a.example.com\0",
            &[b'a'; 64],
            &[b'a'; 254],
        ] {
            let wire = records(&typical(bad), 1 << 14);
            let reason = malformed(peek_server_name(&wire));
            assert!(reason.contains("server name"), "{reason}");
        }
        let longest = [[b'a'; 63].as_slice(); 4].join(&b'.');
        assert_eq!(longest.len(), 255);
        let fits = &longest[..253];
        let wire = records(&typical(fits), 1 << 14);
        assert_eq!(name(peek_server_name(&wire)).map(|n| n.len()), Some(253));
    }

    #[test]
    fn two_names_are_malformed() {
        let two_entries = hello(&[sni_entries(&[(0, b"a.example.com"), (0, b"b.example.com")])]);
        let reason = malformed(peek_server_name(&records(&two_entries, 1 << 14)));
        assert!(reason.contains("two host names"), "{reason}");
        let two_extensions = hello(&[sni(b"a.example.com"), sni(b"b.example.com")]);
        let reason = malformed(peek_server_name(&records(&two_extensions, 1 << 14)));
        assert!(reason.contains("two server_name extensions"), "{reason}");
    }

    #[test]
    fn oversized_client_hello_is_refused() {
        // A handshake length of 64 KiB, refused from its header.
        let wire = [22, 3, 1, 0x01, 0x00, 1, 0x01, 0x00, 0x00];
        assert_eq!(
            peek_server_name(&wire),
            Err(SniError::TooLarge { size: 5 + 4 + 0x10000, limit: MAX_CLIENT_HELLO })
        );
        // A full-size record is more than the cap with its header.
        assert!(matches!(peek_server_name(&[22, 3, 1, 0x40, 0x00]), Err(SniError::TooLarge { .. })));
        // A small ClientHello with a large padding extension, in 1-byte
        // records: fine as one record, too large with a header per byte.
        let padded = hello(&[sni(b"a.example.com"), (21, vec![0; 3000])]);
        assert_eq!(name(peek_server_name(&records(&padded, 1 << 14))).as_deref(), Some("a.example.com"));
        assert!(matches!(peek_server_name(&records(&padded, 1)), Err(SniError::TooLarge { .. })));
        // A buffer of the cap's size always gets a verdict.
        let near = hello(&[sni(b"a.example.com"), (21, vec![0; MAX_CLIENT_HELLO - 200])]);
        let wire = records(&near, 1 << 14);
        assert!(peek_server_name(&wire[..MAX_CLIENT_HELLO.min(wire.len())]) != Ok(Peek::NeedMore));
    }

    fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    }

    proptest! {
        #[test]
        fn names_roundtrip(
            name in "[a-zA-Z0-9][a-zA-Z0-9-]{0,20}(\\.[a-zA-Z0-9-]{1,20}){0,4}",
            chunk in 1usize..200,
        ) {
            let wire = records(&typical(name.as_bytes()), chunk);
            prop_assert_eq!(
                peek_server_name(&wire),
                Ok(Peek::ServerName(Some(name.to_ascii_lowercase())))
            );
            for end in 0..wire.len() {
                prop_assert_eq!(peek_server_name(&wire[..end]), Ok(Peek::NeedMore));
            }
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let result = peek_server_name(&bytes);
            if let Some(&first) = bytes.first() {
                if first != CONTENT_TYPE_HANDSHAKE {
                    prop_assert_eq!(result, Err(SniError::NotTls { first }));
                }
            }
        }

        #[test]
        fn never_panics_inside_a_record(
            length in 1u16..600,
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut wire = vec![22, 3, 1];
            wire.extend_from_slice(&length.to_be_bytes());
            wire.push(HANDSHAKE_CLIENT_HELLO);
            wire.extend_from_slice(&body);
            if let Ok(Peek::ServerName(Some(name))) = peek_server_name(&wire) {
                prop_assert!(valid_name(&name), "{}", name);
            }
        }

        #[test]
        fn never_panics_on_mutated_openssl_hello(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = OPENSSL_CLIENT_HELLO.to_vec();
            for (index, value) in flips {
                let i = index.index(wire.len());
                wire[i] = value;
            }
            for bytes in [&wire[..], &wire[..cut.index(wire.len())]] {
                if let Ok(Peek::ServerName(Some(name))) = peek_server_name(bytes) {
                    prop_assert!(valid_name(&name), "{}", name);
                }
            }
        }
    }
}
