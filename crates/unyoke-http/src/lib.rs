//! Sans-IO HTTP/1.1 (RFC 9112) codec for unyoke.
//!
//! Bytes in, events out; response heads and body framing back. No sockets, no clock,
//! no Python: the engine feeds bytes it read and writes the bytes this crate produces.
//! Every limit is a field of [`Limits`] with its default and the status it produces.

mod chunked;
mod date;
mod error;
mod head;
mod request;
mod response;
mod syntax;

pub use chunked::{
    chunk_header, ChunkHeader, LAST_CHUNK, MAX_CHUNK_EXTENSIONS, MAX_CHUNK_SIZE_LINE,
};
pub use date::http_date;
pub use error::RequestError;
pub use request::{
    BodyKind, Event, Limits, RequestDecoder, RequestHead, Version, MAX_EMPTY_LINES_BEFORE_REQUEST,
};
pub use response::{
    is_hop_by_hop, is_valid_header_name, is_valid_header_value, parse_status, plan_response,
    write_header, BodyFraming, ResponseFraming,
};
