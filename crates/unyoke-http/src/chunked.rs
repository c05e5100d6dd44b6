//! Chunked transfer coding (RFC 9112 §7.1): the size line for responses, and the
//! decoder for request bodies.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::RequestError;
use crate::request::Limits;
use crate::syntax::{find_lf, is_field_value_char};

/// The terminating zero-size chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Longest chunk-size line (size, extensions, CRLF) accepted; longer → 400 `InvalidChunk`.
/// Extensions carry nothing we use, so a line this long is only ever padding.
pub const MAX_CHUNK_SIZE_LINE: usize = 4 * 1024;

/// Most chunk-extension bytes accepted over a whole body; more → 400 `InvalidChunk`.
/// Without it a body of one-byte chunks could make us read far more than
/// `max_request_body_size` (hyper uses the same bound).
pub const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;

/// A chunk-size line (`<hex>\r\n`) built on the stack.
#[derive(Debug, Clone, Copy)]
pub struct ChunkHeader {
    buf: [u8; 18],
    len: u8,
}

impl ChunkHeader {
    /// The bytes to write before the chunk data.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// The size line for a chunk of `len` bytes (`len` > 0). Write it, then the data, then `\r\n`.
pub fn chunk_header(len: usize) -> ChunkHeader {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let len = len as u64;
    let digits = (64 - len.leading_zeros()).div_ceil(4).max(1) as usize;
    let mut buf = [0u8; 18];
    for (i, slot) in buf[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = HEX[((len >> shift) & 0xf) as usize];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    ChunkHeader {
        buf,
        len: (digits + 2) as u8,
    }
}

/// Where the chunked decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a chunk-size line; `scanned` bytes of it have been searched for LF.
    Size { scanned: usize },
    /// Inside chunk data; `remaining` bytes of it have not arrived yet.
    Data { remaining: u64 },
    /// After chunk data: exactly CRLF must follow.
    DataEnd,
    /// Reading the trailer section after the last chunk.
    Trailers { scanned: usize, line_start: usize },
}

/// What the chunked decoder produced.
#[derive(Debug)]
pub(crate) enum ChunkEvent {
    Data(Bytes),
    End,
}

/// Decodes one chunked body, consuming the framing and handing out the data.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    phase: Phase,
    /// Body bytes announced so far, checked against `max_request_body_size`.
    total: u64,
    /// Chunk-extension bytes so far, checked against `MAX_CHUNK_EXTENSIONS`.
    extensions: usize,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        ChunkedDecoder {
            phase: Phase::Size { scanned: 0 },
            total: 0,
            extensions: 0,
        }
    }

    /// The next event from the front of `buf`; `Ok(None)` when more bytes are needed.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<ChunkEvent>, RequestError> {
        loop {
            match self.phase {
                Phase::Size { scanned } => {
                    let Some(size) = self.size_line(buf, scanned, limits)? else {
                        return Ok(None);
                    };
                    self.phase = if size == 0 {
                        Phase::Trailers {
                            scanned: 0,
                            line_start: 0,
                        }
                    } else {
                        Phase::Data { remaining: size }
                    };
                }
                Phase::Data { remaining } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(buf.len() as u64);
                    let remaining = remaining - n;
                    self.phase = if remaining == 0 {
                        Phase::DataEnd
                    } else {
                        Phase::Data { remaining }
                    };
                    // n <= buf.len(), so it fits in usize.
                    return Ok(Some(ChunkEvent::Data(buf.split_to(n as usize).freeze())));
                }
                Phase::DataEnd => match buf.first() {
                    None => return Ok(None),
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(None),
                        Some(b'\n') => {
                            buf.advance(2);
                            self.phase = Phase::Size { scanned: 0 };
                        }
                        Some(_) => return Err(RequestError::InvalidChunk),
                    },
                    Some(_) => return Err(RequestError::InvalidChunk),
                },
                Phase::Trailers {
                    scanned,
                    line_start,
                } => return self.trailers(buf, scanned, line_start, limits),
            }
        }
    }

    /// Reads a chunk-size line; on success it is consumed and the size returned.
    fn size_line(
        &mut self,
        buf: &mut BytesMut,
        scanned: usize,
        limits: &Limits,
    ) -> Result<Option<u64>, RequestError> {
        match buf.first() {
            None => return Ok(None),
            // httparse accepts a line with no digits as size 0; a size is 1*HEXDIG.
            Some(b) if !b.is_ascii_hexdigit() => return Err(RequestError::InvalidChunk),
            Some(_) => {}
        }
        let end = buf.len().min(MAX_CHUNK_SIZE_LINE);
        let scanned = scanned.min(end);
        let Some(offset) = find_lf(&buf[scanned..end]) else {
            if buf.len() > MAX_CHUNK_SIZE_LINE {
                return Err(RequestError::InvalidChunk);
            }
            self.phase = Phase::Size { scanned: end };
            return Ok(None);
        };
        let lf = scanned + offset;
        if buf[lf - 1] != b'\r' {
            // lf >= 1: buf[0] is a hex digit.
            return Err(RequestError::InvalidChunk);
        }
        let line = &buf[..=lf];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let extension = &line[digits..lf - 1];
        if !extension.is_empty() {
            // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ): after the
            // size only whitespace and then ';' may come, never a bare trailing space.
            let after_bws = extension
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .map(|p| extension[p]);
            if after_bws != Some(b';') || !extension.iter().all(|&b| is_field_value_char(b)) {
                return Err(RequestError::InvalidChunk);
            }
            self.extensions += extension.len();
            if self.extensions > MAX_CHUNK_EXTENSIONS {
                return Err(RequestError::InvalidChunk);
            }
        }
        let size = match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((n, size))) if n == line.len() => size,
            _ => return Err(RequestError::InvalidChunk),
        };
        self.total = self
            .total
            .checked_add(size)
            .filter(|&t| t <= limits.max_request_body_size)
            .ok_or(RequestError::BodyTooLarge)?;
        buf.advance(lf + 1);
        Ok(Some(size))
    }

    /// Reads the trailer section up to its empty line, checks it and discards it.
    fn trailers(
        &mut self,
        buf: &mut BytesMut,
        mut scanned: usize,
        mut line_start: usize,
        limits: &Limits,
    ) -> Result<Option<ChunkEvent>, RequestError> {
        let max = limits.max_request_header_size;
        let end = buf.len().min(max);
        scanned = scanned.min(end);
        loop {
            let Some(offset) = find_lf(&buf[scanned..end]) else {
                if buf.len() > max {
                    return Err(RequestError::HeaderTooLarge);
                }
                self.phase = Phase::Trailers {
                    scanned: end,
                    line_start,
                };
                return Ok(None);
            };
            let lf = scanned + offset;
            if lf == line_start || buf[lf - 1] != b'\r' {
                return Err(RequestError::InvalidChunk);
            }
            scanned = lf + 1;
            if lf - 1 == line_start {
                break;
            }
            line_start = scanned;
        }
        if scanned > 2 {
            check_trailers(&buf[..scanned], limits.max_headers)?;
        }
        buf.advance(scanned);
        // Ready for another body should the decoder be reused.
        *self = ChunkedDecoder::new();
        Ok(Some(ChunkEvent::End))
    }
}

/// Validates a trailer section (ending with its empty line) like header fields.
fn check_trailers(block: &[u8], max_headers: usize) -> Result<(), RequestError> {
    const STACK: usize = 100;
    let mut stack = [httparse::EMPTY_HEADER; STACK];
    let mut heap = Vec::new();
    let slots = if max_headers <= STACK {
        &mut stack[..max_headers]
    } else {
        heap.resize(max_headers, httparse::EMPTY_HEADER);
        &mut heap[..]
    };
    match httparse::parse_headers(block, slots) {
        Ok(httparse::Status::Complete((n, _))) if n == block.len() => Ok(()),
        Err(httparse::Error::TooManyHeaders) => Err(RequestError::TooManyHeaders),
        // A bad trailer field (name, value, folding, line ending) is a bad chunked body.
        _ => Err(RequestError::InvalidChunk),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_header_is_lowercase_hex() {
        for (len, expect) in [
            (0usize, &b"0\r\n"[..]),
            (1, b"1\r\n"),
            (15, b"f\r\n"),
            (16, b"10\r\n"),
            (255, b"ff\r\n"),
            (4096, b"1000\r\n"),
            (0xabcdef, b"abcdef\r\n"),
            (usize::MAX, b"ffffffffffffffff\r\n"),
        ] {
            assert_eq!(chunk_header(len).as_bytes(), expect, "{len}");
        }
    }
}
