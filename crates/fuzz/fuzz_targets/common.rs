//! Shared by the decoder targets: feeding a byte stream through `RequestDecoder` as a
//! connection would, recording the events in comparable form, and the properties every
//! run must keep whatever the bytes were.

#![allow(dead_code)] // each target uses a different part of this module

use bytes::BytesMut;
use unyoke_http::{BodyKind, Event, Limits, RequestDecoder, RequestError, Version};

/// An event in comparable form; consecutive Data events are merged (how a body is cut
/// into Data events depends on how the bytes arrived, its content must not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
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

/// Everything the decoder said about one byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Ev>,
    /// `Err` if the decoder refused the stream (from `decode` or `decode_eof`).
    pub end: Result<(), RequestError>,
    /// Bytes still in the buffer at a clean end. After a refusal it is not recorded: the
    /// connection closes, and how much of the rest had arrived depends on the pieces.
    pub unconsumed: usize,
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

/// Feeds `pieces` one after the other, decoding everything decodable after each (as the
/// engine does after every read), then signals EOF.
pub fn feed<'a>(pieces: impl Iterator<Item = &'a [u8]>, limits: Limits) -> Outcome {
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
                    assert_eq!(
                        decoder.decode_eof(&mut buf).err(),
                        Some(e),
                        "error not sticky at EOF"
                    );
                    return Outcome {
                        events,
                        end: Err(e),
                        unconsumed: 0,
                    };
                }
            }
        }
    }
    loop {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(event)) => push(&mut events, event),
            Ok(None) => {
                assert!(decoder.is_idle(), "clean EOF while not idle");
                return Outcome {
                    events,
                    end: Ok(()),
                    unconsumed: buf.len(),
                };
            }
            Err(e) => {
                return Outcome {
                    events,
                    end: Err(e),
                    unconsumed: 0,
                }
            }
        }
    }
}

/// Cuts `input` into pieces whose sizes cycle through `seeds` (each seed byte + 1).
pub fn pieces<'a>(input: &'a [u8], seeds: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let size = seeds
            .get(i % seeds.len().max(1))
            .map_or(7, |&s| usize::from(s) + 1);
        let end = (at + size).min(input.len());
        out.push(&input[at..end]);
        at = end;
        i += 1;
    }
    out
}

/// The properties of one outcome:
/// - each request is either parsed (Head, Data*, End) or rejected with a 4xx/5xx status,
///   never both: a refusal comes after the last End and nothing follows it, and a clean
///   end means every Head got its End;
/// - a Length body delivers exactly its length, a body never exceeds the limit, heads
///   and ends alternate, the target respects its limit.
pub fn check_invariants(outcome: &Outcome, limits: &Limits) {
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
                if let Some(Some(n)) = expected_len {
                    assert!(got <= n, "Length body over its length");
                }
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
    match outcome.end {
        Ok(()) => {
            assert!(expected_len.is_none(), "clean end inside a message");
            assert_eq!(outcome.unconsumed, 0, "clean end with bytes left over");
        }
        Err(e) => {
            let status = e.status();
            assert!(
                (400..600).contains(&status),
                "refusal without an error status"
            );
            assert!(!e.reason().is_empty() && !e.detail().is_empty());
        }
    }
}

/// Number of requests parsed to their End.
pub fn completed(outcome: &Outcome) -> usize {
    outcome.events.iter().filter(|e| **e == Ev::End).count()
}

/// Small limits picked by `mode`, to reach every limit; even modes use the defaults.
pub fn limits_for(mode: u8) -> Limits {
    if mode & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_request_header_size: 64 + usize::from(mode >> 1),
            url_length_limit: 8 + usize::from(mode >> 4),
            max_request_body_size: 16 + u64::from(mode),
            max_headers: 1 + usize::from(mode >> 5),
        }
    }
}

/// Runs `input` whole, one byte at a time and in seeded pieces; checks the invariants
/// and that all three agree. Returns the whole-input outcome.
pub fn run_three_ways(input: &[u8], seeds: &[u8], limits: Limits) -> Outcome {
    let whole = feed(std::iter::once(input), limits);
    check_invariants(&whole, &limits);
    let bytewise = feed(input.chunks(1), limits);
    assert_eq!(whole, bytewise, "whole vs one byte at a time");
    let split = feed(pieces(input, seeds).into_iter(), limits);
    assert_eq!(whole, split, "whole vs pieces");
    whole
}
