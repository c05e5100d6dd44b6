//! The request head: finding where it ends, checking the request line as it arrives,
//! parsing the fields with httparse, and the framing rules (RFC 9112 §2-§6).
//!
//! The scanner looks at every byte of a head once, however the head is split across
//! reads, and stops at the first byte that breaks a rule or a limit. Because it decides
//! byte by byte and in order, a head fed whole and a head fed one byte at a time end
//! with the same verdict. The fields themselves are parsed only when the head is
//! complete, so their errors cannot depend on how the head was split either.
//!
//! The usual case skips the scanner: when a head's first bytes already contain all of
//! it, `parse_buffered` parses it in one httparse pass and proves from httparse's
//! slices that the scanner would have accepted it. When in doubt it steps aside and the
//! scanner gives the verdict.

use std::mem::MaybeUninit;

use bytes::Bytes;

use crate::error::RequestError;
use crate::request::{BodyKind, Limits, RequestHead, Version};
use crate::syntax::{
    find_lf, is_field_value_char, is_host_char, is_target_char, is_tchar, list_elements,
};

/// Header slots httparse gets on the stack; a larger `max_headers` uses the heap.
const STACK_HEADERS: usize = 100;

/// Where the scanner is in the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the method token.
    Method,
    /// Reading the request target, which starts at `start`.
    Target { start: usize },
    /// Reading `HTTP/x.y` CRLF, which starts at `start`.
    Version { start: usize },
    /// Reading field lines; the current line starts at `line_start`.
    Fields { line_start: usize },
}

/// Incremental search for the end of a request head. Positions are offsets from the
/// first byte of the head in the caller's buffer, which is not consumed until the head
/// is complete.
#[derive(Debug, Clone)]
pub(crate) struct HeadScan {
    /// How many bytes of the head have been examined.
    pos: usize,
    phase: Phase,
}

/// A complete head was found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadEnd {
    /// Length of the head including the final empty line.
    pub len: usize,
}

impl HeadScan {
    pub(crate) fn new() -> Self {
        HeadScan {
            pos: 0,
            phase: Phase::Method,
        }
    }

    /// True until the first byte of a head has been examined.
    pub(crate) fn is_untouched(&self) -> bool {
        self.pos == 0
    }

    /// Continues the search over `buf` (the head starts at `buf[0]`). `Ok(None)`: the head
    /// is not complete yet and every byte so far is acceptable.
    pub(crate) fn scan(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<HeadEnd>, RequestError> {
        if buf.len() < self.pos {
            // The caller replaced the buffer; start over rather than index past it.
            *self = HeadScan::new();
        }
        let max = limits.max_request_header_size;
        // Bytes at index >= max would make the head larger than the limit.
        let end = buf.len().min(max);
        let mut i = self.pos;
        loop {
            match self.phase {
                Phase::Method => loop {
                    if i >= end {
                        return self.out_of_bytes(i, buf.len(), max);
                    }
                    let b = buf[i];
                    if is_tchar(b) {
                        i += 1;
                    } else if b == b' ' && i > 0 {
                        i += 1;
                        self.phase = Phase::Target { start: i };
                        break;
                    } else {
                        return Err(RequestError::InvalidRequestLine);
                    }
                },
                Phase::Target { start } => loop {
                    if i >= end {
                        return self.out_of_bytes(i, buf.len(), max);
                    }
                    let b = buf[i];
                    if is_target_char(b) {
                        if i - start >= limits.url_length_limit {
                            return Err(RequestError::UriTooLong);
                        }
                        i += 1;
                    } else if b == b' ' && i > start {
                        i += 1;
                        self.phase = Phase::Version { start: i };
                        break;
                    } else {
                        return Err(RequestError::InvalidRequestLine);
                    }
                },
                Phase::Version { start } => loop {
                    if i >= end {
                        return self.out_of_bytes(i, buf.len(), max);
                    }
                    let b = buf[i];
                    let ok = match i - start {
                        0..=4 => b == b"HTTP/"[i - start],
                        5 | 7 => b.is_ascii_digit(),
                        6 => b == b'.',
                        8 if b == b'\n' => return Err(RequestError::InvalidLineEnding),
                        8 => b == b'\r',
                        _ if b != b'\n' => return Err(RequestError::InvalidLineEnding),
                        _ => {
                            // The request line is complete and well formed.
                            if version_of(buf[start + 5], buf[start + 7]).is_none() {
                                return Err(RequestError::UnsupportedVersion);
                            }
                            i += 1;
                            self.phase = Phase::Fields { line_start: i };
                            break;
                        }
                    };
                    if !ok {
                        return Err(RequestError::InvalidRequestLine);
                    }
                    i += 1;
                },
                Phase::Fields { line_start } => match find_lf(&buf[i..end]) {
                    None => return self.out_of_bytes(end, buf.len(), max),
                    Some(offset) => {
                        let lf = i + offset;
                        if lf == line_start || buf[lf - 1] != b'\r' {
                            return Err(RequestError::InvalidLineEnding);
                        }
                        i = lf + 1;
                        if lf - 1 == line_start {
                            self.pos = i;
                            return Ok(Some(HeadEnd { len: i }));
                        }
                        self.phase = Phase::Fields { line_start: i };
                    }
                },
            }
        }
    }

    /// The scan reached `i`, the end of what it may look at: either the buffer ends
    /// (wait for more) or the next byte would exceed the head size limit.
    fn out_of_bytes(
        &mut self,
        i: usize,
        len: usize,
        max: usize,
    ) -> Result<Option<HeadEnd>, RequestError> {
        self.pos = i;
        if len > max {
            Err(RequestError::HeaderTooLarge)
        } else {
            Ok(None)
        }
    }
}

fn version_of(major: u8, minor: u8) -> Option<Version> {
    match (major, minor) {
        (b'1', b'0') => Some(Version::Http10),
        (b'1', b'1') => Some(Version::Http11),
        _ => None,
    }
}

/// A parsed head without its bytes: offsets into the head, and the framing decisions.
#[derive(Debug)]
pub(crate) struct ParsedHead {
    /// Length of the head including the final empty line.
    pub len: usize,
    method: (u32, u32),
    target: (u32, u32),
    headers: Vec<(u32, u32, u32, u32)>,
    version: Version,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
    other_expectation: bool,
}

impl ParsedHead {
    /// Attaches the head's bytes (`head.len() == self.len`).
    pub(crate) fn into_head(self, head: Bytes) -> RequestHead {
        debug_assert_eq!(head.len(), self.len);
        RequestHead {
            buf: head,
            method: self.method,
            target: self.target,
            headers: self.headers,
            version: self.version,
            body: self.body,
            keep_alive: self.keep_alive,
            expect_continue: self.expect_continue,
            other_expectation: self.other_expectation,
        }
    }
}

/// What one httparse pass made of a buffer.
enum Attempt {
    /// A head that every rule accepts.
    Head(ParsedHead),
    /// No verdict: the head is incomplete, or a rule the scanner owns (a limit, a line
    /// ending) is broken and the scanner must say which one comes first.
    Unsure,
    /// A complete head that breaks a rule.
    Invalid(RequestError),
}

/// Fast path, tried once per head when its first bytes arrive: when the whole head is
/// already buffered (the usual case), one httparse pass parses it and a few checks on
/// httparse's own slices prove that the scanner would have accepted it too, so the head
/// is not scanned at all. Any doubt returns `None` and the scanner decides.
pub(crate) fn parse_buffered(buf: &[u8], limits: &Limits) -> Option<ParsedHead> {
    match parse(buf, limits) {
        Attempt::Head(head) => Some(head),
        Attempt::Unsure | Attempt::Invalid(_) => None,
    }
}

/// Slow path: parses a head whose end the scanner found (`head` ends with the empty line).
pub(crate) fn parse_scanned(head: &[u8], limits: &Limits) -> Result<ParsedHead, RequestError> {
    match parse(head, limits) {
        Attempt::Head(parsed) if parsed.len == head.len() => Ok(parsed),
        Attempt::Invalid(e) => Err(e),
        // The scanner and httparse disagree about where the head ends, or about its line
        // endings; refuse rather than guess.
        Attempt::Head(_) | Attempt::Unsure => Err(RequestError::InvalidRequestLine),
    }
}

fn parse(buf: &[u8], limits: &Limits) -> Attempt {
    if limits.max_headers <= STACK_HEADERS {
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_HEADERS];
        parse_with_slots(buf, &mut slots[..limits.max_headers], limits)
    } else {
        let mut slots = Vec::with_capacity(limits.max_headers);
        slots.resize(limits.max_headers, MaybeUninit::uninit());
        parse_with_slots(buf, &mut slots, limits)
    }
}

fn parse_with_slots<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    limits: &Limits,
) -> Attempt {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Attempt::Unsure,
        Err(e) => return Attempt::Invalid(map_parse_error(e, buf)),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Attempt::Unsure;
    };
    // The scanner's limits, checked here so that a head they reject is left to it.
    if len > limits.max_request_header_size
        || len > u32::MAX as usize
        || target.len() > limits.url_length_limit
    {
        return Attempt::Unsure;
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize).wrapping_sub(base);
    // httparse also takes a bare LF as a line ending; we require CRLF (RFC 9112 §2.2).
    // Every LF in a head httparse accepted ends a line, so checking the byte before each
    // line end is enough: after the version, after each value's trailing OWS, and the
    // final empty line.
    let crlf_at = |i: usize| buf.get(i) == Some(&b'\r');
    let version_end = offset(target.as_bytes()) + target.len() + 1 + 8;
    if !crlf_at(version_end) || len < 2 || !crlf_at(len - 2) {
        return Attempt::Unsure;
    }
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    // Offsets fit in u32: len <= u32::MAX was checked above.
    let span = |s: &[u8]| -> (u32, u32) {
        let start = offset(s);
        (start as u32, (start + s.len()) as u32)
    };

    let mut rules = FramingRules::default();
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let mut line_end = offset(value) + value.len();
        while matches!(buf.get(line_end), Some(b' ' | b'\t')) {
            line_end += 1;
        }
        if !crlf_at(line_end) {
            return Attempt::Unsure;
        }
        // httparse refuses every CTL but HTAB in values (tests/decoder.rs checks all 256
        // bytes), so the values are not scanned a second time.
        debug_assert!(value.iter().all(|&b| is_field_value_char(b)));
        if let Err(e) = rules.observe(name, value) {
            return Attempt::Invalid(e);
        }
        let (ns, ne) = span(name);
        let (vs, ve) = span(value);
        headers.push((ns, ne, vs, ve));
    }
    let body = match rules.body_kind(version, limits) {
        Ok(body) => body,
        Err(e) => return Attempt::Invalid(e),
    };

    Attempt::Head(ParsedHead {
        len,
        method: span(method.as_bytes()),
        target: span(target.as_bytes()),
        headers,
        version,
        body,
        keep_alive: rules.keep_alive(version),
        expect_continue: version == Version::Http11 && rules.expect_continue,
        other_expectation: rules.other_expectation,
    })
}

/// Turns an httparse error into ours. Only reached for heads that are complete, so the
/// whole head can be searched for the cause.
fn map_parse_error(e: httparse::Error, head: &[u8]) -> RequestError {
    let bare_cr = head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && head.get(i + 1) != Some(&b'\n'));
    if bare_cr {
        return RequestError::InvalidLineEnding;
    }
    match e {
        httparse::Error::HeaderName => header_name_error(head),
        httparse::Error::HeaderValue => RequestError::InvalidHeaderValue,
        httparse::Error::NewLine => RequestError::InvalidLineEnding,
        httparse::Error::TooManyHeaders => RequestError::TooManyHeaders,
        // The scanner has already checked the version shape, so this is a version the
        // scanner let through but httparse does not know.
        httparse::Error::Version => RequestError::UnsupportedVersion,
        httparse::Error::Token | httparse::Error::Status => RequestError::InvalidRequestLine,
    }
}

/// httparse reports a field line starting with whitespace as a bad name. A continuation
/// of the previous field is obsolete line folding; whitespace before the first field
/// (RFC 9112 §2.2) and every other bad name are invalid names.
fn header_name_error(head: &[u8]) -> RequestError {
    let mut lines = head.split(|&b| b == b'\n').skip(1);
    let mut first = true;
    for line in &mut lines {
        let starts_blank = matches!(line.first(), Some(b' ' | b'\t'));
        let bad_name = match line.iter().position(|&b| b == b':') {
            Some(colon) => colon == 0 || !line[..colon].iter().all(|&b| is_tchar(b)),
            None => !line.is_empty() && line != b"\r",
        };
        if starts_blank {
            return if first {
                RequestError::InvalidHeaderName
            } else {
                RequestError::ObsFold
            };
        }
        if bad_name {
            return RequestError::InvalidHeaderName;
        }
        first = false;
    }
    RequestError::InvalidHeaderName
}

/// What the framing-relevant fields said, gathered in one pass over the fields.
#[derive(Debug, Default)]
struct FramingRules {
    content_length: Option<u64>,
    /// A Transfer-Encoding field was present (even an empty one).
    transfer_encoding: bool,
    /// Codings listed, over all Transfer-Encoding lines.
    codings: u32,
    chunked_count: u32,
    last_is_chunked: bool,
    /// A coding other than `chunked` was listed.
    other_coding: bool,
    hosts: u32,
    connection_close: bool,
    connection_keep_alive: bool,
    expect_continue: bool,
    other_expectation: bool,
}

impl FramingRules {
    fn observe(&mut self, name: &[u8], value: &[u8]) -> Result<(), RequestError> {
        // Dispatch on length first: most fields are none of these and cost one compare.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                self.hosts += 1;
                if !value.iter().all(|&b| is_host_char(b)) {
                    return Err(RequestError::InvalidHeaderValue);
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                for e in list_elements(value) {
                    if e.eq_ignore_ascii_case(b"100-continue") {
                        self.expect_continue = true;
                    } else {
                        self.other_expectation = true;
                    }
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for option in list_elements(value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        self.connection_close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        self.connection_keep_alive = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_content_length(value).ok_or(RequestError::InvalidContentLength)?;
                match self.content_length {
                    Some(previous) if previous != n => {
                        return Err(RequestError::InvalidContentLength)
                    }
                    _ => self.content_length = Some(n),
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = true;
                for coding in list_elements(value) {
                    self.codings += 1;
                    // Parameters (`;q=...`) are not stripped: `chunked` takes none, and
                    // any other coding is refused whatever its parameters.
                    self.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    if self.last_is_chunked {
                        self.chunked_count += 1;
                    } else {
                        self.other_coding = true;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The body framing (RFC 9112 §6.3), with the smuggling rules applied in a fixed
    /// order so that a request breaking several gets the same answer every time.
    ///
    /// Transfer-Encoding policy: the only framing we decode is a single `chunked`.
    /// - no codings at all (empty field), `chunked` not last, or `chunked` twice → 400
    ///   `ChunkedNotFinal`: the body length cannot be determined (RFC 9112 §6.3 item 4);
    /// - `chunked` last but other codings before it (gzip, deflate, compress, x-gzip,
    ///   identity or unknown names alike) → 501 `UnknownTransferCoding`: framing is
    ///   sound but we do not decode those codings (RFC 9112 §6.1).
    fn body_kind(&self, version: Version, limits: &Limits) -> Result<BodyKind, RequestError> {
        if self.hosts > 1 || (version == Version::Http11 && self.hosts == 0) {
            return Err(RequestError::MissingHost);
        }
        if self.transfer_encoding {
            if version == Version::Http10 {
                return Err(RequestError::TransferEncodingOnHttp10);
            }
            if self.content_length.is_some() {
                return Err(RequestError::ContentLengthWithTransferEncoding);
            }
            if self.codings == 0 || !self.last_is_chunked || self.chunked_count > 1 {
                return Err(RequestError::ChunkedNotFinal);
            }
            if self.other_coding {
                return Err(RequestError::UnknownTransferCoding);
            }
            return Ok(BodyKind::Chunked);
        }
        match self.content_length {
            None | Some(0) => Ok(BodyKind::Empty),
            Some(n) if n > limits.max_request_body_size => Err(RequestError::BodyTooLarge),
            Some(n) => Ok(BodyKind::Length(n)),
        }
    }

    fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.connection_close,
            Version::Http10 => self.connection_keep_alive && !self.connection_close,
        }
    }
}

/// A Content-Length value, a request's or an application's: `1*DIGIT` as a u64; no sign,
/// no spaces inside, no lists, no overflow.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_syntax() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"007"), Some(7));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+1",
            b"-1",
            b"1 1",
            b"1,1",
            b"0x10",
            b"1e3",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn header_name_error_classification() {
        assert_eq!(
            header_name_error(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"),
            RequestError::ObsFold
        );
        assert_eq!(
            header_name_error(b"GET / HTTP/1.1\r\n\tA: b\r\n\r\n"),
            RequestError::InvalidHeaderName
        );
        assert_eq!(
            header_name_error(b"GET / HTTP/1.1\r\nA : b\r\n c\r\n\r\n"),
            RequestError::InvalidHeaderName
        );
    }
}
