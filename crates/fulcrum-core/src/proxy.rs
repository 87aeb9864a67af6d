//! PROXY protocol (HAProxy's `doc/proxy-protocol.txt`, v1 text and v2
//! binary): the header a load balancer writes before the client's bytes so
//! the next hop learns the real client address.
//!
//! [`encode`] writes the header Fulcrum sends toward backends of a pool with
//! `proxy_protocol = "v1" | "v2"`; [`parse`] reads the header a trusted
//! upstream load balancer sends to a service with
//! `accept_proxy_protocol = true`. Both lean on the `ppp` crate for the wire
//! format; this module adds what a server needs around it: a verdict on
//! partial input (wait or refuse), size limits, and the decision "this is not
//! PROXY at all" from the first byte, so a client that sends `GET /` is
//! refused at once instead of timing out.

use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Command, Protocol, Version};
use ppp::PartialResult;

use crate::model::ProxyVersion;

/// The longest v1 line the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;

/// The longest v2 header [`parse`] accepts: the 16-byte fixed part plus
/// addresses and TLVs. The wire format allows 16 + 65535 bytes, but no sender
/// needs more than a few hundred (addresses plus a handful of TLVs), and a
/// reader that waits for 64 KiB before the client's first byte is easy to
/// tie up.
pub const V2_MAX_LEN: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
/// The 12-byte v2 signature, `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// Signature, version/command, family/protocol, 2-byte length.
const V2_FIXED_LEN: usize = 16;

/// What a PROXY header says about the connection it precedes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The sender opened the connection itself (v2 `LOCAL`, e.g. a health
    /// check) or could not name the endpoints (v1 `UNKNOWN`, a v2 family
    /// other than TCP over IPv4/IPv6): use the connection's own addresses.
    Local,
    /// The connection relays a client's: `client` is the original source,
    /// `server` the address the client connected to. IPv4-mapped IPv6
    /// addresses come back as IPv4, so CIDR rules written for IPv4 match.
    Proxied { client: SocketAddr, server: SocketAddr },
}

/// Why the first bytes of a connection are not an acceptable PROXY header.
/// Each one means: close the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes cannot begin a PROXY header of either version.
    #[error(
        "not a PROXY protocol header: the connection starts with \"{start}\", not \"PROXY \" \
         (v1) or the v2 signature; the upstream must send PROXY protocol to this service, \
         or turn accept_proxy_protocol off"
    )]
    NotProxy { start: String },
    /// A PROXY header that breaks the spec.
    #[error("malformed PROXY v{version} header: {reason}")]
    Malformed { version: u8, reason: String },
    /// A header longer than the limit ([`V1_MAX_LEN`] or [`V2_MAX_LEN`]).
    #[error("PROXY v{version} header of {size} bytes or more is over the {limit}-byte limit")]
    TooLarge { version: u8, size: usize, limit: usize },
}

/// The PROXY header announcing that `client` connected to `server`, to write
/// to a backend before any client byte. Always TCP: `TCP4`/`TCP6` in v1, the
/// `PROXY` command with `STREAM` in v2. When one address is IPv4 and the
/// other IPv6, the IPv4 one is written IPv4-mapped (`::ffff:a.b.c.d`) so the
/// header has one family, as the spec requires.
pub fn encode(version: ProxyVersion, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (client, server) = one_family(client, server);
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((client, server)).to_string().into_bytes(),
        ProxyVersion::V2 => ppp::v2::Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (client, server),
        )
        .build()
        // ppp fails only when the header outgrows its 16-bit length; two
        // socket addresses take 12 or 36 bytes.
        .expect("a v2 header with two socket addresses fits its 16-bit length"),
    }
}

/// Reads a PROXY header (v1 or v2) from the first bytes received on a
/// connection, `buf`, which may hold more than the header.
///
/// Returns `Ok(None)` while `buf` is a valid beginning of a header that is
/// not complete yet (read more and call again with everything buffered),
/// `Ok(Some((header, consumed)))` once complete, where `consumed` is the
/// header's length (TLVs included) and the client's bytes start at
/// `buf[consumed..]`, and an error as soon as the bytes cannot be a valid
/// header: from the very first byte when it is neither `P` nor `\r`. `Ok(None)`
/// is only returned for fewer than [`V1_MAX_LEN`] or [`V2_MAX_LEN`] bytes.
/// Never panics.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(not_proxy(buf)),
    }
}

/// The spec's ports are 1–5 decimal digits. ppp reads them with
/// `str::parse`, which also takes `+7` and any number of leading zeros:
/// refuse those here, so a whole line is judged as strictly as a partial one
/// (found by fuzzing: `PROXY TCP4 1.2.3.4 5.6.7.8 1 +0…02`).
fn check_v1_ports(line: &[u8], text: &[u8]) -> Result<(), ProxyError> {
    let fields: Vec<&[u8]> = text.split(|&b| b == b' ').collect();
    if fields.get(1).is_some_and(|p| *p == b"UNKNOWN") {
        return Ok(());
    }
    for port in fields.iter().skip(4).take(2) {
        if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return Err(malformed_v1(line, "a port is not 1 to 5 decimal digits"));
        }
    }
    Ok(())
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let start = buf.len().min(V1_PREFIX.len());
    if buf[..start] != V1_PREFIX[..start] {
        return Err(not_proxy(buf));
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::TooLarge { version: 1, size: buf.len(), limit: V1_MAX_LEN });
        }
        check_v1_partial(buf)?;
        return Ok(None);
    };
    let line = &buf[..=lf];
    let Some(text) = line.strip_suffix(b"\r\n") else {
        return Err(malformed_v1(line, "the line ends in a bare LF, not CRLF"));
    };
    check_v1_bytes(line, text)?;
    check_v1_ports(line, text)?;
    // The bytes are printable ASCII and the only CR is the one before the
    // LF, so ppp reads exactly `line`.
    let header = ppp::v1::Header::try_from(line).map_err(|e| v1_error(line, &e))?;
    let parsed = match header.addresses {
        ppp::v1::Addresses::Unknown => ProxyHeader::Local,
        ppp::v1::Addresses::Tcp4(a) => proxied(
            IpAddr::V4(a.source_address),
            a.source_port,
            IpAddr::V4(a.destination_address),
            a.destination_port,
        ),
        ppp::v1::Addresses::Tcp6(a) => proxied(
            IpAddr::V6(a.source_address),
            a.source_port,
            IpAddr::V6(a.destination_address),
            a.destination_port,
        ),
    };
    Ok(Some((parsed, line.len())))
}

/// Whether a v1 line without its LF yet could still become valid.
fn check_v1_partial(buf: &[u8]) -> Result<(), ProxyError> {
    let text = buf.strip_suffix(b"\r").unwrap_or(buf);
    check_v1_bytes(buf, text)?;
    if buf.len() <= V1_PREFIX.len() {
        return Ok(());
    }
    let verdict = ppp::v1::Header::try_from(buf);
    if verdict.is_incomplete() {
        return Ok(());
    }
    match verdict {
        Ok(_) => Ok(()),
        // ppp parses the destination port as soon as the space before it
        // arrives, and an empty port is not a number; judge the line without
        // that space instead.
        Err(_) if buf.ends_with(b" ") && ppp::v1::Header::try_from(&buf[..buf.len() - 1]).is_incomplete() => {
            Ok(())
        }
        Err(e) => Err(v1_error(buf, &e)),
    }
}

/// A v1 line is printable ASCII up to its CRLF; refusing anything else here
/// refuses binary garbage that happens to start with `PROXY ` at once.
fn check_v1_bytes(line: &[u8], text: &[u8]) -> Result<(), ProxyError> {
    match text.iter().find(|b| !(0x20..=0x7e).contains(*b)) {
        Some(b) => Err(malformed_v1(line, &format!("byte {b:#04x} is not printable ASCII"))),
        None => Ok(()),
    }
}

fn v1_error(line: &[u8], error: &ppp::v1::BinaryParseError) -> ProxyError {
    use ppp::v1::{BinaryParseError, ParseError};
    let reason = match error {
        BinaryParseError::InvalidUtf8(_) => "it is not ASCII",
        BinaryParseError::Parse(e) => match e {
            ParseError::HeaderTooLong => {
                return ProxyError::TooLarge { version: 1, size: line.len(), limit: V1_MAX_LEN }
            }
            ParseError::InvalidPrefix => "it does not start with \"PROXY \"",
            ParseError::InvalidProtocol => "the protocol is not TCP4, TCP6 or UNKNOWN",
            ParseError::InvalidSourceAddress(_) => "the source address is not a valid address",
            ParseError::InvalidDestinationAddress(_) => "the destination address is not a valid address",
            ParseError::InvalidSourcePort(_) => "the source port is not a number from 0 to 65535",
            ParseError::InvalidDestinationPort(_) => "the destination port is not a number from 0 to 65535",
            ParseError::InvalidSuffix => "something other than CRLF follows the destination port",
            ParseError::MissingProtocol => "the protocol is missing",
            ParseError::MissingSourceAddress => "the source address is missing",
            ParseError::MissingDestinationAddress => "the destination address is missing",
            ParseError::MissingSourcePort => "the source port is missing",
            ParseError::MissingDestinationPort => "the destination port is missing",
            ParseError::MissingNewLine => "the line does not end in CRLF",
            ParseError::Partial | ParseError::MissingPrefix => "the line is cut short",
        },
    };
    malformed_v1(line, reason)
}

fn malformed_v1(line: &[u8], reason: &str) -> ProxyError {
    ProxyError::Malformed { version: 1, reason: format!("{reason} in \"{}\"", line.escape_ascii()) }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let start = buf.len().min(V2_SIGNATURE.len());
    if buf[..start] != V2_SIGNATURE[..start] {
        return Err(not_proxy(buf));
    }
    // Judge each fixed byte as it arrives rather than after the whole header.
    if let Some(&version_command) = buf.get(12) {
        if version_command >> 4 != 2 {
            return Err(malformed_v2(format!(
                "version {} (byte 13 is {version_command:#04x}), expected 2",
                version_command >> 4
            )));
        }
        if version_command & 0x0f > 1 {
            return Err(malformed_v2(format!(
                "command {} is neither LOCAL (0) nor PROXY (1)",
                version_command & 0x0f
            )));
        }
    }
    let mut address_len = 0;
    if let Some(&family_protocol) = buf.get(13) {
        address_len = match family_protocol >> 4 {
            0 => 0,
            1 => 12,
            2 => 36,
            3 => 216,
            family => {
                return Err(malformed_v2(format!(
                    "address family {family} is not UNSPEC (0), INET (1), INET6 (2) or UNIX (3)"
                )))
            }
        };
        if family_protocol & 0x0f > 2 {
            return Err(malformed_v2(format!(
                "transport protocol {} is not UNSPEC (0), STREAM (1) or DGRAM (2)",
                family_protocol & 0x0f
            )));
        }
    }
    let (Some(&high), Some(&low)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let length = usize::from(u16::from_be_bytes([high, low]));
    let total = V2_FIXED_LEN + length;
    if total > V2_MAX_LEN {
        return Err(ProxyError::TooLarge { version: 2, size: total, limit: V2_MAX_LEN });
    }
    if length < address_len {
        return Err(malformed_v2(format!(
            "length {length} is too short for the {address_len} bytes of its addresses"
        )));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let header = ppp::v2::Header::try_from(&buf[..total]).map_err(|e| malformed_v2(e.to_string()))?;
    let parsed = match (header.command, header.protocol, header.addresses) {
        (Command::Proxy, Protocol::Stream, ppp::v2::Addresses::IPv4(a)) => proxied(
            IpAddr::V4(a.source_address),
            a.source_port,
            IpAddr::V4(a.destination_address),
            a.destination_port,
        ),
        (Command::Proxy, Protocol::Stream, ppp::v2::Addresses::IPv6(a)) => proxied(
            IpAddr::V6(a.source_address),
            a.source_port,
            IpAddr::V6(a.destination_address),
            a.destination_port,
        ),
        // As HAProxy does: LOCAL, and PROXY over anything but TCP/IPv4 or
        // TCP/IPv6 (UNSPEC, UNIX sockets, UDP), keep the connection's own
        // addresses.
        _ => ProxyHeader::Local,
    };
    if let ProxyHeader::Proxied { .. } = parsed {
        for (index, tlv) in header.tlvs().enumerate() {
            if let Err(e) = tlv {
                return Err(malformed_v2(format!("TLV {}: {e}", index + 1)));
            }
        }
    }
    Ok(Some((parsed, total)))
}

fn malformed_v2(reason: String) -> ProxyError {
    ProxyError::Malformed { version: 2, reason }
}

fn not_proxy(buf: &[u8]) -> ProxyError {
    ProxyError::NotProxy { start: buf[..buf.len().min(16)].escape_ascii().to_string() }
}

fn proxied(client_ip: IpAddr, client_port: u16, server_ip: IpAddr, server_port: u16) -> ProxyHeader {
    ProxyHeader::Proxied {
        client: SocketAddr::new(client_ip.to_canonical(), client_port),
        server: SocketAddr::new(server_ip.to_canonical(), server_port),
    }
}

/// Both addresses in one family: IPv6 if either is.
fn one_family(client: SocketAddr, server: SocketAddr) -> (SocketAddr, SocketAddr) {
    let to_v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    };
    match (client, server) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) | (SocketAddr::V6(_), SocketAddr::V4(_)) => {
            (to_v6(client), to_v6(server))
        }
        _ => (client, server),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn canonical(a: SocketAddr) -> SocketAddr {
        SocketAddr::new(a.ip().to_canonical(), a.port())
    }

    fn version() -> impl Strategy<Value = ProxyVersion> {
        prop_oneof![Just(ProxyVersion::V1), Just(ProxyVersion::V2)]
    }

    fn malformed(result: Result<Option<(ProxyHeader, usize)>, ProxyError>, version: u8) -> String {
        match result {
            Err(ProxyError::Malformed { version: v, reason }) if v == version => reason,
            other => panic!("expected a malformed v{version} header, got {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_is_the_spec_line() {
        let bytes = encode(ProxyVersion::V1, addr("192.0.2.1:56324"), addr("198.51.100.7:443"));
        assert_eq!(bytes, b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
    }

    #[test]
    fn v2_tcp6_has_signature_command_family_and_length() {
        let bytes = encode(ProxyVersion::V2, addr("[2001:db8::1]:1000"), addr("[2001:db8::2]:80"));
        assert_eq!(&bytes[..12], V2_SIGNATURE);
        assert_eq!(bytes[12], 0x21, "version 2, PROXY");
        assert_eq!(bytes[13], 0x21, "INET6, STREAM");
        assert_eq!(u16::from_be_bytes([bytes[14], bytes[15]]), 36);
        assert_eq!(bytes.len(), 16 + 36);
    }

    #[test]
    fn mixed_families_are_written_as_ipv6_and_read_back_as_given() {
        let client = addr("192.0.2.1:4000");
        let server = addr("[2001:db8::2]:443");
        let v1 = encode(ProxyVersion::V1, client, server);
        assert_eq!(v1, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 4000 443\r\n");
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let bytes = encode(version, client, server);
            assert_eq!(parse(&bytes), Ok(Some((ProxyHeader::Proxied { client, server }, bytes.len()))));
        }
    }

    #[test]
    fn client_bytes_follow_the_header() {
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let mut bytes = encode(version, addr("10.0.0.1:1"), addr("10.0.0.2:2"));
            let header_len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let (_, consumed) = parse(&bytes).expect("valid").expect("complete");
            assert_eq!(consumed, header_len);
            assert_eq!(&bytes[consumed..], b"GET / HTTP/1.1\r\n\r\n");
        }
    }

    #[test]
    fn v1_unknown_is_local() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((ProxyHeader::Local, 15))));
        let line = b"PROXY UNKNOWN ffff:f::ffff 1:2::3 65535 65535\r\nrest";
        assert_eq!(parse(line), Ok(Some((ProxyHeader::Local, line.len() - 4))));
    }

    #[test]
    fn v2_local_command_is_local() {
        let bytes = ppp::v2::Builder::new(
            Version::Two | Command::Local,
            ppp::v2::AddressFamily::Unspecified | Protocol::Unspecified,
        )
        .build()
        .expect("build");
        assert_eq!(bytes.len(), 16);
        assert_eq!(parse(&bytes), Ok(Some((ProxyHeader::Local, 16))));
        // LOCAL with addresses: still the connection's own.
        let mut with_addresses = encode(ProxyVersion::V2, addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        with_addresses[12] = 0x20;
        assert_eq!(parse(&with_addresses), Ok(Some((ProxyHeader::Local, with_addresses.len()))));
    }

    #[test]
    fn v2_udp_and_unix_keep_the_connection_addresses() {
        let mut udp = encode(ProxyVersion::V2, addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        udp[13] = 0x12;
        assert_eq!(parse(&udp), Ok(Some((ProxyHeader::Local, udp.len()))));
        let unix = ppp::v2::Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            ppp::v2::Unix::new([b'a'; 108], [b'b'; 108]),
        )
        .build()
        .expect("build");
        assert_eq!(parse(&unix), Ok(Some((ProxyHeader::Local, 16 + 216))));
    }

    #[test]
    fn v2_tlvs_are_consumed_with_the_header() {
        let client = addr("[2001:db8::1]:5000");
        let server = addr("[2001:db8::2]:443");
        let mut bytes = ppp::v2::Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (client, server),
        )
        .write_tlv(ppp::v2::Type::Authority, b"a.example.com")
        .expect("tlv")
        .write_tlv(ppp::v2::Type::UniqueId, &[7; 32])
        .expect("tlv")
        .build()
        .expect("build");
        let header_len = bytes.len();
        assert_eq!(header_len, 16 + 36 + (3 + 13) + (3 + 32));
        bytes.extend_from_slice(b"payload");
        assert_eq!(parse(&bytes), Ok(Some((ProxyHeader::Proxied { client, server }, header_len))));
        for end in 0..header_len {
            assert_eq!(parse(&bytes[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    #[test]
    fn v2_truncated_tlv_is_malformed() {
        let mut bytes = encode(ProxyVersion::V2, addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        // A TLV announcing 9 bytes of value but carrying 2.
        bytes.extend_from_slice(&[0x02, 0x00, 0x09, b'a', b'b']);
        let length = (bytes.len() - 16) as u16;
        bytes[14..16].copy_from_slice(&length.to_be_bytes());
        let reason = malformed(parse(&bytes), 2);
        assert!(reason.contains("TLV 1"), "{reason}");
    }

    #[test]
    fn not_proxy_is_decided_from_the_first_byte() {
        for start in [&b"G"[..], b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"\0", b"proxy "] {
            assert!(matches!(parse(start), Err(ProxyError::NotProxy { .. })), "{start:?}");
        }
        let err = parse(b"GET / HTTP/1.1\r\n").expect_err("not proxy");
        assert!(err.to_string().contains("GET / HTTP/1.1"), "{err}");
        // Diverging inside either signature.
        assert!(matches!(parse(b"PRO "), Err(ProxyError::NotProxy { .. })));
        assert!(matches!(parse(b"PROXY\n"), Err(ProxyError::NotProxy { .. })));
        assert!(matches!(parse(b"\r\n\r\nGET"), Err(ProxyError::NotProxy { .. })));
        assert!(matches!(parse(b"\r\n"), Ok(None)));
        assert!(matches!(parse(b""), Ok(None)));
    }

    #[test]
    fn v1_garbage_after_the_prefix_is_refused_early() {
        let reason = malformed(parse(b"PROXY GET"), 1);
        assert!(reason.contains("protocol"), "{reason}");
        let reason = malformed(parse(b"PROXY TCP4 1.2.3.4\0"), 1);
        assert!(reason.contains("0x00"), "{reason}");
        let reason = malformed(parse(b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n"), 1);
        assert!(reason.contains("source address"), "{reason}");
        let reason = malformed(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"), 1);
        assert!(reason.contains("destination port"), "{reason}");
        let reason = malformed(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n"), 1);
        assert!(reason.contains("source address"), "{reason}");
    }

    #[test]
    fn v1_truncated_lines_are_malformed() {
        let reason = malformed(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n"), 1);
        assert!(reason.contains("destination port"), "{reason}");
        malformed(parse(b"PROXY TCP4\r\n"), 1);
        malformed(parse(b"PROXY \r\n"), 1);
        let reason = malformed(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), 1);
        assert!(reason.contains("bare LF"), "{reason}");
        malformed(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx\n"), 1);
        malformed(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), 1);
    }

    #[test]
    fn v1_line_over_107_bytes_is_too_large() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 1, b'a');
        assert_eq!(parse(&line), Ok(None));
        line.push(b'a');
        assert_eq!(
            parse(&line),
            Err(ProxyError::TooLarge { version: 1, size: V1_MAX_LEN, limit: V1_MAX_LEN })
        );
        // CRLF at bytes 106 and 107 makes a 108-byte line.
        line.truncate(V1_MAX_LEN - 1);
        line.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&line), Err(ProxyError::TooLarge { .. })));
        // Exactly 107 bytes is allowed.
        line.truncate(V1_MAX_LEN - 2);
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line), Ok(Some((ProxyHeader::Local, V1_MAX_LEN))));
    }

    #[test]
    fn v1_longest_tcp6_line_fits() {
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        let (header, consumed) = parse(line.as_bytes()).expect("valid").expect("complete");
        assert_eq!(consumed, line.len());
        assert!(matches!(header, ProxyHeader::Proxied { .. }));
    }

    #[test]
    fn v2_oversized_is_refused_from_the_fixed_part() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11]);
        bytes.extend_from_slice(&((V2_MAX_LEN - 16 + 1) as u16).to_be_bytes());
        assert_eq!(
            parse(&bytes),
            Err(ProxyError::TooLarge { version: 2, size: V2_MAX_LEN + 1, limit: V2_MAX_LEN })
        );
        bytes[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(parse(&bytes), Err(ProxyError::TooLarge { .. })));
    }

    #[test]
    fn v2_bad_fixed_bytes_are_refused_as_they_arrive() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x11);
        assert!(malformed(parse(&bytes), 2).contains("version 1"));
        bytes[12] = 0x22;
        assert!(malformed(parse(&bytes), 2).contains("command 2"));
        bytes[12] = 0x21;
        bytes.push(0x41);
        assert!(malformed(parse(&bytes), 2).contains("address family 4"));
        bytes[13] = 0x13;
        assert!(malformed(parse(&bytes), 2).contains("transport protocol 3"));
        bytes[13] = 0x11;
        bytes.extend_from_slice(&[0, 8]);
        assert!(malformed(parse(&bytes), 2).contains("too short"));
    }

    proptest! {
        #[test]
        fn roundtrip(version in version(), client: SocketAddr, server: SocketAddr,
                     tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut bytes = encode(version, client, server);
            let header_len = bytes.len();
            bytes.extend_from_slice(&tail);
            let expected = ProxyHeader::Proxied { client: canonical(client), server: canonical(server) };
            prop_assert_eq!(parse(&bytes), Ok(Some((expected, header_len))));
        }

        #[test]
        fn every_prefix_waits(version in version(), client: SocketAddr, server: SocketAddr) {
            let bytes = encode(version, client, server);
            for end in 0..bytes.len() {
                prop_assert_eq!(parse(&bytes[..end]), Ok(None), "prefix {:?}", bytes[..end].escape_ascii().to_string());
            }
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_after_a_valid_start(
            v2 in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { V1_PREFIX.to_vec() };
            bytes.extend_from_slice(&body);
            if let Ok(Some((_, consumed))) = parse(&bytes) {
                prop_assert!(consumed <= bytes.len());
            }
        }

        #[test]
        fn never_panics_on_mutated_headers(
            version in version(), client: SocketAddr, server: SocketAddr,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode(version, client, server);
            for (index, value) in flips {
                let i = index.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(Some((_, consumed))) = parse(&bytes) {
                prop_assert!(consumed <= bytes.len());
            }
        }
    }
}
