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

/// What one log line is made of.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The client's address (and X-Forwarded-For, when configured).
    pub client_ip: &'a str,
    /// `METHOD target HTTP/x.y` as received.
    pub request_line: &'a [u8],
    /// The response status.
    pub status: u16,
    /// Body bytes sent.
    pub body_length: u64,
    /// Seconds from request head to response end.
    pub wall_seconds: f64,
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
                Part::Field(field, spec) => {
                    let _ = match (field, spec) {
                        (Field::ClientIp, _) => out.write_all(e.client_ip.as_bytes()),
                        (Field::DateTime, _) => out.write_all(date.as_bytes()),
                        (Field::RequestLine, _) => out.write_all(e.request_line),
                        (Field::StatusCode, _) => write!(out, "{}", e.status),
                        (Field::BodyLength, _) => write!(out, "{}", e.body_length),
                        (Field::WallSeconds, Spec::Float(p)) => {
                            write!(out, "{:.*}", *p, e.wall_seconds)
                        }
                        (Field::WallSeconds, Spec::Int) => write!(out, "{}", e.wall_seconds as u64),
                        (Field::WallSeconds, Spec::Str) => write!(out, "{}", e.wall_seconds),
                    };
                }
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
        self.format.render(&mut buf, e, &date);
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

    fn date_time(&self) -> String {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut d = self.date.lock();
        if d.0 != secs {
            *d = (secs, format_log_date(secs));
        }
        d.1.clone()
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
