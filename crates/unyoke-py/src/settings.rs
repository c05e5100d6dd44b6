//! Reads the engine's settings from the dict the Python side validated (config.py is
//! the one table of settings; this only converts).

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use unyoke_server::{Config, LogFormat, Network};

use crate::handler::Hooks;

/// Settings the WSGI layer uses itself.
#[derive(Debug, Clone)]
pub struct WsgiSettings {
    pub url_scheme: String,
    pub server_name: Option<String>,
    pub expose_tracebacks: bool,
    pub capitalize_response_headers: bool,
    pub pretend_http10: bool,
    pub multiprocess: bool,
    pub minimum_chunk_size: usize,
    /// Peers whose Forwarded / X-Forwarded-* headers are trusted.
    pub forwarded_allow_ips: Vec<Network>,
}

fn get<'py, T: FromPyObject<'py>>(d: &Bound<'py, PyDict>, key: &str, default: T) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => v
            .extract::<T>()
            .map_err(|e| PyValueError::new_err(format!("setting {key}: {e}"))),
        _ => Ok(default),
    }
}

fn seconds(d: &Bound<'_, PyDict>, key: &str, default: f64) -> PyResult<Duration> {
    let s: f64 = get(d, key, default)?;
    if !(s.is_finite() && s >= 0.0) {
        return Err(PyValueError::new_err(format!(
            "setting {key}: must be a non-negative number of seconds"
        )));
    }
    Ok(Duration::from_secs_f64(s.min(1e9)))
}

/// Builds the engine and WSGI settings.
pub fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<(Config, WsgiSettings)> {
    let mut c = Config::default();
    c.limits.max_request_header_size = get(
        d,
        "max_request_header_size",
        c.limits.max_request_header_size,
    )?;
    c.limits.url_length_limit = get(d, "url_length_limit", c.limits.url_length_limit)?;
    c.limits.max_request_body_size =
        get(d, "max_request_body_size", c.limits.max_request_body_size)?;
    c.header_timeout = seconds(d, "header_timeout", 10.0)?;
    c.keepalive_timeout = seconds(d, "keepalive_timeout", 75.0)?;
    c.inactivity_timeout = seconds(d, "inactivity_timeout", 60.0)?;
    c.max_size = get(d, "max_size", c.max_size)?;
    c.keepalive = get(d, "keepalive", true)?;
    c.threads = get::<usize>(d, "threads", c.threads)?.max(1) + 1;
    let identity: String = get(d, "identity", "unyoke".to_string())?;
    if identity.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(PyValueError::new_err(
            "setting identity: control characters are not allowed",
        ));
    }
    c.identity = identity.into_bytes();
    c.inbuf_overflow = get(d, "inbuf_overflow", c.inbuf_overflow)?;
    c.body_preread = get(d, "body_preread", c.body_preread)?;
    c.log_x_forwarded_for = get(d, "log_x_forwarded_for", true)?;
    let access_log: bool = get(d, "access_log", true)?;
    if access_log {
        let fmt: String = get(
            d,
            "log_format",
            "%(client_ip)s - - [%(date_time)s] \"%(request_line)s\" %(status_code)s %(body_length)s %(wall_seconds).6f".to_string(),
        )?;
        c.access_log = Some(LogFormat::parse(&fmt).map_err(PyValueError::new_err)?);
    }
    let responseless: f64 = get(d, "responseless_timeout", 0.0)?;
    if responseless > 0.0 {
        c.responseless_timeout = Some(seconds(d, "responseless_timeout", 0.0)?);
    }
    c.maximum_simultaneous_requests = get(d, "maximum_simultaneous_requests", 0usize)?;
    c.origins = networks(d, "origins")?;
    c.proxy_protocol = get(d, "proxy_protocol", false)?;
    c.busy_poll = Duration::from_micros(get(d, "busy_poll", 50u64)?);
    let certfile: Option<String> = get(d, "certfile", None)?;
    let keyfile: Option<String> = get(d, "keyfile", None)?;
    let ca_certs: Option<String> = get(d, "ca_certs", None)?;
    match (certfile, keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let files = unyoke_server::TlsFiles {
                certfile: certfile.into(),
                keyfile: keyfile.into(),
                ca_certs: ca_certs.map(Into::into),
            };
            c.tls = Some(
                unyoke_server::tls_server_config(&files)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            );
        }
        (None, None) => {}
        _ => {
            return Err(PyValueError::new_err(
                "settings certfile and keyfile go together",
            ))
        }
    }
    let max_http_version: String = get(d, "max_http_version", "HTTP/1.1".to_string())?;
    let pretend_http10 = match max_http_version.as_str() {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        other => {
            return Err(PyValueError::new_err(format!(
                "setting max_http_version: {other:?} is not HTTP/1.0 or HTTP/1.1"
            )))
        }
    };
    let workers: usize = get(d, "workers", 1usize)?;
    let w = WsgiSettings {
        url_scheme: get(d, "url_scheme", "http".to_string())?,
        server_name: get(d, "server_name", None)?,
        expose_tracebacks: get(d, "expose_tracebacks", false)?,
        capitalize_response_headers: get(d, "capitalize_response_headers", false)?,
        pretend_http10,
        multiprocess: workers > 1,
        minimum_chunk_size: get(d, "minimum_chunk_size", 0usize)?,
        forwarded_allow_ips: networks(d, "forwarded_allow_ips")?,
    };
    Ok((c, w))
}

/// A list of networks (CIDR strings) setting.
fn networks(d: &Bound<'_, PyDict>, key: &str) -> PyResult<Vec<Network>> {
    let list: Vec<String> = get(d, key, Vec::new())?;
    list.iter()
        .map(|o| {
            Network::parse(o).map_err(|e| PyValueError::new_err(format!("setting {key}: {e}")))
        })
        .collect()
}

/// Mounted applications and connection hooks.
pub fn hooks(d: &Bound<'_, PyDict>) -> PyResult<Hooks> {
    let mut h = Hooks::default();
    if let Some(m) = d.get_item("mounts")? {
        if !m.is_none() {
            let m = m.downcast_into::<PyDict>().map_err(|_| {
                PyValueError::new_err(
                    "setting mounts: must be a dict of path prefix to application",
                )
            })?;
            for (k, v) in m.iter() {
                let prefix: String = k.extract()?;
                if !prefix.starts_with('/') {
                    return Err(PyValueError::new_err(format!(
                        "setting mounts: prefix {prefix:?} must start with '/'"
                    )));
                }
                if !v.is_callable() {
                    return Err(PyValueError::new_err(format!(
                        "setting mounts: the application at {prefix:?} is not callable"
                    )));
                }
                h.mounts.push((prefix, v.unbind()));
            }
        }
    }
    for (key, slot) in [
        ("on_connect", &mut h.on_connect),
        ("on_disconnect", &mut h.on_disconnect),
    ] {
        if let Some(f) = d.get_item(key)? {
            if !f.is_none() {
                if !f.is_callable() {
                    return Err(PyValueError::new_err(format!(
                        "setting {key}: must be callable"
                    )));
                }
                *slot = Some(f.unbind());
            }
        }
    }
    Ok(h)
}
