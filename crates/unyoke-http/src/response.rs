//! Response framing decisions and header encoding (RFC 9112 §6, RFC 9110 §6.4.1).

use crate::request::Version;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body is sent (HEAD, 1xx, 204, 304). A Content-Length from the app is kept.
    NoBody,
    /// Exactly this many bytes (the app's Content-Length).
    Length(u64),
    /// Chunked transfer coding (HTTP/1.1 peers, length unknown).
    Chunked,
    /// The body ends when the connection closes (HTTP/1.0 peers, length unknown).
    Close,
}

/// The framing of one response and whether the connection persists after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    /// How the body is delimited.
    pub body: BodyFraming,
    /// Whether the connection stays open for another request afterwards.
    pub keep_alive: bool,
}

/// Decides framing for a response.
///
/// `keep_alive` is what the request allows (and the server's settings); it is turned off
/// when the body must be close-delimited. `content_length` is the app's Content-Length.
pub fn plan_response(
    is_head: bool,
    version: Version,
    keep_alive: bool,
    status: u16,
    content_length: Option<u64>,
) -> ResponseFraming {
    let _ = (is_head, version, keep_alive, status, content_length);
    todo!()
}

/// Parses a WSGI status line such as `b"200 OK"`: three digits, a space, and a reason
/// phrase of visible characters, spaces and tabs (possibly empty). Returns the code (100-999).
pub fn parse_status(status: &[u8]) -> Option<u16> {
    let _ = status;
    todo!()
}

/// A valid field name: one or more `tchar`s (RFC 9110 §5.1).
pub fn is_valid_header_name(name: &[u8]) -> bool {
    let _ = name;
    todo!()
}

/// A valid field value: no NUL, CR, LF or other control characters except HTAB; obs-text allowed.
pub fn is_valid_header_value(value: &[u8]) -> bool {
    let _ = value;
    todo!()
}

/// Hop-by-hop fields an application must not set (PEP 3333): Connection, Keep-Alive,
/// Proxy-Authenticate, Proxy-Authorization, TE, Trailer(s), Transfer-Encoding, Upgrade.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let _ = name;
    todo!()
}

/// Appends `name: value\r\n` to `dst` (no validation: validate first).
pub fn write_header(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.reserve(name.len() + value.len() + 4);
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}
