//! Response framing decisions and header encoding (RFC 9112 §6, RFC 9110 §6.4.1).

use crate::request::Version;
use crate::syntax::{is_field_value_char, is_tchar, lower_tchar};

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
    let body = if is_head || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::NoBody
    } else {
        match (content_length, version) {
            (Some(n), _) => BodyFraming::Length(n),
            (None, Version::Http11) => BodyFraming::Chunked,
            (None, Version::Http10) => BodyFraming::Close,
        }
    };
    ResponseFraming {
        body,
        keep_alive: keep_alive && body != BodyFraming::Close,
    }
}

/// Parses a WSGI status line such as `b"200 OK"`: three digits, a space, and a reason
/// phrase of visible characters, spaces and tabs (possibly empty). Returns the code (100-999).
///
/// A bare `b"200"` is refused: PEP 3333 requires the reason phrase (and its space).
pub fn parse_status(status: &[u8]) -> Option<u16> {
    let [a, b, c, b' ', reason @ ..] = status else {
        return None;
    };
    if !(b'1'..=b'9').contains(a) || !b.is_ascii_digit() || !c.is_ascii_digit() {
        return None;
    }
    // reason-phrase = *( HTAB / SP / VCHAR / obs-text )
    if !reason.iter().all(|&b| is_field_value_char(b)) {
        return None;
    }
    Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
}

/// A valid field name: one or more `tchar`s (RFC 9110 §5.1).
pub fn is_valid_header_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_tchar(b))
}

/// A valid field value: no NUL, CR, LF or other control characters except HTAB; obs-text allowed.
///
/// Leading and trailing whitespace is allowed here (the encoder writes the value as is).
pub fn is_valid_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| is_field_value_char(b))
}

/// Hop-by-hop fields an application must not set (PEP 3333): Connection, Keep-Alive,
/// Proxy-Authenticate, Proxy-Authorization, TE, Trailer(s), Transfer-Encoding, Upgrade,
/// and the non-standard Proxy-Connection. ASCII case-insensitive.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        classify_response_field(name),
        Some(ResponseField::Connection | ResponseField::HopByHop)
    )
}

/// What the response encoder must know about a field name an application gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseField {
    /// Any other valid name: written as given.
    Other,
    /// `Content-Length`: it frames the body.
    ContentLength,
    /// `Connection`: hop-by-hop, but its `close` token is honoured.
    Connection,
    /// Another hop-by-hop field (see [`is_hop_by_hop`]).
    HopByHop,
}

/// Classifies a response field name: `None` unless it is one or more `tchar`s, else
/// which of the names the encoder treats specially it is (ASCII case-insensitive). One
/// table lookup per byte, the name lowercased on the stack at the same time: this runs
/// for every header of every response.
pub fn classify_response_field(name: &[u8]) -> Option<ResponseField> {
    /// The longest special name, `proxy-authorization`.
    const LONGEST: usize = 19;
    if name.is_empty() {
        return None;
    }
    if name.len() > LONGEST {
        return name
            .iter()
            .all(|&b| is_tchar(b))
            .then_some(ResponseField::Other);
    }
    let mut lower = [0u8; LONGEST];
    for (l, &b) in lower.iter_mut().zip(name) {
        *l = lower_tchar(b);
        if *l == 0 {
            return None;
        }
    }
    Some(match &lower[..name.len()] {
        b"content-length" => ResponseField::ContentLength,
        b"connection" => ResponseField::Connection,
        b"keep-alive"
        | b"proxy-authenticate"
        | b"proxy-authorization"
        | b"proxy-connection"
        | b"te"
        | b"trailer"
        | b"trailers"
        | b"transfer-encoding"
        | b"upgrade" => ResponseField::HopByHop,
        _ => ResponseField::Other,
    })
}

/// `n` in decimal, written into `buf` without allocating; returns the digits.
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends `name: value\r\n` to `dst` (no validation: validate first).
pub fn write_header(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.reserve(name.len() + value.len() + 4);
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod decimal_tests {
    use super::decimal;

    #[test]
    fn decimal_matches_to_string() {
        let mut buf = [0u8; 20];
        for n in [0, 1, 9, 10, 13, 99, 100, 65_535, 1 << 32, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
