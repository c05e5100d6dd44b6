//! A whole connection: a pipeline of requests built from the input (GET, HTTP/1.0, bodies
//! framed by Content-Length or chunked with extensions and trailers, empty lines between
//! requests), optionally corrupted with raw bytes or flipped bits, then fed through one
//! decoder whole, one byte at a time and in pieces split at input-chosen points, with
//! `decode_eof` at the end.
//!
//! Properties, beyond "no panic":
//! - every run keeps `common::check_invariants` (parsed or refused with a status, never
//!   both; nothing after a refusal, so a pipelined request after a rejected one is never
//!   decoded);
//! - the three ways of feeding give identical events and the identical error;
//! - an uncorrupted pipeline under the default limits is decoded exactly: as many
//!   requests as were written, each with its method, target and body, and a clean end
//!   (no desynchronisation between what was framed and what was read).
//!
//! Input layout: byte 0 picks the limits, bytes 1..4 seed the piece sizes, the rest is
//! a script of operations.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

use common::Ev;

struct Script<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.at)?;
        self.at += 1;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let end = (self.at + n).min(self.data.len());
        let out = &self.data[self.at..end];
        self.at = end;
        out
    }
}

/// What a well-formed request is expected to decode to.
struct Expected {
    method: &'static [u8],
    target: Vec<u8>,
    body: Vec<u8>,
}

fn target(script: &mut Script) -> Vec<u8> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&";
    let len = usize::from(script.byte().unwrap_or(0) % 24);
    let mut t = vec![b'/'];
    t.extend(
        script
            .bytes(len)
            .iter()
            .map(|b| CHARS[usize::from(*b) % CHARS.len()]),
    );
    t
}

fn extra_headers(out: &mut Vec<u8>, flags: u8) {
    if flags & 0x10 != 0 {
        out.extend_from_slice(b"X-Extra: \t some value\t\r\n");
    }
    if flags & 0x20 != 0 {
        out.extend_from_slice(b"accept: */*\r\n");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (seeds, script) = rest.split_at(rest.len().min(3));
    let limits = common::limits_for(mode);
    let mut script = Script {
        data: script,
        at: 0,
    };
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut corrupted = false;
    let mut blank_line_pending = false;

    while let Some(op) = script.byte() {
        let flags = op & 0xf0;
        if blank_line_pending && op % 8 <= 4 {
            stream.extend_from_slice(b"\r\n");
            blank_line_pending = false;
        }
        match op % 8 {
            0 => {
                let t = target(&mut script);
                stream.extend_from_slice(b"GET ");
                stream.extend_from_slice(&t);
                stream.extend_from_slice(b" HTTP/1.1\r\nHost: example.test\r\n");
                extra_headers(&mut stream, flags);
                stream.extend_from_slice(b"\r\n");
                expected.push(Expected {
                    method: b"GET",
                    target: t,
                    body: Vec::new(),
                });
            }
            1 => {
                let t = target(&mut script);
                stream.extend_from_slice(b"HEAD ");
                stream.extend_from_slice(&t);
                stream.extend_from_slice(b" HTTP/1.0\r\nConnection: keep-alive\r\n");
                extra_headers(&mut stream, flags);
                stream.extend_from_slice(b"\r\n");
                expected.push(Expected {
                    method: b"HEAD",
                    target: t,
                    body: Vec::new(),
                });
            }
            2 => {
                let t = target(&mut script);
                let n = usize::from(script.byte().unwrap_or(0) % 64);
                let body = script.bytes(n).to_vec();
                stream.extend_from_slice(b"POST ");
                stream.extend_from_slice(&t);
                stream.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\nContent-Length: ");
                stream.extend_from_slice(body.len().to_string().as_bytes());
                stream.extend_from_slice(b"\r\n");
                extra_headers(&mut stream, flags);
                stream.extend_from_slice(b"\r\n");
                stream.extend_from_slice(&body);
                expected.push(Expected {
                    method: b"POST",
                    target: t,
                    body,
                });
            }
            3 => {
                let t = target(&mut script);
                stream.extend_from_slice(b"PUT ");
                stream.extend_from_slice(&t);
                stream.extend_from_slice(b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n");
                extra_headers(&mut stream, flags);
                stream.extend_from_slice(b"\r\n");
                let chunks = script.byte().unwrap_or(0);
                let mut body = Vec::new();
                for _ in 0..chunks % 5 {
                    let spec = script.byte().unwrap_or(0);
                    let data = script.bytes(usize::from(spec % 32) + 1).to_vec();
                    if data.is_empty() {
                        break;
                    }
                    if spec & 0x20 != 0 {
                        stream.extend_from_slice(format!("{:X}", data.len()).as_bytes());
                    } else {
                        stream.extend_from_slice(format!("{:04x}", data.len()).as_bytes());
                    }
                    if spec & 0x40 != 0 {
                        stream.extend_from_slice(b";name=\"quoted value\"");
                    }
                    stream.extend_from_slice(b"\r\n");
                    stream.extend_from_slice(&data);
                    stream.extend_from_slice(b"\r\n");
                    body.extend_from_slice(&data);
                }
                stream.extend_from_slice(b"0\r\n");
                if chunks & 0x80 != 0 {
                    stream.extend_from_slice(b"X-Trailer: done\r\n");
                }
                stream.extend_from_slice(b"\r\n");
                expected.push(Expected {
                    method: b"PUT",
                    target: t,
                    body,
                });
            }
            4 => {
                let t = target(&mut script);
                stream.extend_from_slice(b"DELETE ");
                stream.extend_from_slice(&t);
                stream.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
                expected.push(Expected {
                    method: b"DELETE",
                    target: t,
                    body: Vec::new(),
                });
            }
            5 => blank_line_pending = true,
            6 => {
                let n = usize::from(script.byte().unwrap_or(0) % 32);
                stream.extend_from_slice(script.bytes(n));
                corrupted = true;
            }
            _ => {
                let at = usize::from(script.byte().unwrap_or(0))
                    | usize::from(script.byte().unwrap_or(0)) << 8;
                if !stream.is_empty() {
                    let len = stream.len();
                    stream[at % len] ^= 1 << (flags >> 4 & 7);
                    corrupted = true;
                }
            }
        }
    }

    let whole = common::run_three_ways(&stream, seeds, limits);

    if corrupted || limits != unyoke_http::Limits::default() {
        return;
    }
    assert_eq!(
        whole.end,
        Ok(()),
        "a well-formed pipeline was refused: {whole:?}"
    );
    let mut requests = Vec::new();
    let mut body = Vec::new();
    let mut head = None;
    for ev in whole.events {
        match ev {
            Ev::Head { method, target, .. } => head = Some((method, target)),
            Ev::Data(d) => body.extend_from_slice(&d),
            Ev::End => requests.push((head.take().unwrap(), std::mem::take(&mut body))),
        }
    }
    assert_eq!(requests.len(), expected.len(), "request count");
    for (((method, target), body), want) in requests.iter().zip(&expected) {
        assert_eq!(method.as_slice(), want.method);
        assert_eq!(target, &want.target);
        assert_eq!(body, &want.body);
    }
});
