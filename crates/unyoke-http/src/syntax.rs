//! Byte classes of RFC 9110/9112 grammar and the line-end search shared by the request
//! head scanner, the chunked decoder and the response validators.

/// Builds a 256-entry membership table from a const predicate.
macro_rules! table {
    ($pred:ident) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = $pred(i as u8);
            i += 1;
        }
        t
    }};
}

const fn tchar(b: u8) -> bool {
    matches!(b,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
        | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// What httparse accepts inside a request target: visible ASCII and obs-text.
const fn target_char(b: u8) -> bool {
    matches!(b, b'!'..=0x7e | 0x80..=0xff)
}

/// field-vchar / SP / HTAB (RFC 9110 §5.5): everything but CTLs, HTAB excepted.
const fn field_value_char(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=0x7e | 0x80..=0xff)
}

/// Characters of `uri-host [ ":" port ]` (RFC 3986 reg-name, IP-literal, IPv4, port).
const fn host_char(b: u8) -> bool {
    matches!(b,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~' | b'%'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        | b':' | b'[' | b']')
}

static TCHAR: [bool; 256] = table!(tchar);

/// Each `tchar` lowercased, 0 for every other byte: a field name is checked and
/// lowercased in one lookup per byte.
static LOWER_TCHAR: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        if tchar(i as u8) {
            t[i] = (i as u8).to_ascii_lowercase();
        }
        i += 1;
    }
    t
};
static TARGET: [bool; 256] = table!(target_char);
static FIELD_VALUE: [bool; 256] = table!(field_value_char);
static HOST: [bool; 256] = table!(host_char);

/// A `tchar` (RFC 9110 §5.6.2): the characters of methods, field names and codings.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// `b` lowercased if it is a `tchar`, else 0 (which no `tchar` is).
#[inline]
pub(crate) fn lower_tchar(b: u8) -> u8 {
    LOWER_TCHAR[b as usize]
}

/// A byte httparse allows in a request target.
#[inline]
pub(crate) fn is_target_char(b: u8) -> bool {
    TARGET[b as usize]
}

/// A byte allowed in a field value (or a chunk extension, or a reason phrase).
#[inline]
pub(crate) fn is_field_value_char(b: u8) -> bool {
    FIELD_VALUE[b as usize]
}

/// A byte allowed in a Host field value.
#[inline]
pub(crate) fn is_host_char(b: u8) -> bool {
    HOST[b as usize]
}

/// `s` without leading and trailing SP/HTAB (OWS).
#[inline]
pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    &s[start..end]
}

/// The non-empty elements of a comma-separated list field value (RFC 9110 §5.6.1),
/// each trimmed of OWS. Empty elements are skipped, as the RFC asks recipients to do.
#[inline]
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
const LF_WORD: u64 = LOW_BITS * b'\n' as u64;

/// Index of the first LF in `haystack`, eight bytes at a time (no memchr dependency:
/// the codec depends on httparse and bytes only).
#[inline]
pub(crate) fn find_lf(haystack: &[u8]) -> Option<usize> {
    let mut words = haystack.chunks_exact(8);
    let mut offset = 0;
    for w in &mut words {
        let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ LF_WORD;
        // The lowest set bit marks the first zero byte (the first LF): borrows only
        // propagate towards higher bytes, so false positives sit above it.
        let zero = word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS;
        if zero != 0 {
            return Some(offset + (zero.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| offset + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_lf_matches_naive_search() {
        for len in 0..40 {
            for lf in 0..=len {
                let mut v = vec![b'a'; len];
                // Bytes that differ from LF by one bit or by borrow patterns.
                for (i, b) in v.iter_mut().enumerate() {
                    *b = [b'\x0b', b'\x09', b'\x8a', b'a', 0, 0xff][i % 6];
                }
                if lf < len {
                    v[lf] = b'\n';
                    if lf + 3 < len {
                        v[lf + 3] = b'\n';
                    }
                }
                assert_eq!(find_lf(&v), v.iter().position(|&b| b == b'\n'), "{v:?}");
            }
        }
    }

    #[test]
    fn trims_and_splits_lists() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"  "), b"");
        assert_eq!(trim_ows(b""), b"");
        let v: Vec<&[u8]> = list_elements(b" a ,, b\t, ,c").collect();
        assert_eq!(v, vec![&b"a"[..], b"b", b"c"]);
    }
}
