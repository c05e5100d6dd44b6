//! The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy, nginx
//! (`proxy_protocol on`) and cloud load balancers send it before the HTTP bytes.
//! Sans-IO like the rest of the crate: bytes in, the addresses out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Largest v2 header accepted (16-byte fixed part + addresses + TLVs).
const V2_MAX: usize = 16 + 2048;

/// What the proxy said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyInfo {
    /// The original client and the address it connected to.
    Forwarded {
        /// The client.
        source: SocketAddr,
        /// The proxy's address the client connected to.
        destination: SocketAddr,
    },
    /// The proxy's own connection (health check), or an address family not carried
    /// (UNIX, UNKNOWN): use the real peer address.
    Local,
}

/// A malformed PROXY header: the connection must be closed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes are not a PROXY header at all.
    Missing,
    /// A v1 line that does not parse.
    InvalidV1,
    /// A v2 header that does not parse (version, command, family, or lengths).
    InvalidV2,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyError::Missing => "expected a PROXY protocol header",
            ProxyError::InvalidV1 => "malformed PROXY protocol v1 header",
            ProxyError::InvalidV2 => "malformed PROXY protocol v2 header",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Parses a PROXY header at the start of `buf`. `Ok(None)`: more bytes needed;
/// `Ok(Some((info, n)))`: the header took the first `n` bytes.
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<(ProxyInfo, usize)>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let v2_prefix = buf.len().min(V2_SIGNATURE.len());
    if buf[..v2_prefix] == V2_SIGNATURE[..v2_prefix] {
        if buf.len() < V2_SIGNATURE.len() {
            return Ok(None);
        }
        return parse_v2(buf);
    }
    let v1_prefix = buf.len().min(6);
    if buf[..v1_prefix] == b"PROXY "[..v1_prefix] {
        if buf.len() < 6 {
            return Ok(None);
        }
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyInfo, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    // A bare LF anywhere before the CRLF is refused, whether or not the CR has arrived
    // yet: the verdict must not depend on how the bytes were split.
    let cr = window.iter().position(|&b| b == b'\r');
    let lf = window.iter().position(|&b| b == b'\n');
    if let Some(lf) = lf {
        if cr.is_none_or(|cr| lf < cr) {
            return Err(ProxyError::InvalidV1);
        }
    }
    let Some(cr) = cr else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::InvalidV1);
        }
        return Ok(None);
    };
    if cr + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[cr + 1] != b'\n' {
        return Err(ProxyError::InvalidV1);
    }
    let line = std::str::from_utf8(&buf[6..cr]).map_err(|_| ProxyError::InvalidV1)?;
    let parts: Vec<&str> = line.split(' ').collect();
    let consumed = cr + 2;
    match parts.as_slice() {
        ["UNKNOWN", ..] => Ok(Some((ProxyInfo::Local, consumed))),
        [proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| ProxyError::InvalidV1)?;
            let dst: IpAddr = dst.parse().map_err(|_| ProxyError::InvalidV1)?;
            let v4 = *proto == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(ProxyError::InvalidV1);
            }
            let port = |p: &str| -> Result<u16, ProxyError> {
                if p.is_empty()
                    || p.len() > 5
                    || !p.bytes().all(|b| b.is_ascii_digit())
                    || (p.len() > 1 && p.starts_with('0'))
                {
                    return Err(ProxyError::InvalidV1);
                }
                p.parse().map_err(|_| ProxyError::InvalidV1)
            };
            Ok(Some((
                ProxyInfo::Forwarded {
                    source: SocketAddr::new(src, port(sport)?),
                    destination: SocketAddr::new(dst, port(dport)?),
                },
                consumed,
            )))
        }
        _ => Err(ProxyError::InvalidV1),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyInfo, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::InvalidV2);
    }
    let command = ver_cmd & 0x0f;
    let family = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + len > V2_MAX {
        return Err(ProxyError::InvalidV2);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let consumed = 16 + len;
    match command {
        0x0 => return Ok(Some((ProxyInfo::Local, consumed))),
        0x1 => {}
        _ => return Err(ProxyError::InvalidV2),
    }
    match family {
        // TCP over IPv4
        0x11 => {
            if body.len() < 12 {
                return Err(ProxyError::InvalidV2);
            }
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            let sport = u16::from_be_bytes([body[8], body[9]]);
            let dport = u16::from_be_bytes([body[10], body[11]]);
            Ok(Some((
                ProxyInfo::Forwarded {
                    source: SocketAddr::new(IpAddr::V4(src), sport),
                    destination: SocketAddr::new(IpAddr::V4(dst), dport),
                },
                consumed,
            )))
        }
        // TCP over IPv6
        0x21 => {
            if body.len() < 36 {
                return Err(ProxyError::InvalidV2);
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&body[0..16]);
            d.copy_from_slice(&body[16..32]);
            let sport = u16::from_be_bytes([body[32], body[33]]);
            let dport = u16::from_be_bytes([body[34], body[35]]);
            Ok(Some((
                ProxyInfo::Forwarded {
                    source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), sport),
                    destination: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), dport),
                },
                consumed,
            )))
        }
        // UNSPEC, UDP, UNIX: nothing usable as a client address.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => Ok(Some((ProxyInfo::Local, consumed))),
        _ => Err(ProxyError::InvalidV2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole_and_bytewise(input: &[u8]) -> Result<Option<(ProxyInfo, usize)>, ProxyError> {
        let whole = parse_proxy_header(input);
        // Every strict prefix is either incomplete or already the same error.
        for i in 0..input.len() {
            match parse_proxy_header(&input[..i]) {
                Ok(None) => {}
                Err(e) => assert_eq!(whole, Err(e), "prefix {i} of {input:?}"),
                Ok(Some(r)) => assert_eq!(whole, Ok(Some(r)), "prefix {i} of {input:?}"),
            }
        }
        whole
    }

    #[test]
    fn v1_tcp4() {
        let input = b"PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\nGET / HTTP/1.1\r\n";
        let (info, n) = whole_and_bytewise(input).unwrap().unwrap();
        assert_eq!(&input[n..n + 3], b"GET");
        assert_eq!(
            info,
            ProxyInfo::Forwarded {
                source: "192.168.0.1:56324".parse().unwrap(),
                destination: "10.0.0.2:443".parse().unwrap()
            }
        );
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let (info, _) = whole_and_bytewise(b"PROXY TCP6 ::1 ::2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert!(
            matches!(info, ProxyInfo::Forwarded { source, .. } if source == "[::1]:1".parse().unwrap())
        );
        let (info, n) = whole_and_bytewise(b"PROXY UNKNOWN\r\nGET")
            .unwrap()
            .unwrap();
        assert_eq!((info, n), (ProxyInfo::Local, 15));
    }

    #[test]
    fn v1_invalid() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(
                whole_and_bytewise(bad),
                Err(ProxyError::InvalidV1),
                "{bad:?}"
            );
        }
        // A bare LF before the CRLF, in one read or split: refused either way.
        assert_eq!(
            whole_and_bytewise(b"PROXY UNKNOWN\nx\r\n"),
            Err(ProxyError::InvalidV1)
        );
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(parse_proxy_header(&long), Err(ProxyError::InvalidV1));
        assert_eq!(
            parse_proxy_header(b"GET / HTTP/1.1\r\n"),
            Err(ProxyError::Missing)
        );
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v2_tcp4_tcp6_local() {
        let mut body = vec![192, 168, 0, 1, 10, 0, 0, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 1, 0]); // a TLV, skipped
        let mut input = v2(1, 0x11, &body);
        input.extend_from_slice(b"GET");
        let (info, n) = whole_and_bytewise(&input).unwrap().unwrap();
        assert_eq!(&input[n..], b"GET");
        assert_eq!(
            info,
            ProxyInfo::Forwarded {
                source: "192.168.0.1:56324".parse().unwrap(),
                destination: "10.0.0.2:443".parse().unwrap()
            }
        );
        let mut body6 = vec![0u8; 36];
        body6[15] = 1;
        body6[31] = 2;
        body6[33] = 7;
        let (info, _) = whole_and_bytewise(&v2(1, 0x21, &body6)).unwrap().unwrap();
        assert!(
            matches!(info, ProxyInfo::Forwarded { source, .. } if source == "[::1]:7".parse().unwrap())
        );
        assert_eq!(
            whole_and_bytewise(&v2(0, 0x00, &[])).unwrap().unwrap().0,
            ProxyInfo::Local
        );
    }

    #[test]
    fn v2_invalid() {
        assert_eq!(
            whole_and_bytewise(&v2(1, 0x11, &[1, 2, 3])),
            Err(ProxyError::InvalidV2)
        );
        assert_eq!(
            whole_and_bytewise(&v2(2, 0x11, &[0; 12])),
            Err(ProxyError::InvalidV2)
        );
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert_eq!(parse_proxy_header(&bad_version), Err(ProxyError::InvalidV2));
        assert_eq!(
            whole_and_bytewise(&v2(1, 0x99, &[0; 12])),
            Err(ProxyError::InvalidV2)
        );
    }
}
