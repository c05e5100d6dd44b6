//! Response-side helpers: framing plan, status line, field validity, chunk sizes, dates.

use unyoke_http::{
    chunk_header, classify_response_field, http_date, is_hop_by_hop, is_valid_header_name,
    is_valid_header_value, parse_content_length, parse_status, plan_response, write_header,
    BodyFraming, ResponseField, ResponseFraming, Version, LAST_CHUNK,
};

#[test]
fn http_dates() {
    for (secs, expected) in [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1_234_567_890, "Fri, 13 Feb 2009 23:31:30 GMT"),
        (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 GMT"),
        (4_107_542_399, "Sun, 28 Feb 2100 23:59:59 GMT"),
        (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        assert_eq!(
            std::str::from_utf8(&http_date(secs)),
            Ok(expected),
            "{secs}"
        );
    }
    // Out of range never panics.
    let _ = http_date(u64::MAX);
}

#[test]
fn chunk_headers() {
    assert_eq!(chunk_header(1).as_bytes(), b"1\r\n");
    assert_eq!(chunk_header(10).as_bytes(), b"a\r\n");
    assert_eq!(chunk_header(0x1f40).as_bytes(), b"1f40\r\n");
    assert_eq!(chunk_header(65536).as_bytes(), b"10000\r\n");
    assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
    // Round trip through httparse's chunk-size parser.
    for len in [
        1usize,
        2,
        15,
        16,
        17,
        255,
        256,
        4095,
        4096,
        1 << 20,
        usize::MAX >> 4,
    ] {
        let h = chunk_header(len);
        assert_eq!(
            httparse_size(h.as_bytes()),
            Some(len as u64),
            "{:?}",
            h.as_bytes()
        );
    }
}

fn httparse_size(line: &[u8]) -> Option<u64> {
    // The codec's own decoder is the consumer we care about.
    use bytes::BytesMut;
    use unyoke_http::{Event, Limits, RequestDecoder};
    let mut buf =
        BytesMut::from(&b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..]);
    buf.extend_from_slice(line);
    let mut d = RequestDecoder::new(Limits {
        max_request_body_size: u64::MAX,
        ..Limits::default()
    });
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Head(_)))));
    assert!(matches!(d.decode(&mut buf), Ok(None)));
    // The size line is consumed once parsed; feed one byte and see it as data.
    buf.extend_from_slice(b"x");
    match d.decode(&mut buf) {
        Ok(Some(Event::Data(_))) => {
            Some(u64::from_str_radix(std::str::from_utf8(&line[..line.len() - 2]).ok()?, 16).ok()?)
        }
        _ => None,
    }
}

#[test]
fn statuses() {
    for (status, expected) in [
        (&b"200 OK"[..], Some(200)),
        (b"404 Not Found", Some(404)),
        (b"100 Continue", Some(100)),
        (b"999 Whatever", Some(999)),
        (b"204 ", Some(204)),
        (b"200 \tOK tab", Some(200)),
        (b"200 D\xe9j\xe0 vu", Some(200)),
        (b"200", None),
        (b"200OK", None),
        (b"20 OK", None),
        (b"2000 OK", None),
        (b"099 Low", None),
        (b"000 Zero", None),
        (b" 200 OK", None),
        (b"2x0 OK", None),
        (b"200 OK\r\n", None),
        (b"200 O\x00K", None),
        (b"200 O\x7fK", None),
        (b"", None),
    ] {
        assert_eq!(parse_status(status), expected, "{status:?}");
    }
}

#[test]
fn framing_plans() {
    use BodyFraming::*;
    use Version::*;
    let plan = |is_head, version, keep_alive, status, cl| {
        let ResponseFraming { body, keep_alive } =
            plan_response(is_head, version, keep_alive, status, cl);
        (body, keep_alive)
    };
    assert_eq!(plan(false, Http11, true, 200, Some(5)), (Length(5), true));
    assert_eq!(plan(false, Http11, true, 200, Some(0)), (Length(0), true));
    assert_eq!(plan(false, Http11, true, 200, None), (Chunked, true));
    assert_eq!(plan(false, Http11, false, 200, None), (Chunked, false));
    assert_eq!(plan(false, Http10, true, 200, None), (Close, false));
    assert_eq!(plan(false, Http10, true, 200, Some(3)), (Length(3), true));
    assert_eq!(plan(true, Http11, true, 200, None), (NoBody, true));
    assert_eq!(plan(true, Http10, true, 200, None), (NoBody, true));
    assert_eq!(plan(true, Http11, true, 200, Some(9)), (NoBody, true));
    for status in [100, 101, 103, 199, 204, 304] {
        assert_eq!(plan(false, Http11, true, status, None), (NoBody, true));
        assert_eq!(plan(false, Http10, false, status, Some(4)), (NoBody, false));
    }
    for status in [200, 201, 205, 299, 303, 305, 404, 500] {
        assert_eq!(plan(false, Http11, true, status, None), (Chunked, true));
    }
}

#[test]
fn header_validity() {
    for name in [
        &b"Content-Type"[..],
        b"x",
        b"X-Custom_1.2",
        b"!#$%&'*+-.^_`|~",
    ] {
        assert!(is_valid_header_name(name), "{name:?}");
    }
    for name in [
        &b""[..],
        b"a b",
        b"a:b",
        b"a\tb",
        b"caf\xe9",
        b"(x)",
        b"a\r\nb",
        b"\x00",
    ] {
        assert!(!is_valid_header_name(name), "{name:?}");
    }
    for value in [
        &b""[..],
        b"text/html; charset=utf-8",
        b" lead",
        b"trail\t",
        b"caf\xe9",
        b"\xff",
        b"a\tb",
    ] {
        assert!(is_valid_header_value(value), "{value:?}");
    }
    for value in [
        &b"a\r\nb"[..],
        b"a\nb",
        b"a\rb",
        b"\x00",
        b"\x01",
        b"\x1f",
        b"\x7f",
        b"x\x0b",
    ] {
        assert!(!is_valid_header_value(value), "{value:?}");
    }
}

#[test]
fn hop_by_hop() {
    for name in [
        &b"Connection"[..],
        b"keep-alive",
        b"Proxy-Authenticate",
        b"PROXY-AUTHORIZATION",
        b"Proxy-Connection",
        b"TE",
        b"Trailer",
        b"trailers",
        b"Transfer-Encoding",
        b"Upgrade",
    ] {
        assert!(is_hop_by_hop(name), "{name:?}");
    }
    for name in [
        &b"Content-Length"[..],
        b"Content-Type",
        b"Set-Cookie",
        b"T",
        b"Tee",
        b"",
    ] {
        assert!(!is_hop_by_hop(name), "{name:?}");
    }
}

#[test]
fn response_field_classes() {
    use ResponseField::*;
    for (name, class) in [
        (&b"Content-Length"[..], ContentLength),
        (b"CONTENT-LENGTH", ContentLength),
        (b"content-length", ContentLength),
        (b"Connection", Connection),
        (b"cOnNeCtIoN", Connection),
        (b"Keep-Alive", HopByHop),
        (b"proxy-authorization", HopByHop),
        (b"Proxy-Authenticate", HopByHop),
        (b"te", HopByHop),
        (b"Trailers", HopByHop),
        (b"Transfer-Encoding", HopByHop),
        (b"Content-Type", Other),
        (b"Content-Length2", Other),
        (b"Content_Length", Other),
        (b"X", Other),
        (b"Proxy-Authorization-X", Other),
        (b"A-Much-Longer-Name-Than-Any-Special-One", Other),
        (b"!#$%&'*+-.^_`|~09az", Other),
    ] {
        assert_eq!(classify_response_field(name), Some(class), "{name:?}");
        assert!(is_valid_header_name(name), "{name:?}");
    }
    for name in [
        &b""[..],
        b"Content Length",
        b"Content-Length:",
        b"Conne\xc3\xa7tion",
        b"A-Much-Longer-Name-Than-Any-Special-One\x00",
        b"X\r\nInjected",
        b"(comment)",
    ] {
        assert_eq!(classify_response_field(name), None, "{name:?}");
        assert!(!is_valid_header_name(name), "{name:?}");
    }
}

#[test]
fn response_field_classes_agree_with_the_validator_for_every_short_name() {
    // Every name of one and two bytes, and each special name with one byte changed.
    let mut names: Vec<Vec<u8>> = (0..=255u8).map(|a| vec![a]).collect();
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            names.push(vec![a, b]);
        }
    }
    for special in [
        &b"Content-Length"[..],
        b"Connection",
        b"Proxy-Authorization",
    ] {
        for i in 0..special.len() {
            for b in 0..=255u8 {
                let mut n = special.to_vec();
                n[i] = b;
                names.push(n);
            }
        }
    }
    for name in &names {
        let class = classify_response_field(name);
        assert_eq!(class.is_some(), is_valid_header_name(name), "{name:?}");
        let lower = name.to_ascii_lowercase();
        let expected = match &lower[..] {
            b"content-length" => ResponseField::ContentLength,
            b"connection" => ResponseField::Connection,
            b"te" | b"proxy-authorization" => ResponseField::HopByHop,
            _ => ResponseField::Other,
        };
        if class.is_some() {
            assert_eq!(class, Some(expected), "{name:?}");
        }
    }
}

#[test]
fn response_content_length_values() {
    assert_eq!(parse_content_length(b"13"), Some(13));
    assert_eq!(parse_content_length(b"0"), Some(0));
    assert_eq!(
        parse_content_length(b"18446744073709551615"),
        Some(u64::MAX)
    );
    for bad in [
        &b""[..],
        b"18446744073709551616",
        b"+1",
        b" 1",
        b"1 ",
        b"1,1",
        b"0x1",
    ] {
        assert_eq!(parse_content_length(bad), None, "{bad:?}");
    }
}

#[test]
fn header_writing() {
    let mut out = Vec::new();
    write_header(&mut out, b"Content-Type", b"text/plain");
    write_header(&mut out, b"X", b"");
    assert_eq!(out, b"Content-Type: text/plain\r\nX: \r\n");
}
