//! The request decoder must never panic, and must produce the same events whether the
//! input arrives whole, in pieces, or one byte at a time; each request is parsed or
//! refused with a status, never both (see `common::check_invariants`).
//!
//! Input layout: byte 0 picks the limits (default or small, to reach every limit),
//! bytes 1..4 seed the piece sizes, the rest is the byte stream.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (seeds, input) = rest.split_at(rest.len().min(3));
    common::run_three_ways(input, seeds, common::limits_for(mode));
});
