//! Chunked transfer coding for responses (RFC 9112 §7.1); request-side decoding is in
//! `request.rs`.

/// The terminating zero-size chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

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
    let _ = len;
    todo!()
}
