//! A chunked request body after a fixed head. Beyond the properties every decoder run
//! keeps (see `common`): when the decoder accepts the body, a lenient reference decoder
//! (size digits, skip to LF, data, CRLF; trailers skipped line by line) reads the same
//! data and ends at the same byte, so the strict decoder never frames a body differently
//! from the plain reading of the chunk sizes (the root of chunked smuggling).
//!
//! Input layout: byte 0 picks the limits, bytes 1..4 seed the piece sizes, the rest is
//! the body (and whatever follows it on the connection).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

use common::Ev;

const HEAD: &[u8] = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Lenient reading of a chunked body: (data, bytes consumed), or None if it runs out.
fn reference(body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let digits = body[at..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let size =
            u64::from_str_radix(std::str::from_utf8(&body[at..at + digits]).ok()?, 16).ok()?;
        at += body[at..].iter().position(|&b| b == b'\n')? + 1;
        if size == 0 {
            // trailer lines until an empty one
            loop {
                let lf = body[at..].iter().position(|&b| b == b'\n')?;
                let empty = lf == 1 && body[at] == b'\r';
                at += lf + 1;
                if empty {
                    return Some((data, at));
                }
            }
        }
        let size = usize::try_from(size).ok()?;
        let end = at.checked_add(size)?;
        data.extend_from_slice(body.get(at..end)?);
        at = end + 2;
        if body.get(end..at)? != b"\r\n" {
            return None;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (seeds, body) = rest.split_at(rest.len().min(3));
    let limits = common::limits_for(mode | 0x10); // at least 64+ bytes of head fit
    let limits = unyoke_http::Limits {
        max_request_header_size: limits.max_request_header_size.max(HEAD.len() + 2),
        url_length_limit: limits.url_length_limit.max(2),
        max_headers: limits.max_headers.max(2),
        ..limits
    };
    let mut input = HEAD.to_vec();
    input.extend_from_slice(body);
    let whole = common::run_three_ways(&input, seeds, limits);

    assert!(
        matches!(whole.events.first(), Some(Ev::Head { .. })),
        "the fixed head was not parsed: {whole:?}"
    );
    if common::completed(&whole) == 0 {
        return;
    }
    // The first request was accepted: its body must be what the plain reading says.
    let decoded: Vec<u8> = whole
        .events
        .iter()
        .skip(1)
        .take_while(|e| **e != Ev::End)
        .flat_map(|e| match e {
            Ev::Data(d) => d.clone(),
            _ => panic!("unexpected event inside the body: {e:?}"),
        })
        .collect();
    let (expected, consumed) =
        reference(body).expect("the decoder accepted a body the reference cannot read");
    assert_eq!(decoded, expected, "decoded body differs from the reference");
    // Exactly the reference's bytes make a whole, clean request.
    input.truncate(HEAD.len() + consumed);
    let alone = common::feed(std::iter::once(&input[..]), limits);
    assert_eq!(alone.end, Ok(()), "body framing differs from the reference");
    assert_eq!(common::completed(&alone), 1);
});
