//! A streaming decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1).
//!
//! Written by hand because it must hand back payload ranges of the caller's
//! buffer without copying, resume across reads, and be strict (no bare LF,
//! bounded size lines) where `httparse::parse_chunk_size` alone is lenient
//! and only parses the size line. The proxy re-encodes what it decodes, so
//! chunk extensions and trailers never reach the next hop.

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    BadSize,
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("missing CRLF after chunk data")]
    BadDelimiter,
    #[error("trailer section too large")]
    TrailersTooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line, `seen` bytes of it so far.
    Size {
        seen: usize,
        phase: SizePhase,
    },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF that ends chunk data; `cr` once its CR is read.
    DataEnd {
        cr: bool,
    },
    /// Reading trailer lines after the last chunk: `line` bytes of the
    /// current one, `total` of all, `cr` once the current line's CR is read.
    Trailers {
        line: usize,
        total: usize,
        cr: bool,
    },
    Done,
}

/// Where in `chunk-size [ BWS ";" ext ] CRLF` the decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SizePhase {
    Digits,
    /// Whitespace after the digits: only more of it or ';' may follow.
    Bws,
    Ext,
    Cr,
}

/// Resumable decoder state; feed it the unconsumed bytes each time.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: usize,
}

/// What one [`ChunkedDecoder::decode`] step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// `input[..start]` was framing; payload is `input[start..start + len]`.
    /// The caller drops `start + len` bytes and calls again.
    Data { start: usize, len: usize },
    /// More input is needed; the `consumed` framing bytes may be dropped first.
    NeedMore { consumed: usize },
    /// The body ended at `input[..consumed]`; what follows is the next message.
    Done { consumed: usize },
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

const START: State = State::Size { seen: 0, phase: SizePhase::Digits };

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self { state: START, size: 0, digits: 0 }
    }

    /// Whether the terminating chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advances over `input`, stopping at the first payload bytes, the end of
    /// the body, or the end of `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(Decoded::Done { consumed: i }),
                State::Data(left) => {
                    let len = usize::try_from(left).unwrap_or(usize::MAX).min(input.len() - i);
                    let rest = left - len as u64;
                    self.state = if rest == 0 { State::DataEnd { cr: false } } else { State::Data(rest) };
                    return Ok(Decoded::Data { start: i, len });
                }
                State::DataEnd { cr } => {
                    self.state = match (cr, b) {
                        (false, b'\r') => State::DataEnd { cr: true },
                        (true, b'\n') => START,
                        _ => return Err(ChunkError::BadDelimiter),
                    };
                }
                State::Size { seen, phase } => {
                    if seen >= MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    let phase = self.size_byte(phase, b)?;
                    self.state = State::Size { seen: seen + 1, phase };
                    if b == b'\n' {
                        self.state = if self.size == 0 {
                            State::Trailers { line: 0, total: 0, cr: false }
                        } else {
                            State::Data(self.size)
                        };
                        self.size = 0;
                        self.digits = 0;
                    }
                }
                State::Trailers { line, total, cr } => {
                    if total >= MAX_TRAILERS {
                        return Err(ChunkError::TrailersTooLarge);
                    }
                    let total = total + 1;
                    self.state = match (cr, b) {
                        (false, b'\r') => State::Trailers { line, total, cr: true },
                        (true, b'\n') if line == 0 => {
                            self.state = State::Done;
                            return Ok(Decoded::Done { consumed: i + 1 });
                        }
                        (true, b'\n') => State::Trailers { line: 0, total, cr: false },
                        (true, _) | (false, b'\n') => return Err(ChunkError::BadDelimiter),
                        // obs-fold: a trailer line may not start with whitespace.
                        (false, b' ' | b'\t') if line == 0 => return Err(ChunkError::BadDelimiter),
                        (false, _) => State::Trailers { line: line + 1, total, cr: false },
                    };
                }
            }
            i += 1;
        }
        match self.state {
            State::Done => Ok(Decoded::Done { consumed: i }),
            _ => Ok(Decoded::NeedMore { consumed: i }),
        }
    }

    /// One byte of a chunk-size line; returns the phase after it.
    fn size_byte(&mut self, phase: SizePhase, b: u8) -> Result<SizePhase, ChunkError> {
        use SizePhase::*;
        match (phase, b) {
            (Cr, b'\n') => Ok(Cr),
            (Cr, _) | (_, b'\n') => Err(ChunkError::BadSize),
            (_, b'\r') if self.digits > 0 => Ok(Cr),
            (Digits, b';') | (Bws, b';') if self.digits > 0 => Ok(Ext),
            (Digits, b' ' | b'\t') | (Bws, b' ' | b'\t') if self.digits > 0 => Ok(Bws),
            (Ext, _) if b >= 0x20 && b != 0x7f || b == b'\t' => Ok(Ext),
            (Digits, _) => {
                let d = (b as char).to_digit(16).ok_or(ChunkError::BadSize)?;
                if self.digits == 16 {
                    return Err(ChunkError::BadSize);
                }
                self.digits += 1;
                self.size = self.size << 4 | u64::from(d);
                Ok(Digits)
            }
            _ => Err(ChunkError::BadSize),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns payload and the leftover.
    fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&buf)? {
                Decoded::Data { start, len } => {
                    out.extend_from_slice(&buf[start..start + len]);
                    buf.drain(..start + len);
                }
                Decoded::NeedMore { consumed } => {
                    buf.drain(..consumed);
                    if fed >= input.len() {
                        return Err(ChunkError::BadDelimiter); // truncated
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
                Decoded::Done { consumed } => {
                    buf.drain(..consumed);
                    buf.extend_from_slice(&input[fed..]);
                    return Ok((out, buf));
                }
            }
        }
    }

    #[test]
    fn decodes_across_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\nA \t;x\r\n0123456789\r\n0\r\nT: v\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, rest) = run(body, step).unwrap();
            assert_eq!(data, b"hello world0123456789", "step {step}");
            assert_eq!(rest, b"NEXT");
        }
    }

    #[test]
    fn refuses_bad_framing() {
        let bad: [&[u8]; 9] = [
            b"x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
            b"0\r\nT: v\n\r\n",
            b"0\r\nT: v\r\n folded\r\n\r\n",
        ];
        for input in bad {
            assert!(run(input, 64).is_err(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn bounds_lines() {
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE));
        assert_eq!(run(&long, 9000), Err(ChunkError::LineTooLong));
    }

    proptest::proptest! {
        #[test]
        fn roundtrips_any_chunking(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..200), 0..10),
            step in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (data, rest) = run(&wire, step).unwrap();
            proptest::prop_assert_eq!(data, chunks.concat());
            proptest::prop_assert!(rest.is_empty());
        }

        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = run(&input, 7);
        }
    }
}
