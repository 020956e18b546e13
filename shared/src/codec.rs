//! Line framing for protocol v1: one JSON object per `\n`-ended line, at most
//! [`MAX_LINE`] bytes of content. Pure: the framing decision ([`split_line`]) does no I/O,
//! so the async agent ([`LineCodec`], feature `tokio`) and blocking workers
//! ([`read_line`]) share one rule.

use std::io::{self, Read};

use serde::Serialize;

use crate::message::ProtocolError;

/// The longest line content allowed, in bytes, not counting the `\n`.
pub const MAX_LINE: usize = 65536;

/// What the bytes buffered so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// A complete line: content is `buf[..len]`, and `len + 1` bytes (with the `\n`)
    /// are to be consumed.
    Line(usize),
    /// No `\n` yet, and not too long yet: read more.
    NeedMore,
    /// More than `max` bytes arrived without a `\n`: a protocol error, decided as soon as
    /// the `max + 1`th byte is seen.
    TooLong,
}

/// Finds the first line in `buf` under the `max` content limit.
pub fn split_line(buf: &[u8], max: usize) -> Split {
    let window = &buf[..buf.len().min(max + 1)];
    match window.iter().position(|&b| b == b'\n') {
        Some(len) => Split::Line(len),
        None if buf.len() > max => Split::TooLong,
        None => Split::NeedMore,
    }
}

/// Serialises a message as one protocol line, `\n` included.
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising our own message types cannot fail: no maps with non-string keys, no
    // custom Serialize impls that error.
    let mut line = serde_json::to_vec(message).expect("protocol messages always serialise");
    line.push(b'\n');
    line
}

/// Why a blocking [`read_line`] returned no line.
#[derive(Debug, thiserror::Error)]
pub enum ReadLineError {
    /// The line broke the length limit.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The peer closed the connection before a full line.
    #[error("connection closed")]
    Closed,
    /// Reading failed (including a read timeout).
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads one line (content without `\n`) from a blocking reader, keeping any bytes read
/// past it in `buf` for the next call.
pub fn read_line<R: Read>(reader: &mut R, buf: &mut Vec<u8>) -> Result<Vec<u8>, ReadLineError> {
    let mut chunk = [0u8; 4096];
    loop {
        match split_line(buf, MAX_LINE) {
            Split::Line(len) => {
                let line = buf[..len].to_vec();
                buf.drain(..=len);
                return Ok(line);
            }
            Split::TooLong => return Err(ProtocolError::TooLarge { limit: MAX_LINE }.into()),
            Split::NeedMore => {}
        }
        match reader.read(&mut chunk) {
            Ok(0) => return Err(ReadLineError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(feature = "tokio")]
pub use tokio_codec::{CodecError, LineCodec};

#[cfg(feature = "tokio")]
mod tokio_codec {
    use bytes::{Buf, BytesMut};
    use tokio_util::codec::Decoder;

    use super::{split_line, Split, MAX_LINE};
    use crate::message::ProtocolError;

    /// Why the [`LineCodec`] stopped.
    #[derive(Debug, thiserror::Error)]
    pub enum CodecError {
        /// The line broke the length limit.
        #[error(transparent)]
        Protocol(#[from] ProtocolError),
        /// Reading the socket failed.
        #[error("read failed: {0}")]
        Io(#[from] std::io::Error),
    }

    /// A `tokio_util` decoder yielding the raw content of each protocol line.
    #[derive(Debug, Clone, Copy)]
    pub struct LineCodec {
        max: usize,
    }

    impl Default for LineCodec {
        fn default() -> Self {
            Self { max: MAX_LINE }
        }
    }

    impl Decoder for LineCodec {
        type Item = BytesMut;
        type Error = CodecError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
            match split_line(src, self.max) {
                Split::Line(len) => {
                    let line = src.split_to(len);
                    src.advance(1);
                    Ok(Some(line))
                }
                Split::NeedMore => {
                    src.reserve(4096);
                    Ok(None)
                }
                Split::TooLong => Err(ProtocolError::TooLarge { limit: self.max }.into()),
            }
        }

        fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
            // A last line without `\n` is not a line: drop it, as a torn write.
            let line = self.decode(src)?;
            src.clear();
            Ok(line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_first_newline() {
        assert_eq!(split_line(b"ab\ncd\n", 10), Split::Line(2));
        assert_eq!(split_line(b"\n", 10), Split::Line(0));
        assert_eq!(split_line(b"abc", 10), Split::NeedMore);
        assert_eq!(split_line(b"", 10), Split::NeedMore);
    }

    #[test]
    fn too_long_is_decided_at_limit_plus_one_byte() {
        let max = MAX_LINE;
        let exactly = vec![b'x'; max];
        assert_eq!(split_line(&exactly, max), Split::NeedMore);
        let mut with_nl = exactly.clone();
        with_nl.push(b'\n');
        assert_eq!(split_line(&with_nl, max), Split::Line(max));
        let over = vec![b'x'; max + 1];
        assert_eq!(split_line(&over, max), Split::TooLong);
        let mut late_nl = over.clone();
        late_nl.push(b'\n');
        assert_eq!(split_line(&late_nl, max), Split::TooLong);
    }

    #[test]
    fn read_line_keeps_the_rest_for_the_next_call() {
        let mut input: &[u8] = b"one\ntwo\nthr";
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut input, &mut buf).expect("line"), b"one");
        assert_eq!(read_line(&mut input, &mut buf).expect("line"), b"two");
        assert!(matches!(
            read_line(&mut input, &mut buf),
            Err(ReadLineError::Closed)
        ));
    }

    #[test]
    fn read_line_refuses_an_endless_line() {
        let big = vec![b'a'; 1 << 20];
        let mut input: &[u8] = &big;
        let mut buf = Vec::new();
        let err = read_line(&mut input, &mut buf).expect_err("too long");
        assert!(matches!(
            err,
            ReadLineError::Protocol(ProtocolError::TooLarge { limit: MAX_LINE })
        ));
        assert!(
            buf.len() <= MAX_LINE + 4096,
            "stopped reading soon after the limit"
        );
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn tokio_codec_frames_lines_and_refuses_long_ones() {
        use bytes::BytesMut;
        use tokio_util::codec::Decoder;
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::from(&b"{\"a\":1}\n{\"b\""[..]);
        assert_eq!(
            codec.decode(&mut buf).expect("ok").as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(codec.decode(&mut buf).expect("ok"), None);
        buf.extend_from_slice(b":2}\n");
        assert_eq!(
            codec.decode(&mut buf).expect("ok").as_deref(),
            Some(&b"{\"b\":2}"[..])
        );
        let mut long = BytesMut::from(&vec![b'x'; MAX_LINE + 1][..]);
        assert!(matches!(
            codec.decode(&mut long),
            Err(CodecError::Protocol(ProtocolError::TooLarge { .. }))
        ));
    }
}
