//! Table-driven tests of the request decoder. Every case is decoded fed whole, fed one
//! byte at a time, and split in two at every position; all feeds must agree.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a failed test.

use bytes::{Bytes, BytesMut};
use unyoke_http::{BodyKind, Event, Limits, RequestDecoder, RequestError, Version};

/// A head as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    method: Vec<u8>,
    target: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    version: Version,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
    other_expectation: bool,
}

/// An event as the tests compare it; consecutive Data events are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Head(Head),
    Data(Vec<u8>),
    End,
}

/// Everything a feed produced: the events, then how it ended after EOF.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    end: Result<(), RequestError>,
}

fn push(events: &mut Vec<Ev>, event: Event) {
    match event {
        Event::Head(h) => events.push(Ev::Head(Head {
            method: h.method().to_vec(),
            target: h.target().to_vec(),
            headers: h.headers().map(|(n, v)| (n.to_vec(), v.to_vec())).collect(),
            version: h.version,
            body: h.body,
            keep_alive: h.keep_alive,
            expect_continue: h.expect_continue,
            other_expectation: h.has_other_expectation(),
        })),
        Event::Data(d) => {
            assert!(!d.is_empty(), "empty Data event");
            if let Some(Ev::Data(prev)) = events.last_mut() {
                prev.extend_from_slice(&d);
            } else {
                events.push(Ev::Data(d.to_vec()));
            }
        }
        Event::End => events.push(Ev::End),
    }
}

/// Feeds `input` in the given pieces, decoding after each until `None`, then signals EOF.
fn feed<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, limits: Limits) -> Outcome {
    let mut decoder = RequestDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let fail = |decoder: &mut RequestDecoder, buf: &mut BytesMut, e, events| {
        // An error is sticky.
        assert_eq!(decoder.decode(buf).map(|_| ()), Err(e));
        assert_eq!(decoder.decode_eof(buf).map(|_| ()), Err(e));
        assert!(!decoder.is_idle() && !decoder.in_body());
        Outcome {
            events,
            end: Err(e),
        }
    };
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => push(&mut events, event),
                Ok(None) => break,
                Err(e) => return fail(&mut decoder, &mut buf, e, events),
            }
        }
    }
    loop {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(event)) => push(&mut events, event),
            Ok(None) => {
                assert!(decoder.is_idle());
                return Outcome {
                    events,
                    end: Ok(()),
                };
            }
            Err(e) => return fail(&mut decoder, &mut buf, e, events),
        }
    }
}

/// Decodes `input` every way; asserts they agree and returns the outcome.
fn decode_all_ways(input: &[u8], limits: Limits) -> Outcome {
    let whole = feed([input], limits);
    let bytewise = feed(input.chunks(1), limits);
    assert_eq!(whole, bytewise, "whole vs one byte at a time: {input:?}");
    // Splitting in two everywhere is quadratic; keep it to inputs of test size.
    if input.len() <= 4096 {
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            let halves = feed([a, b], limits);
            assert_eq!(whole, halves, "split at {at}: {input:?}");
        }
    }
    whole
}

/// A compact rendering of events: `GET / 1.1 empty ka`, `data:hello`, `end`, joined by ` | `.
fn render(events: &[Ev]) -> String {
    events
        .iter()
        .map(|e| match e {
            Ev::Head(h) => {
                let mut s = format!(
                    "{} {} {} {} {}",
                    String::from_utf8_lossy(&h.method),
                    String::from_utf8_lossy(&h.target),
                    match h.version {
                        Version::Http10 => "1.0",
                        Version::Http11 => "1.1",
                    },
                    match h.body {
                        BodyKind::Empty => "empty".to_string(),
                        BodyKind::Length(n) => format!("len{n}"),
                        BodyKind::Chunked => "chunked".to_string(),
                    },
                    if h.keep_alive { "ka" } else { "close" },
                );
                if h.expect_continue {
                    s.push_str(" 100c");
                }
                if h.other_expectation {
                    s.push_str(" expect?");
                }
                s
            }
            Ev::Data(d) => format!("data:{}", String::from_utf8_lossy(d)),
            Ev::End => "end".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn small_limits() -> Limits {
    Limits {
        max_request_header_size: 64,
        url_length_limit: 16,
        max_request_body_size: 10,
        max_headers: 3,
    }
}

/// Valid inputs: (name, input, rendered events). They end cleanly at EOF.
const VALID: &[(&str, &[u8], &str)] = &[
    (
        "simple GET",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / 1.1 empty ka | end",
    ),
    (
        "HEAD",
        b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "HEAD /x 1.1 empty ka | end",
    ),
    (
        "POST with Content-Length",
        b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        "POST /f 1.1 len5 ka | data:hello | end",
    ),
    (
        "Content-Length 0 is an empty body",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "POST / 1.1 empty ka | end",
    ),
    (
        "identical Content-Length repeated, leading zeros and OWS",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length:  003 \t\r\n\r\nabc",
        "POST / 1.1 len3 ka | data:abc | end",
    ),
    (
        "pipelined GETs",
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /1 1.1 empty ka | end | GET /2 1.1 empty ka | end",
    ),
    (
        "pipelined body then request, with a CRLF between",
        b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /1 1.1 len2 ka | data:hi | end | GET /2 1.1 empty ka | end",
    ),
    (
        "leading empty lines are skipped",
        b"\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / 1.1 empty ka | end",
    ),
    (
        "chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "POST / 1.1 chunked ka | data:hello world | end",
    ),
    (
        "chunked with extensions and trailers",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n1 ; a=\"q;x\" ;b\r\n!\r\n0;last\r\nX-Sum: 1\r\nX-Other: two \r\n\r\n",
        "POST / 1.1 chunked ka | data:hello! | end",
    ),
    (
        "chunked uppercase hex, leading zeros, coding case-insensitive",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n00A\r\n0123456789\r\n000\r\n\r\n",
        "POST / 1.1 chunked ka | data:0123456789 | end",
    ),
    (
        "Transfer-Encoding with empty list elements",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked ,\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        "POST / 1.1 chunked ka | data:x | end",
    ),
    (
        "chunked then pipelined request",
        b"POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n\
          GET /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz",
        "POST /1 1.1 chunked ka | data:ab | end | GET /2 1.1 len1 ka | data:z | end",
    ),
    (
        "HTTP/1.0 without Host closes by default",
        b"GET / HTTP/1.0\r\n\r\n",
        "GET / 1.0 empty close | end",
    ),
    (
        "HTTP/1.0 keep-alive",
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        "GET / 1.0 empty ka | end",
    ),
    (
        "HTTP/1.0 keep-alive in a list on a second line",
        b"GET / HTTP/1.0\r\nConnection: foo\r\nConnection: bar ,keep-alive\r\n\r\n",
        "GET / 1.0 empty ka | end",
    ),
    (
        "HTTP/1.0 close wins over keep-alive",
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
        "GET / 1.0 empty close | end",
    ),
    (
        "HTTP/1.1 Connection: close",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "GET / 1.1 empty close | end",
    ),
    (
        "HTTP/1.1 close in a list over several lines, any case",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nCONNECTION: te,  CLOSE \r\n\r\n",
        "GET / 1.1 empty close | end",
    ),
    (
        "HTTP/1.1 other Connection options keep alive",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, closed, upgrade\r\n\r\n",
        "GET / 1.1 empty ka | end",
    ),
    (
        "Expect: 100-continue",
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx",
        "POST / 1.1 len1 ka 100c | data:x | end",
    ),
    (
        "Expect: 100-continue ignored on HTTP/1.0",
        b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        "POST / 1.0 len1 close | data:x | end",
    ),
    (
        "other expectation",
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n",
        "GET / 1.1 empty ka expect? | end",
    ),
    (
        "OPTIONS *",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "OPTIONS * 1.1 empty ka | end",
    ),
    (
        "absolute-form target with query, Host with port",
        b"GET http://a.example:8080/p?q=1&r=%20 HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
        "GET http://a.example:8080/p?q=1&r=%20 1.1 empty ka | end",
    ),
    (
        "IPv6 Host and empty Host",
        b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\nGET / HTTP/1.1\r\nHost:\r\n\r\n",
        "GET / 1.1 empty ka | end | GET / 1.1 empty ka | end",
    ),
    (
        "custom method",
        b"PURGE-ALL! /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "PURGE-ALL! /x 1.1 empty ka | end",
    ),
    (
        "obs-text and HTAB in header values",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xe9 \tb\xff\r\n\r\n",
        "GET / 1.1 empty ka | end",
    ),
    (
        "UTF-8 in the target",
        "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes(),
        "GET /caf\u{e9} 1.1 empty ka | end",
    ),
];

#[test]
fn valid_requests() {
    for &(name, input, expected) in VALID {
        let outcome = decode_all_ways(input, Limits::default());
        assert_eq!(outcome.end, Ok(()), "{name}");
        assert_eq!(render(&outcome.events), expected, "{name}");
    }
}

/// Invalid inputs: (name, input, error, status). Events before the error are checked by
/// the whole-vs-bytewise comparison only.
const INVALID: &[(&str, &[u8], RequestError, u16)] = &[
    // Request line.
    ("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("space before method", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("HTTP/0.9 request line", b"GET /\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("bad method char", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("space after version", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("three-digit version", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("garbage version", b"GET / HTTP/x.y\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("DEL in target", b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("NUL in target", b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("invalid UTF-8 in target", b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("TLS hello on a plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", RequestError::InvalidRequestLine, 400),
    ("too many empty lines", b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidRequestLine, 400),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", RequestError::UnsupportedVersion, 505),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", RequestError::UnsupportedVersion, 505),
    ("HTTP/0.9 line", b"GET / HTTP/0.9\r\n\r\n", RequestError::UnsupportedVersion, 505),
    // Line endings.
    ("bare LF after request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", RequestError::InvalidLineEnding, 400),
    ("bare LF after field", b"GET / HTTP/1.1\r\nHost: a\n\r\n", RequestError::InvalidLineEnding, 400),
    ("bare LF ending the head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", RequestError::InvalidLineEnding, 400),
    ("bare CR in request line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", RequestError::InvalidLineEnding, 400),
    ("bare CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", RequestError::InvalidLineEnding, 400),
    ("leading bare LF", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidLineEnding, 400),
    ("leading bare CR", b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidLineEnding, 400),
    // Field names and values.
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", RequestError::InvalidHeaderName, 400),
    ("space in name", b"GET / HTTP/1.1\r\nHost: a\r\nX Y: b\r\n\r\n", RequestError::InvalidHeaderName, 400),
    ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", RequestError::InvalidHeaderName, 400),
    ("separator in name", b"GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", RequestError::InvalidHeaderName, 400),
    ("no colon", b"GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", RequestError::InvalidHeaderName, 400),
    ("whitespace before first field", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", RequestError::InvalidHeaderName, 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n  c\r\n\r\n", RequestError::ObsFold, 400),
    ("obs-fold with tab", b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", RequestError::ObsFold, 400),
    ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", RequestError::InvalidHeaderValue, 400),
    ("CTL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", RequestError::InvalidHeaderValue, 400),
    ("DEL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", RequestError::InvalidHeaderValue, 400),
    ("ESC in a long value", b"GET / HTTP/1.1\r\nHost: a\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x1b\r\n\r\n", RequestError::InvalidHeaderValue, 400),
    ("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", RequestError::InvalidHeaderValue, 400),
    ("Host with a path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", RequestError::InvalidHeaderValue, 400),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", RequestError::InvalidHeaderValue, 400),
    // Host.
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", RequestError::MissingHost, 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", RequestError::MissingHost, 400),
    ("two identical Hosts on HTTP/1.0", b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", RequestError::MissingHost, 400),
    // Content-Length.
    ("CL with sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", RequestError::InvalidContentLength, 400),
    ("CL negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", RequestError::InvalidContentLength, 400),
    ("CL with inner space", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", RequestError::InvalidContentLength, 400),
    ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\nx", RequestError::InvalidContentLength, 400),
    ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", RequestError::InvalidContentLength, 400),
    ("CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", RequestError::InvalidContentLength, 400),
    ("CL overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", RequestError::InvalidContentLength, 400),
    ("CL differing", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", RequestError::InvalidContentLength, 400),
    ("CL too large", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1073741825\r\n\r\n", RequestError::BodyTooLarge, 413),
    // Transfer-Encoding.
    ("CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", RequestError::ContentLengthWithTransferEncoding, 400),
    ("TE and CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", RequestError::ContentLengthWithTransferEncoding, 400),
    ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", RequestError::TransferEncodingOnHttp10, 400),
    ("chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("gzip only", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("unknown only", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("chunked twice over two lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("chunked then gzip on two lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("empty TE", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("TE of commas", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , ,\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("chunked with parameter", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("chunked misspelt", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunke\r\n\r\n", RequestError::ChunkedNotFinal, 400),
    ("gzip before chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", RequestError::UnknownTransferCoding, 501),
    ("gzip then chunked on two lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", RequestError::UnknownTransferCoding, 501),
    ("unknown before chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n", RequestError::UnknownTransferCoding, 501),
    ("identity before chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n", RequestError::UnknownTransferCoding, 501),
    // Chunked bodies.
    ("chunk data not followed by CRLF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk data followed by bare LF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk data followed by CR and garbage", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\rX0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk size bare LF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk size not hex", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nx\r\n", RequestError::InvalidChunk, 400),
    ("chunk size empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk size leading space", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk size trailing space", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk size with sign", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk size 0x", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk size garbage after digits", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5g\r\nhello\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk size 17 digits", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000001\r\nx\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("NUL in chunk extension", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a\x00\r\nx\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("bare CR in chunk extension", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a\rb\r\nx\r\n0\r\n\r\n", RequestError::InvalidChunk, 400),
    ("bare LF in trailer", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\n", RequestError::InvalidChunk, 400),
    ("bare LF ending trailers", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n", RequestError::InvalidChunk, 400),
    ("obs-fold in trailer", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n", RequestError::InvalidChunk, 400),
    ("bad trailer name", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX Y: a\r\n\r\n", RequestError::InvalidChunk, 400),
    ("NUL in trailer value", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\x00\r\n\r\n", RequestError::InvalidChunk, 400),
    ("chunk too large for u64 budget", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n", RequestError::BodyTooLarge, 413),
    ("chunk larger than the body limit", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n40000001\r\n", RequestError::BodyTooLarge, 413),
    // Incomplete at EOF.
    ("EOF in request line", b"GET / HTT", RequestError::IncompleteMessage, 400),
    ("EOF in fields", b"GET / HTTP/1.1\r\nHost: a\r\n", RequestError::IncompleteMessage, 400),
    ("EOF after a lone CR", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r", RequestError::IncompleteMessage, 400),
    ("EOF in CL body", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel", RequestError::IncompleteMessage, 400),
    ("EOF in chunk data", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", RequestError::IncompleteMessage, 400),
    ("EOF before last chunk", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", RequestError::IncompleteMessage, 400),
    ("EOF in trailers", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n", RequestError::IncompleteMessage, 400),
    // An error after a good request still yields the good request's events first.
    ("bad second request", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", RequestError::MissingHost, 400),
];

#[test]
fn invalid_requests() {
    for &(name, input, error, status) in INVALID {
        let outcome = decode_all_ways(input, Limits::default());
        assert_eq!(
            outcome.end,
            Err(error),
            "{name}: {}",
            render(&outcome.events)
        );
        assert_eq!(error.status(), status, "{name}");
    }
}

#[test]
fn bad_second_request_yields_first() {
    let outcome = decode_all_ways(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        Limits::default(),
    );
    assert_eq!(render(&outcome.events), "GET /1 1.1 empty ka | end");
}

/// Cases with small limits: (name, input, outcome), `Ok(events)` or `Err(error)`.
#[test]
fn limits() {
    let cases: &[(&str, &[u8], Result<&str, RequestError>)] = &[
        // 64-byte head limit.
        (
            "head of exactly the limit",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 01234567890123456789012345678901\r\n\r\n",
            Ok("GET / 1.1 empty ka | end"),
        ),
        (
            "head one byte over the limit",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 012345678901234567890123456789012\r\n\r\n",
            Err(RequestError::HeaderTooLarge),
        ),
        (
            "head over the limit and never ending",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789012345678901234567890123456789",
            Err(RequestError::HeaderTooLarge),
        ),
        (
            "method over the head limit",
            &[b'A'; 65],
            Err(RequestError::HeaderTooLarge),
        ),
        // 16-byte target limit.
        (
            "target of exactly the limit",
            b"GET /234567890123456 HTTP/1.1\r\nHost: a\r\n\r\n",
            Ok("GET /234567890123456 1.1 empty ka | end"),
        ),
        (
            "target one byte over the limit",
            b"GET /2345678901234567 HTTP/1.1\r\nHost: a\r\n\r\n",
            Err(RequestError::UriTooLong),
        ),
        (
            "target over the limit, request line incomplete",
            b"GET /2345678901234567",
            Err(RequestError::UriTooLong),
        ),
        // 3 fields.
        (
            "three fields",
            b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n",
            Ok("GET / 1.1 empty ka | end"),
        ),
        (
            "four fields",
            b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            Err(RequestError::TooManyHeaders),
        ),
        // 10-byte body.
        (
            "CL at the body limit",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789",
            Ok("POST / 1.1 len10 ka | data:0123456789 | end"),
        ),
        (
            "CL over the body limit",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
            Err(RequestError::BodyTooLarge),
        ),
        (
            "chunked at the body limit",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n4\r\n6789\r\n0\r\n\r\n",
            Ok("POST / 1.1 chunked ka | data:0123456789 | end"),
        ),
        (
            "chunked over the body limit in the second chunk",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n",
            Err(RequestError::BodyTooLarge),
        ),
        // Trailers: at most 3 fields and 64 bytes.
        (
            "three trailers",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            Ok("POST / 1.1 chunked ka | end"),
        ),
        (
            "four trailers",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
            Err(RequestError::TooManyHeaders),
        ),
        (
            "trailers too large",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 01234567890123456789012345678901234567890123456789012345678\r\n\r\n",
            Err(RequestError::HeaderTooLarge),
        ),
    ];
    for &(name, input, expected) in cases {
        let outcome = decode_all_ways(input, small_limits());
        match expected {
            Ok(events) => {
                assert_eq!(outcome.end, Ok(()), "{name}");
                assert_eq!(render(&outcome.events), events, "{name}");
            }
            Err(e) => assert_eq!(outcome.end, Err(e), "{name}"),
        }
    }
}

#[test]
fn megabyte_url_is_414_not_431() {
    let mut input = b"GET /".to_vec();
    input.resize(1024 * 1024, b'a');
    for tail in [&b""[..], b" HTTP/1.1\r\nHost: a\r\n\r\n"] {
        let mut input = input.clone();
        input.extend_from_slice(tail);
        let whole = feed([&input[..]], Limits::default());
        assert_eq!(whole.end, Err(RequestError::UriTooLong));
        let pieces = feed(input.chunks(1000), Limits::default());
        assert_eq!(pieces.end, Err(RequestError::UriTooLong));
    }
}

#[test]
fn huge_field_is_431() {
    let mut input = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    input.resize(300 * 1024, b'a');
    let whole = feed([&input[..]], Limits::default());
    assert_eq!(whole.end, Err(RequestError::HeaderTooLarge));
    let pieces = feed(input.chunks(997), Limits::default());
    assert_eq!(pieces.end, Err(RequestError::HeaderTooLarge));
}

#[test]
fn long_chunk_extensions_are_refused() {
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    // One line longer than MAX_CHUNK_SIZE_LINE.
    let mut input = head.to_vec();
    input.extend_from_slice(b"1;");
    input.resize(input.len() + unyoke_http::MAX_CHUNK_SIZE_LINE, b'x');
    input.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert_eq!(
        feed([&input[..]], Limits::default()).end,
        Err(RequestError::InvalidChunk)
    );
    // Many lines whose extensions add up to more than MAX_CHUNK_EXTENSIONS.
    let mut input = head.to_vec();
    let line = format!("1;{}\r\nx\r\n", "e".repeat(1000));
    for _ in 0..(unyoke_http::MAX_CHUNK_EXTENSIONS / 1000 + 1) {
        input.extend_from_slice(line.as_bytes());
    }
    input.extend_from_slice(b"0\r\n\r\n");
    let outcome = feed([&input[..]], Limits::default());
    assert_eq!(outcome.end, Err(RequestError::InvalidChunk));
    assert_eq!(feed(input.chunks(1), Limits::default()), outcome);
}

#[test]
fn many_fields_above_the_stack_slots() {
    let limits = Limits {
        max_headers: 150,
        ..Limits::default()
    };
    let mut input = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..149 {
        input.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    input.extend_from_slice(b"\r\n");
    let outcome = feed([&input[..]], limits);
    assert_eq!(outcome.end, Ok(()));
    let Ev::Head(h) = &outcome.events[0] else {
        panic!("no head")
    };
    assert_eq!(h.headers.len(), 150);
    // One more is too many.
    let mut input = input[..input.len() - 2].to_vec();
    input.extend_from_slice(b"Y: 1\r\n\r\n");
    assert_eq!(
        feed([&input[..]], limits).end,
        Err(RequestError::TooManyHeaders)
    );
    // With the default 100, 101 fields are too many.
    assert_eq!(
        feed([&input[..]], Limits::default()).end,
        Err(RequestError::TooManyHeaders)
    );
}

#[test]
fn head_accessors() {
    let mut buf = BytesMut::from(
        &b"POST /p?q HTTP/1.1\r\nHost: h\r\nX-A:  one two \t\r\nx-a: 2\r\nEmpty:\r\nContent-Length: 1\r\n\r\nz"[..],
    );
    let mut d = RequestDecoder::new(Limits::default());
    let Some(Event::Head(head)) = d.decode(&mut buf).unwrap() else {
        panic!("no head")
    };
    assert_eq!(head.method(), b"POST");
    assert_eq!(head.target(), b"/p?q");
    assert!(!head.is_head());
    assert_eq!(head.header(b"x-a"), Some(&b"one two"[..]));
    assert_eq!(head.header(b"EMPTY"), Some(&b""[..]));
    assert_eq!(head.header(b"missing"), None);
    let headers: Vec<_> = head.headers().collect();
    assert_eq!(
        headers,
        vec![
            (&b"Host"[..], &b"h"[..]),
            (b"X-A", b"one two"),
            (b"x-a", b"2"),
            (b"Empty", b""),
            (b"Content-Length", b"1"),
        ]
    );
    assert!(head.raw().starts_with(b"POST /p?q HTTP/1.1\r\n"));
    assert!(head.raw().ends_with(b"\r\n\r\n"));
    assert_eq!(&buf[..], b"z", "the body stays in the buffer");
}

#[test]
fn data_is_zero_copy() {
    let input = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody";
    let mut buf = BytesMut::from(&input[..]);
    let base = buf.as_ptr() as usize;
    let mut d = RequestDecoder::new(Limits::default());
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Head(_)))));
    let Ok(Some(Event::Data(data))) = d.decode(&mut buf) else {
        panic!("no data")
    };
    assert_eq!(data, Bytes::from_static(b"body"));
    assert_eq!(data.as_ptr() as usize, base + input.len() - 4);
}

#[test]
fn state_queries() {
    let mut d = RequestDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    assert!(d.is_idle() && !d.in_body());
    assert!(matches!(d.decode_eof(&mut buf), Ok(None)));

    buf.extend_from_slice(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n");
    assert!(d.decode(&mut buf).unwrap().is_none());
    assert!(!d.is_idle() && !d.in_body());
    buf.extend_from_slice(b"Content-Length: 3\r\n\r\n");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Head(h))) if h.expect_continue));
    assert!(d.in_body() && !d.is_idle());
    assert!(d.expecting_continue());
    assert!(d.decode(&mut buf).unwrap().is_none());
    buf.extend_from_slice(b"ab");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Data(_)))));
    assert!(!d.expecting_continue());
    buf.extend_from_slice(b"c");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Data(_)))));
    assert!(d.in_body());
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::End))));
    assert!(d.is_idle() && !d.in_body());
    assert!(d.decode(&mut buf).unwrap().is_none());

    // An empty body still reports in_body until End.
    buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Head(_)))));
    assert!(d.in_body() && !d.expecting_continue());
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::End))));

    // Chunked with 100-continue.
    buf.extend_from_slice(
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Head(_)))));
    assert!(d.expecting_continue());
    buf.extend_from_slice(b"1\r\n");
    assert!(d.decode(&mut buf).unwrap().is_none());
    assert!(d.expecting_continue());
    buf.extend_from_slice(b"x\r\n0\r\n\r\n");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Data(_)))));
    assert!(!d.expecting_continue());
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::End))));
    assert!(d.is_idle());
    assert_eq!(d.decode_eof(&mut buf).unwrap().map(|_| ()), None);
}

#[test]
fn error_is_sticky() {
    let mut d = RequestDecoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    assert_eq!(
        d.decode(&mut buf).map(|_| ()),
        Err(RequestError::MissingHost)
    );
    buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        d.decode(&mut buf).map(|_| ()),
        Err(RequestError::MissingHost)
    );
    assert_eq!(
        d.decode_eof(&mut buf).map(|_| ()),
        Err(RequestError::MissingHost)
    );
}

#[test]
fn errors_know_their_status() {
    use RequestError::*;
    for (e, status, reason) in [
        (InvalidRequestLine, 400, "Bad Request"),
        (UnknownTransferCoding, 501, "Not Implemented"),
        (HeaderTooLarge, 431, "Request Header Fields Too Large"),
        (TooManyHeaders, 431, "Request Header Fields Too Large"),
        (UriTooLong, 414, "URI Too Long"),
        (BodyTooLarge, 413, "Content Too Large"),
        (UnsupportedVersion, 505, "HTTP Version Not Supported"),
    ] {
        assert_eq!((e.status(), e.reason()), (status, reason));
        assert!(e.to_string().starts_with(&status.to_string()));
    }
}

/// Every byte value in a field value, at positions that reach httparse's scalar, SWAR
/// and SIMD paths: only HTAB, SP, VCHAR and obs-text are accepted.
#[test]
fn every_byte_in_a_field_value() {
    for b in 0..=255u8 {
        for pad in [0usize, 1, 7, 8, 15, 31, 40] {
            let mut input = b"GET / HTTP/1.1\r\nHost: a\r\nX: v".to_vec();
            input.extend(std::iter::repeat_n(b'a', pad));
            input.push(b);
            input.extend_from_slice(b"z\r\n\r\n");
            let outcome = feed([&input[..]], Limits::default());
            let allowed = b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80;
            if allowed {
                assert_eq!(outcome.end, Ok(()), "byte {b:#04x} pad {pad}");
            } else {
                let expected = if b == b'\r' || b == b'\n' {
                    RequestError::InvalidLineEnding
                } else {
                    RequestError::InvalidHeaderValue
                };
                assert_eq!(outcome.end, Err(expected), "byte {b:#04x} pad {pad}");
            }
        }
    }
}

/// Body bytes read past the decoder (straight into the application's memory) advance
/// it as if decoded: `End`, then the next pipelined request, follow.
#[test]
fn passthrough_reads_advance_a_length_body() {
    let mut d = RequestDecoder::new(Limits::default());
    let mut buf =
        BytesMut::from(&b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"[..]);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Head(_)))));
    // Bytes still buffered come first.
    assert_eq!(d.passthrough_room(buf.len()), 0);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Data(b))) if &b[..] == b"abc"));
    assert_eq!(d.passthrough_room(0), 7);
    d.passed_through(4);
    assert_eq!(d.passthrough_room(0), 3);
    d.passed_through(3);
    assert_eq!(d.passthrough_room(0), 0);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::End))));
    assert!(d.is_idle());
    buf.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Head(h))) if h.target() == b"/next"));
}

/// A chunked body has framing to decode: nothing may pass it.
#[test]
fn passthrough_has_no_room_in_a_chunked_body() {
    let mut d = RequestDecoder::new(Limits::default());
    let mut buf =
        BytesMut::from(&b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..]);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Head(_)))));
    assert_eq!(d.passthrough_room(0), 0);
    d.passed_through(5);
    buf.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Data(b))) if &b[..] == b"abc"));
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::End))));
}
