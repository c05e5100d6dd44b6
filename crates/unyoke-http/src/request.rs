//! The request decoder: request line, headers, body framing (RFC 9112 §2-§7).

use bytes::{Buf, Bytes, BytesMut};

use crate::chunked::{ChunkEvent, ChunkedDecoder};
use crate::error::RequestError;
use crate::head::{parse_buffered, parse_scanned, HeadScan};

/// Empty lines (CRLF) ignored before a request line, per message (RFC 9112 §2.2 asks
/// servers to ignore at least one, sent by some clients after a POST body). More → 400
/// `InvalidRequestLine`.
pub const MAX_EMPTY_LINES_BEFORE_REQUEST: u8 = 4;

/// Limits on what a peer may send. Each has a default and the status it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line + header fields + final CRLF), in bytes, and
    /// largest trailer section of a chunked body. Default 256 KiB; larger → 431.
    pub max_request_header_size: usize,
    /// Longest request target, in bytes. Default 8 KiB; longer → 414.
    pub url_length_limit: usize,
    /// Largest body, in bytes, checked against Content-Length before any body byte is
    /// read and against the running total of a chunked body. Default 1 GiB; larger → 413.
    pub max_request_body_size: u64,
    /// Most header fields in one request (and in chunked trailers). Default 100; more → 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_size: 256 * 1024,
            url_length_limit: 8 * 1024,
            max_request_body_size: 1024 * 1024 * 1024,
            max_headers: 100,
        }
    }
}

/// The HTTP version of a request. Anything else is rejected with 505.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

impl Version {
    /// `"HTTP/1.0"` or `"HTTP/1.1"`, exactly as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (no Content-Length, no Transfer-Encoding, or Content-Length: 0).
    Empty,
    /// Content-Length: n (n > 0).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

/// A parsed request head. The raw bytes are kept once; accessors hand out slices.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub(crate) buf: Bytes,
    pub(crate) method: (u32, u32),
    pub(crate) target: (u32, u32),
    /// (name start, name end, value start, value end) into `buf`; values trimmed of OWS.
    pub(crate) headers: Vec<(u32, u32, u32, u32)>,
    /// The request's HTTP version.
    pub version: Version,
    /// How the body is framed.
    pub body: BodyKind,
    /// Whether the request allows the connection to persist (version default + `Connection`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (HTTP/1.1 only).
    pub expect_continue: bool,
    pub(crate) other_expectation: bool,
}

impl Default for RequestHead {
    /// An empty head: no bytes, no fields, no memory held (a placeholder, e.g. in a pooled
    /// exchange between two requests).
    fn default() -> Self {
        RequestHead {
            buf: Bytes::new(),
            method: (0, 0),
            target: (0, 0),
            headers: Vec::new(),
            version: Version::Http11,
            body: BodyKind::Empty,
            keep_alive: false,
            expect_continue: false,
            other_expectation: false,
        }
    }
}

impl RequestHead {
    /// The method token, e.g. `b"GET"`.
    pub fn method(&self) -> &[u8] {
        &self.buf[self.method.0 as usize..self.method.1 as usize]
    }

    /// The request target exactly as sent (not decoded), e.g. `b"/a%20b?x=1"`.
    pub fn target(&self) -> &[u8] {
        &self.buf[self.target.0 as usize..self.target.1 as usize]
    }

    /// Header fields in the order sent: (name as sent, value without surrounding OWS).
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers.iter().map(move |&(ns, ne, vs, ve)| {
            (
                &self.buf[ns as usize..ne as usize],
                &self.buf[vs as usize..ve as usize],
            )
        })
    }

    /// The first value of header `name` (ASCII case-insensitive), if any.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the method is HEAD (its response has no body).
    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }

    /// Whether an `Expect` field listed anything other than `100-continue` (any
    /// version). The engine may answer 417 Expectation Failed.
    pub fn has_other_expectation(&self) -> bool {
        self.other_expectation
    }

    /// The whole head as received (request line, fields, final CRLF).
    pub fn raw(&self) -> &Bytes {
        &self.buf
    }
}

/// What the decoder produced.
#[derive(Debug, Clone)]
pub enum Event {
    /// A complete, valid request head. Body events (if any) follow.
    Head(RequestHead),
    /// Decoded body bytes (chunk framing removed), in order.
    Data(Bytes),
    /// The message is complete (trailers, if any, were read and checked). The decoder is
    /// ready for the next request on the connection.
    End,
}

/// Where the decoder is in the connection's life. Every transition happens in
/// `RequestDecoder::step`.
#[derive(Debug, Clone)]
enum State {
    /// Waiting for, or in the middle of, a request head.
    Head {
        scan: HeadScan,
        /// Empty lines skipped before this head.
        empty_lines: u8,
    },
    /// The head had no body; `End` is next.
    EmptyBody,
    /// A Content-Length body with `remaining` bytes still to come (`End` once 0).
    Length { remaining: u64 },
    /// A chunked body.
    Chunked(ChunkedDecoder),
    /// A request was refused; the connection must close.
    Failed(RequestError),
}

impl State {
    fn idle() -> State {
        State::Head {
            scan: HeadScan::new(),
            empty_lines: 0,
        }
    }
}

/// Decodes requests from a byte stream, one message after another.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    state: State,
    /// The current request asked for `100-continue`.
    expect_continue: bool,
    /// Some body byte of the current request has been handed out.
    body_started: bool,
}

impl RequestDecoder {
    /// A decoder waiting for the first request head.
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            state: State::idle(),
            expect_continue: false,
            body_started: false,
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes the next event from the front of `buf`, splitting off the bytes it
    /// consumed. `Ok(None)` means more bytes are needed (nothing is lost: call again when
    /// more have been appended). After an `Err` the connection must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RequestError> {
        let result = self.step(buf);
        if let Err(e) = result {
            self.state = State::Failed(e);
        }
        result
    }

    /// The peer closed its sending side. `Ok(None)` if that happened between messages;
    /// `Err(IncompleteMessage)` if a message was in progress (after first decoding any
    /// events still complete in `buf`, which are returned one per call as with `decode`).
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RequestError> {
        if let Some(event) = self.decode(buf)? {
            return Ok(Some(event));
        }
        if self.is_idle() && buf.is_empty() {
            return Ok(None);
        }
        self.state = State::Failed(RequestError::IncompleteMessage);
        Err(RequestError::IncompleteMessage)
    }

    /// True between messages: no head and no body is in progress (as of the last call to
    /// `decode`; bytes appended since have not been looked at).
    pub fn is_idle(&self) -> bool {
        matches!(&self.state, State::Head { scan, .. } if scan.is_untouched())
    }

    /// True after a head whose body has not been fully decoded yet.
    pub fn in_body(&self) -> bool {
        matches!(
            self.state,
            State::EmptyBody | State::Length { .. } | State::Chunked(_)
        )
    }

    /// How many body bytes may be read from the connection straight into the
    /// application's memory, past `decode`, when `buffered` bytes are waiting to be
    /// decoded: the rest of a Content-Length body, if nothing is buffered. Zero otherwise:
    /// buffered bytes come first, and a chunked body's framing must be decoded.
    pub fn passthrough_room(&self, buffered: usize) -> u64 {
        match self.state {
            State::Length { remaining } if buffered == 0 => remaining,
            _ => 0,
        }
    }

    /// Records `n` body bytes read past the decoder (see [`Self::passthrough_room`]);
    /// `End` follows once the body is all in. More than the room is a caller's bug and
    /// is clamped.
    pub fn passed_through(&mut self, n: u64) {
        if let State::Length { remaining } = &mut self.state {
            *remaining -= n.min(*remaining);
            if n > 0 {
                self.body_started = true;
            }
        }
    }

    /// True while a `100 Continue` still makes sense: the current request sent
    /// `Expect: 100-continue`, it has a body, and no byte of it has been decoded yet.
    pub fn expecting_continue(&self) -> bool {
        self.expect_continue
            && !self.body_started
            && matches!(self.state, State::Length { .. } | State::Chunked(_))
    }

    /// The one place where the state changes.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RequestError> {
        match &mut self.state {
            State::Failed(e) => Err(*e),
            State::Head { scan, empty_lines } => {
                if scan.is_untouched() {
                    loop {
                        match (buf.first(), buf.get(1)) {
                            (None, _) | (Some(b'\r'), None) => return Ok(None),
                            (Some(b'\r'), Some(b'\n')) => {
                                if *empty_lines >= MAX_EMPTY_LINES_BEFORE_REQUEST {
                                    return Err(RequestError::InvalidRequestLine);
                                }
                                *empty_lines += 1;
                                buf.advance(2);
                            }
                            (Some(b'\r' | b'\n'), _) => {
                                return Err(RequestError::InvalidLineEnding)
                            }
                            (Some(_), _) => break,
                        }
                    }
                }
                let fast = if scan.is_untouched() {
                    parse_buffered(buf, &self.limits)
                } else {
                    None
                };
                let parsed = match fast {
                    Some(parsed) => parsed,
                    None => {
                        let Some(end) = scan.scan(buf, &self.limits)? else {
                            return Ok(None);
                        };
                        parse_scanned(&buf[..end.len], &self.limits)?
                    }
                };
                let len = parsed.len;
                let head = parsed.into_head(buf.split_to(len).freeze());
                self.state = match head.body {
                    BodyKind::Empty => State::EmptyBody,
                    BodyKind::Length(remaining) => State::Length { remaining },
                    BodyKind::Chunked => State::Chunked(ChunkedDecoder::new()),
                };
                self.expect_continue = head.expect_continue;
                self.body_started = false;
                Ok(Some(Event::Head(head)))
            }
            State::EmptyBody | State::Length { remaining: 0 } => {
                self.state = State::idle();
                Ok(Some(Event::End))
            }
            State::Length { remaining } => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*remaining).min(buf.len() as u64);
                *remaining -= n;
                self.body_started = true;
                // n <= buf.len(), so it fits in usize.
                Ok(Some(Event::Data(buf.split_to(n as usize).freeze())))
            }
            State::Chunked(chunked) => match chunked.decode(buf, &self.limits)? {
                None => Ok(None),
                Some(ChunkEvent::Data(data)) => {
                    self.body_started = true;
                    Ok(Some(Event::Data(data)))
                }
                Some(ChunkEvent::End) => {
                    self.state = State::idle();
                    Ok(Some(Event::End))
                }
            },
        }
    }
}
