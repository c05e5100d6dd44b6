//! IMF-fixdate formatting for the `Date` header (RFC 9110 §5.6.7). No clock: the caller
//! passes the time and caches the result for a second.

/// `secs` since the Unix epoch as `Sun, 06 Nov 1994 08:49:37 GMT` (29 bytes).
pub fn http_date(secs: u64) -> [u8; 29] {
    let _ = secs;
    todo!()
}
