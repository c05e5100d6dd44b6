//! The request decoder must never panic, and must produce the same events whether the
//! input arrives whole, in pieces, or one byte at a time.
//!
//! Input layout: byte 0 picks the limits (default or small, to reach every limit),
//! bytes 1..4 seed the piece sizes, the rest is the byte stream.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use unyoke_http::{BodyKind, Event, Limits, RequestDecoder, RequestError, Version};

/// An event in comparable form; consecutive Data events are merged.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Head {
        method: Vec<u8>,
        target: Vec<u8>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        version: Version,
        body: BodyKind,
        keep_alive: bool,
        expect_continue: bool,
    },
    Data(Vec<u8>),
    End,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    end: Result<(), RequestError>,
}

fn push(events: &mut Vec<Ev>, event: Event) {
    match event {
        Event::Head(h) => {
            // Accessors must stay inside the head's bytes.
            assert!(h.target().len() <= h.raw().len());
            events.push(Ev::Head {
                method: h.method().to_vec(),
                target: h.target().to_vec(),
                headers: h.headers().map(|(n, v)| (n.to_vec(), v.to_vec())).collect(),
                version: h.version,
                body: h.body,
                keep_alive: h.keep_alive,
                expect_continue: h.expect_continue,
            })
        }
        Event::Data(d) => {
            assert!(!d.is_empty(), "empty Data event");
            match events.last_mut() {
                Some(Ev::Data(prev)) => prev.extend_from_slice(&d),
                _ => events.push(Ev::Data(d.to_vec())),
            }
        }
        Event::End => events.push(Ev::End),
    }
}

fn feed<'a>(pieces: impl Iterator<Item = &'a [u8]>, limits: Limits) -> Outcome {
    let mut decoder = RequestDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => push(&mut events, event),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(decoder.decode(&mut buf).err(), Some(e), "error not sticky");
                    return Outcome {
                        events,
                        end: Err(e),
                    };
                }
            }
        }
    }
    loop {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(event)) => push(&mut events, event),
            Ok(None) => {
                return Outcome {
                    events,
                    end: Ok(()),
                }
            }
            Err(e) => {
                return Outcome {
                    events,
                    end: Err(e),
                }
            }
        }
    }
}

/// Checks what the events promise: a Length body delivers exactly its length, heads and
/// ends alternate, limits hold.
fn check_invariants(outcome: &Outcome, limits: &Limits) {
    let mut expected_len: Option<Option<u64>> = None; // Some(body) while in a message
    let mut got = 0u64;
    for ev in &outcome.events {
        match ev {
            Ev::Head { target, body, .. } => {
                assert!(expected_len.is_none(), "head inside a message");
                assert!(target.len() <= limits.url_length_limit);
                expected_len = Some(match body {
                    BodyKind::Empty => Some(0),
                    BodyKind::Length(n) => {
                        assert!(*n > 0 && *n <= limits.max_request_body_size);
                        Some(*n)
                    }
                    BodyKind::Chunked => None,
                });
                got = 0;
            }
            Ev::Data(d) => {
                assert!(expected_len.is_some(), "data outside a message");
                got += d.len() as u64;
                assert!(got <= limits.max_request_body_size);
            }
            Ev::End => {
                let Some(expected) = expected_len.take() else {
                    panic!("end outside a message")
                };
                if let Some(n) = expected {
                    assert_eq!(got, n, "Length body delivered a different length");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (seeds, input) = rest.split_at(rest.len().min(3));
    let limits = if mode & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_request_header_size: 64 + usize::from(mode >> 1),
            url_length_limit: 8 + usize::from(mode >> 4),
            max_request_body_size: 16 + u64::from(mode),
            max_headers: 1 + usize::from(mode >> 5),
        }
    };

    let whole = feed(std::iter::once(input), limits);
    check_invariants(&whole, &limits);

    let bytewise = feed(input.chunks(1), limits);
    assert_eq!(whole, bytewise, "whole vs one byte at a time");

    // Pieces of sizes cycling through the seeds.
    let mut pieces = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let size = seeds
            .get(i % seeds.len().max(1))
            .map_or(7, |&s| usize::from(s) + 1);
        let end = (at + size).min(input.len());
        pieces.push(&input[at..end]);
        at = end;
        i += 1;
    }
    let split = feed(pieces.into_iter(), limits);
    assert_eq!(whole, split, "whole vs pieces");
});
