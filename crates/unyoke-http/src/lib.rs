//! Sans-IO HTTP/1.1 (RFC 9112) codec for unyoke.
//!
//! Bytes in, events out; response heads and body framing back. No sockets, no clock,
//! no Python: the engine feeds bytes it read and writes the bytes this crate produces.
//! Every limit is a field of [`Limits`] with its default and the status it produces.
//!
//! The decoder is strict (RFC 9112, no lenient options): CRLF line endings only, no
//! obsolete line folding, no whitespace before a field's colon, exactly one Host on
//! HTTP/1.1 (at most one on 1.0), Content-Length as plain digits (identical repeats
//! allowed), never Content-Length with Transfer-Encoding, no Transfer-Encoding on
//! HTTP/1.0, and `chunked` as the only transfer coding (others: 501, or 400 when
//! `chunked` is not last). Every refusal is a [`RequestError`] that knows its status;
//! the connection must close after it. A request fed whole, in pieces or one byte at a
//! time yields the same events and the same error.

mod chunked;
mod date;
mod error;
mod head;
mod proxy;
mod request;
mod response;
mod syntax;

pub use chunked::{
    chunk_header, ChunkHeader, LAST_CHUNK, MAX_CHUNK_EXTENSIONS, MAX_CHUNK_SIZE_LINE,
};
pub use date::http_date;
pub use error::RequestError;
pub use head::parse_content_length;
pub use proxy::{parse_proxy_header, ProxyError, ProxyInfo};
pub use request::{
    BodyKind, Event, Limits, RequestDecoder, RequestHead, Version, MAX_EMPTY_LINES_BEFORE_REQUEST,
};
pub use response::{
    classify_response_field, decimal, is_hop_by_hop, is_valid_header_name, is_valid_header_value,
    parse_status, plan_response, write_header, BodyFraming, ResponseField, ResponseFraming,
};
