//! HTTP/1.x message heads: parsing, the framing decision and the rewrite a
//! proxy owes the next hop. Pure functions over bytes, so the daemon's I/O
//! loop stays small and every rule here is tested (and fuzzed) without sockets.
//!
//! Fulcrum is strict where leniency lets two parsers disagree about where a
//! message ends (request smuggling, RFC 9112 §6.3, §11.2): ambiguous framing,
//! obs-fold, bare LF and control bytes are refused, never passed on.

mod chunked;
mod head;
mod rewrite;

pub use chunked::{ChunkError, ChunkedDecoder, Decoded};
pub use head::{parse_request, parse_response, RequestHead, ResponseHead};
pub use rewrite::{
    error_response, reason, reason_phrase, simple_response, write_request_head, write_response_head,
    ClientInfo, ResponseFraming,
};

/// Most header fields accepted in one message head (431 beyond).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of a whole message head (431 beyond; 414 if the request line alone is longer).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most bytes of a request line.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The HTTP/1 minor version of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the body of a message is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// Why a message head was refused; each maps to the status a client expects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Malformed or ambiguous: 400 for a request, 502 for a response.
    #[error("{0}")]
    Malformed(&'static str),
    /// Head or header count over the limit: 431.
    #[error("request header fields too large")]
    TooLarge,
    /// Request line over the limit: 414.
    #[error("request line too long")]
    UriTooLong,
    /// A transfer coding Fulcrum does not forward: 501.
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
    /// A method a reverse proxy does not serve (CONNECT): 405.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl HeadError {
    /// The status this error answers a client with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge => 431,
            HeadError::UriTooLong => 414,
            HeadError::UnsupportedCoding => 501,
            HeadError::MethodNotAllowed => 405,
        }
    }
}

/// One header field, as received (name case kept for the next hop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// RFC 9110 §9.2.2: a request that may be sent twice with the same effect.
pub fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}
