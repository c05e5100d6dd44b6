//! The access log: one line per request, formatted in Rust with eventlet's keys and
//! written in batches to stderr, so logging costs no syscall per request.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A parsed `%(key)s`-style format (eventlet's keys: client_ip, date_time, request_line,
/// status_code, body_length, wall_seconds).
#[derive(Debug, Clone)]
pub struct LogFormat {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Field(Field, Spec),
}

#[derive(Debug, Clone, Copy)]
enum Field {
    ClientIp,
    DateTime,
    RequestLine,
    StatusCode,
    BodyLength,
    WallSeconds,
}

#[derive(Debug, Clone, Copy)]
enum Spec {
    Str,
    Int,
    Float(usize),
}

/// What one log line is made of (borrowed: rendering allocates nothing).
#[derive(Debug)]
pub struct Entry<'a> {
    /// X-Forwarded-For to show before the client's address, if any.
    pub forwarded_for: Option<&'a [u8]>,
    /// The client's address (None: a UNIX socket peer).
    pub client_ip: Option<std::net::IpAddr>,
    /// The request method, target and version, as received.
    pub method: &'a [u8],
    /// The request target.
    pub target: &'a [u8],
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: &'a str,
    /// The response status.
    pub status: u16,
    /// Body bytes sent.
    pub body_length: u64,
    /// Seconds from request head to response end.
    pub wall_seconds: f64,
}

/// Appends the decimal digits of `n` (integer formatting without the fmt machinery).
fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(unyoke_http::decimal(n, &mut digits));
}

impl LogFormat {
    /// Parses a format; unknown keys and specs are errors.
    pub fn parse(format: &str) -> Result<LogFormat, String> {
        let mut parts = Vec::new();
        let mut rest = format;
        let mut literal = String::new();
        while let Some(pos) = rest.find('%') {
            literal.push_str(&rest[..pos]);
            rest = &rest[pos + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                literal.push('%');
                rest = r;
                continue;
            }
            let Some(r) = rest.strip_prefix('(') else {
                return Err(format!("log_format: expected '(' after '%' in {format:?}"));
            };
            let Some(close) = r.find(')') else {
                return Err(format!("log_format: unclosed '%(' in {format:?}"));
            };
            let key = &r[..close];
            let field = match key {
                "client_ip" => Field::ClientIp,
                "date_time" => Field::DateTime,
                "request_line" => Field::RequestLine,
                "status_code" => Field::StatusCode,
                "body_length" => Field::BodyLength,
                "wall_seconds" => Field::WallSeconds,
                other => return Err(format!("log_format: unknown key {other:?}")),
            };
            let r = &r[close + 1..];
            let end = r
                .find(|c: char| c.is_ascii_alphabetic())
                .ok_or_else(|| format!("log_format: missing conversion after %({key})"))?;
            let (spec, conv) = (&r[..end], &r[end..end + 1]);
            let spec = match conv {
                "s" | "r" => Spec::Str,
                "d" | "i" => Spec::Int,
                "f" => {
                    let prec = spec
                        .strip_prefix('.')
                        .map(|p| {
                            p.parse::<usize>()
                                .map_err(|_| format!("log_format: bad precision {spec:?}"))
                        })
                        .transpose()?
                        .unwrap_or(6);
                    Spec::Float(prec)
                }
                other => return Err(format!("log_format: unsupported conversion {other:?}")),
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Field(field, spec));
            rest = &r[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(LogFormat { parts })
    }

    fn render(&self, out: &mut Vec<u8>, e: &Entry<'_>, date: &str) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Field(field, spec) => match (field, spec) {
                    (Field::ClientIp, _) => {
                        if let Some(xff) = e.forwarded_for {
                            out.extend(xff.iter().filter(|&&b| b != b' '));
                            out.push(b',');
                        }
                        match e.client_ip {
                            Some(ip) => {
                                let _ = write!(out, "{ip}");
                            }
                            None => out.extend_from_slice(b"unix"),
                        }
                    }
                    (Field::DateTime, _) => out.extend_from_slice(date.as_bytes()),
                    (Field::RequestLine, _) => {
                        out.extend_from_slice(e.method);
                        out.push(b' ');
                        out.extend_from_slice(e.target);
                        out.push(b' ');
                        out.extend_from_slice(e.version.as_bytes());
                    }
                    (Field::StatusCode, _) => push_u64(out, u64::from(e.status)),
                    (Field::BodyLength, _) => push_u64(out, e.body_length),
                    (Field::WallSeconds, Spec::Float(p)) => {
                        // Fixed point by hand: whole seconds, then `p` decimals.
                        let scale = 10u64.pow((*p).min(9) as u32);
                        let total = (e.wall_seconds.max(0.0) * scale as f64).round() as u64;
                        push_u64(out, total / scale);
                        if *p > 0 {
                            out.push(b'.');
                            let frac = total % scale;
                            let mut digits = [b'0'; 9];
                            let mut f = frac;
                            for d in digits[..(*p).min(9)].iter_mut().rev() {
                                *d = b'0' + (f % 10) as u8;
                                f /= 10;
                            }
                            out.extend_from_slice(&digits[..(*p).min(9)]);
                        }
                    }
                    (Field::WallSeconds, Spec::Int) => push_u64(out, e.wall_seconds as u64),
                    (Field::WallSeconds, Spec::Str) => {
                        let _ = write!(out, "{}", e.wall_seconds);
                    }
                },
            }
        }
        out.push(b'\n');
    }
}

/// The buffered access log.
pub(crate) struct AccessLog {
    format: LogFormat,
    buf: Mutex<Vec<u8>>,
    /// `[22/Nov/2026 20:47:59]`-style date, cached per second.
    date: Mutex<(u64, String)>,
}

const FLUSH_AT: usize = 32 * 1024;

impl AccessLog {
    pub(crate) fn new(format: LogFormat) -> Self {
        AccessLog {
            format,
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
            date: Mutex::new((u64::MAX, String::new())),
        }
    }

    pub(crate) fn log(&self, e: &Entry<'_>) {
        let date = self.date_time();
        let mut buf = self.buf.lock();
        self.format.render(&mut buf, e, &date.1);
        if buf.len() >= FLUSH_AT {
            let data = std::mem::take(&mut *buf);
            drop(buf);
            write_stderr(&data);
        }
    }

    pub(crate) fn flush(&self) {
        let data = {
            let mut buf = self.buf.lock();
            if buf.is_empty() {
                return;
            }
            std::mem::take(&mut *buf)
        };
        write_stderr(&data);
    }

    /// The cached `[date_time]` text, re-formatted when the second changes.
    fn date_time(&self) -> parking_lot::MutexGuard<'_, (u64, String)> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut d = self.date.lock();
        if d.0 != secs {
            *d = (secs, format_log_date(secs));
        }
        d
    }
}

fn write_stderr(data: &[u8]) {
    // A full or closed stderr must not take the server down: drop the lines.
    let _ = std::io::stderr().lock().write_all(data);
}

/// `22/Nov/2026 20:47:59`, in UTC (eventlet's style, without the locale).
fn format_log_date(secs: u64) -> String {
    let http = unyoke_http::http_date(secs);
    // http: "Sun, 06 Nov 1994 08:49:37 GMT"
    let s = std::str::from_utf8(&http).unwrap_or("");
    if s.len() < 29 {
        return String::new();
    }
    format!("{}/{}/{} {}", &s[5..7], &s[8..11], &s[12..16], &s[17..25])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: &str, e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        LogFormat::parse(format)
            .unwrap()
            .render(&mut out, e, "22/Nov/2026 20:47:59");
        String::from_utf8(out).unwrap()
    }

    fn entry(wall: f64) -> Entry<'static> {
        Entry {
            forwarded_for: None,
            client_ip: Some("127.0.0.1".parse().unwrap()),
            method: b"GET",
            target: b"/a?b=1",
            version: "HTTP/1.1",
            status: 200,
            body_length: 13,
            wall_seconds: wall,
        }
    }

    #[test]
    fn eventlet_default_format() {
        let f = "%(client_ip)s - - [%(date_time)s] \"%(request_line)s\" %(status_code)s %(body_length)s %(wall_seconds).6f";
        assert_eq!(
            render(f, &entry(0.0001775)),
            "127.0.0.1 - - [22/Nov/2026 20:47:59] \"GET /a?b=1 HTTP/1.1\" 200 13 0.000178\n"
        );
        assert_eq!(
            render("%(wall_seconds).2f %(wall_seconds)d", &entry(12.345)),
            "12.35 12\n"
        );
        assert_eq!(render("%(wall_seconds).0f|%%", &entry(2.6)), "3|%\n");
    }

    #[test]
    fn forwarded_for_and_unix_peers() {
        let mut e = entry(0.0);
        e.forwarded_for = Some(b"10.0.0.1, 10.0.0.2");
        assert_eq!(render("%(client_ip)s", &e), "10.0.0.1,10.0.0.2,127.0.0.1\n");
        e.forwarded_for = None;
        e.client_ip = None;
        assert_eq!(render("%(client_ip)s", &e), "unix\n");
    }

    #[test]
    fn bad_formats_are_refused() {
        for bad in [
            "%(nope)s",
            "%(status_code)",
            "%(status_code)s %x",
            "%(date_time",
        ] {
            assert!(LogFormat::parse(bad).is_err(), "{bad}");
        }
    }
}
