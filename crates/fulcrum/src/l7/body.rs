//! Streaming a message body from one connection to another by its framing,
//! through a bounded buffer: a body is never held whole.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fulcrum_core::http::{BodyKind, ChunkError, ChunkedDecoder, Decoded};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::sessions::Meter;

/// Read size while streaming; with the leftover of a head this bounds a
/// connection's buffer to about 64 KiB.
pub const READ_CHUNK: usize = 64 * 1024;

/// Where a body transfer broke.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading: {0}")]
    Read(io::Error),
    #[error("writing: {0}")]
    Write(io::Error),
    #[error("the sender closed before the body ended")]
    Truncated,
    #[error("broken chunked framing: {0}")]
    Framing(#[from] ChunkError),
}

impl CopyError {
    /// Whether the fault lies with the sending side (rather than the receiver).
    pub fn is_sender(&self) -> bool {
        !matches!(self, CopyError::Write(_))
    }
}

/// How the body is written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encode {
    /// The payload as it is framed by its length or by a close.
    Raw,
    /// Re-encoded as chunks (extensions and trailers dropped).
    Chunked,
}

/// Streams a body of `kind` from `src` (whose already-read bytes are in `buf`)
/// to `dst`. On success `buf` holds only bytes after the body (a pipelined
/// next message). Each read and each write may take up to `idle`. The
/// payload bytes are added to `meter` as each chunk is written, so a long
/// body shows in the session's row while it moves.
pub async fn copy<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    kind: BodyKind,
    encode: Encode,
    idle: Duration,
    meter: Meter<'_>,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    match kind {
        BodyKind::None => {}
        BodyKind::Length(n) => {
            let mut left = n;
            while left > 0 {
                if buf.is_empty() && fill(src, buf, idle).await? == 0 {
                    return Err(CopyError::Truncated);
                }
                let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                send(dst, &buf[..take], encode, idle).await?;
                meter.add(take as u64);
                buf.advance(take);
                left -= take as u64;
                total += take as u64;
            }
        }
        BodyKind::UntilClose => loop {
            if buf.is_empty() && fill(src, buf, idle).await? == 0 {
                break;
            }
            send(dst, buf, encode, idle).await?;
            meter.add(buf.len() as u64);
            total += buf.len() as u64;
            buf.clear();
        },
        BodyKind::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                match decoder.decode(buf)? {
                    Decoded::Data { start, len } => {
                        send(dst, &buf[start..start + len], encode, idle).await?;
                        meter.add(len as u64);
                        buf.advance(start + len);
                        total += len as u64;
                    }
                    Decoded::NeedMore { consumed } => {
                        buf.advance(consumed);
                        if fill(src, buf, idle).await? == 0 {
                            return Err(CopyError::Truncated);
                        }
                    }
                    Decoded::Done { consumed } => {
                        buf.advance(consumed);
                        break;
                    }
                }
            }
        }
    }
    if encode == Encode::Chunked {
        write(dst, b"0\r\n\r\n", idle).await?;
    }
    Ok(total)
}

/// Reads more into `buf` (up to `READ_CHUNK` at once); 0 means EOF.
pub async fn fill<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<usize, CopyError> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    match tokio::time::timeout(idle, src.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(CopyError::Read(e)),
        Err(_) => Err(CopyError::Read(timed_out(idle))),
    }
}

async fn send<W: AsyncWrite + Unpin>(
    dst: &mut W,
    data: &[u8],
    encode: Encode,
    idle: Duration,
) -> Result<(), CopyError> {
    if data.is_empty() {
        return Ok(());
    }
    match encode {
        Encode::Raw => write(dst, data, idle).await,
        Encode::Chunked => {
            let size = format!("{:x}\r\n", data.len());
            let mut parts = Buf::chain(Buf::chain(size.as_bytes(), data), &b"\r\n"[..]);
            match tokio::time::timeout(idle, dst.write_all_buf(&mut parts)).await {
                Ok(r) => r.map_err(CopyError::Write),
                Err(_) => Err(CopyError::Write(timed_out(idle))),
            }
        }
    }
}

/// Writes all of `data` within `idle`.
///
/// The timer is armed only if the first attempt cannot write everything:
/// a head or a small body almost always goes out at once, and arming and
/// disarming a timer for it cost about a tenth of Fulcrum's instructions per
/// keep-alive request (callgrind).
pub async fn write<W: AsyncWrite + Unpin>(dst: &mut W, data: &[u8], idle: Duration) -> Result<(), CopyError> {
    let mut all = std::pin::pin!(dst.write_all(data));
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(all.as_mut().poll(cx))).await {
        return r.map_err(CopyError::Write);
    }
    match tokio::time::timeout(idle, all).await {
        Ok(r) => r.map_err(CopyError::Write),
        Err(_) => Err(CopyError::Write(timed_out(idle))),
    }
}

fn timed_out(after: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("no progress for {after:?}"))
}
