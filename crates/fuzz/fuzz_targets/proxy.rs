//! `parse_proxy_header` on arbitrary bytes: never panics, never claims more bytes than it
//! was given, and is consistent as bytes arrive. For every prefix of the input the answer
//! is "need more" until it becomes either the same header (same info, same length, from
//! exactly the header's bytes on) or an error that more bytes never undo.

#![no_main]

use libfuzzer_sys::fuzz_target;
use unyoke_http::{parse_proxy_header, ProxyInfo};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(4096)];
    let full = parse_proxy_header(data);
    if let Ok(Some((info, n))) = full {
        assert!(n > 0 && n <= data.len(), "consumed {n} of {}", data.len());
        if let ProxyInfo::Forwarded {
            source,
            destination,
        } = info
        {
            assert_eq!(source.is_ipv4(), destination.is_ipv4(), "mixed families");
        }
    }
    let mut errored = false;
    for k in 0..=data.len() {
        let part = parse_proxy_header(&data[..k]);
        match part {
            Ok(None) => {
                assert!(!errored, "an error undone by more bytes at {k}");
                if let Ok(Some((_, n))) = full {
                    assert!(k < n, "need more after the header was complete at {k}");
                }
            }
            Ok(Some((info, n))) => {
                assert!(!errored, "an error undone by more bytes at {k}");
                assert_eq!(full, Ok(Some((info, n))), "prefix {k} parsed differently");
                assert!(n <= k);
            }
            Err(e) => {
                errored = true;
                assert_eq!(full, Err(e), "prefix {k} failed differently");
            }
        }
    }
});
