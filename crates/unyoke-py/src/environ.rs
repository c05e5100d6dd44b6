//! Builds the PEP 3333 environ from a request head: a copy of a template dict with the
//! constant keys, then the per-request keys, with interned key strings.

use std::collections::HashMap;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use unyoke_http::{RequestHead, Version};
use unyoke_server::{ConnInfo, Exchange, PeerAddr};

use crate::handler::ReqState;
use crate::input::Input;
use crate::settings::WsgiSettings;

/// Most distinct header names whose environ keys are cached (hostile clients can send
/// arbitrary names; beyond this, keys are built per request).
const HEADER_KEY_CACHE: usize = 512;

/// The longest name in [`KNOWN_HEADERS`] (`upgrade-insecure-requests`).
const KNOWN_NAME_MAX: usize = 25;

/// Header names whose environ keys are kept ready, in lowercase: looking one up costs a
/// few comparisons among the names of its length, where the general cache costs a lock
/// and a SipHash.
const KNOWN_HEADERS: &[&str] = &[
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "connection",
    "cookie",
    "content-type",
    "content-length",
    "referer",
    "origin",
    "cache-control",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "x-requested-with",
    "if-none-match",
    "if-modified-since",
    "upgrade-insecure-requests",
    "pragma",
    "priority",
    "range",
    "expect",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
    "sec-fetch-user",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
];

// Checked when compiling: every known name fits the lookup's buffer and is in lowercase
// (what the lookup compares against).
const _: () = {
    let mut i = 0;
    while i < KNOWN_HEADERS.len() {
        let name = KNOWN_HEADERS[i].as_bytes();
        assert!(name.len() <= KNOWN_NAME_MAX);
        let mut j = 0;
        while j < name.len() {
            assert!(!name[j].is_ascii_uppercase() && name[j] != b'_');
            j += 1;
        }
        i += 1;
    }
};

/// The environ key of a header name: CONTENT_TYPE, CONTENT_LENGTH, else HTTP_ and the
/// name in capitals with `-` as `_`.
fn environ_key(name: &[u8]) -> String {
    if name.eq_ignore_ascii_case(b"content-type") {
        "CONTENT_TYPE".to_string()
    } else if name.eq_ignore_ascii_case(b"content-length") {
        "CONTENT_LENGTH".to_string()
    } else {
        let mut k = String::with_capacity(name.len() + 5);
        k.push_str("HTTP_");
        for &b in name {
            k.push(if b == b'-' {
                '_'
            } else {
                b.to_ascii_uppercase() as char
            });
        }
        k
    }
}

/// The environ template of one listener (local address, and whether it is TLS): the
/// server's, with SERVER_NAME, SERVER_PORT and the scheme set.
type ListenerTemplate = (PeerAddr, bool, Py<PyDict>);

/// Most listener templates kept (a server has a few listeners; beyond this many local
/// addresses, e.g. a wildcard bind answering on many, the template is made per request).
const LISTENER_TEMPLATES_MAX: usize = 16;

/// What a connection keeps for its requests (from its second one): its listener's
/// template and its peer's address as strings.
struct ConnEnviron {
    template: Py<PyDict>,
    remote_addr: Py<PyString>,
    remote_port: Py<PyString>,
}

pub struct EnvironBuilder {
    template: Py<PyDict>,
    k_method: Py<PyString>,
    k_path: Py<PyString>,
    k_query: Py<PyString>,
    k_protocol: Py<PyString>,
    k_remote_addr: Py<PyString>,
    k_remote_port: Py<PyString>,
    k_raw_uri: Py<PyString>,
    k_request_uri: Py<PyString>,
    k_server_name: Py<PyString>,
    k_server_port: Py<PyString>,
    pub k_input: Py<PyString>,
    /// `wsgi.input` of every request without a body (see [`Input::empty`]), in the
    /// template: such a request stores nothing for it.
    empty_input: Py<Input>,
    v_http10: Py<PyString>,
    v_http11: Py<PyString>,
    v_empty: Py<PyString>,
    methods: Vec<(&'static [u8], Py<PyString>)>,
    /// The environ keys of the usual header names, found without a lock or a hash:
    /// indexed by the name's length, then (lowercase name, key).
    known_headers: Vec<Vec<(&'static [u8], Py<PyString>)>>,
    header_keys: Mutex<HashMap<Vec<u8>, Py<PyString>>>,
    server_name: Option<Py<PyString>>,
    /// Peers whose Forwarded / X-Forwarded-* headers are believed.
    forwarded_allow: Vec<unyoke_server::Network>,
    /// The template of each listener (see [`ListenerTemplate`]).
    listener_templates: Mutex<Vec<ListenerTemplate>>,
}

fn intern(py: Python<'_>, s: &str) -> Py<PyString> {
    PyString::intern(py, s).unbind()
}

/// A str from bytes taken as latin-1 (PEP 3333's "native strings"), made in one pass.
fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // A slice is at most isize::MAX bytes long: the length converts without loss.
    let len = bytes.len() as pyo3::ffi::Py_ssize_t;
    // SAFETY: the pointer and length describe `bytes`, which is only read during the call;
    // the result is a new reference to a str, or NULL with an exception set.
    unsafe {
        if bytes.len() > 1 && bytes.is_ascii() {
            // Nearly always: made as ASCII at once, sparing the decoder's scan for the
            // widest character (a tenth of a request's environ with a browser's headers).
            // (Empty and one-character strings come from the decoder's shared singletons.)
            let s = pyo3::ffi::PyUnicode_New(len, 127);
            let s = Bound::from_owned_ptr_or_err(py, s)?;
            // SAFETY: a new compact ASCII str of `len` characters has `len` writable
            // bytes of data (and its terminator set); nothing else has seen it yet.
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                pyo3::ffi::PyUnicode_DATA(s.as_ptr()).cast::<u8>(),
                bytes.len(),
            );
            return Ok(s.downcast_into_unchecked());
        }
        let s = pyo3::ffi::PyUnicode_DecodeLatin1(bytes.as_ptr().cast(), len, std::ptr::null());
        Ok(Bound::from_owned_ptr_or_err(py, s)?.downcast_into_unchecked())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a path; invalid escapes are kept as they are.
fn percent_decode(path: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !path.contains(&b'%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(path[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// Splits a request target into (path, query). An absolute-form target
/// (`http://host/path`) contributes its path only.
fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    // A fragment is never part of the resource (RFC 9110 §4.2.4); clients should not send it.
    let mut t = match target.iter().position(|&b| b == b'#') {
        Some(h) => &target[..h],
        None => target,
    };
    if !t.starts_with(b"/") {
        if let Some(pos) = t.windows(3).position(|w| w == b"://") {
            let rest = &t[pos + 3..];
            t = match rest.iter().position(|&b| b == b'/' || b == b'?') {
                Some(p) if rest[p] == b'/' => &rest[p..],
                Some(p) => &rest[p..],
                None => b"",
            };
        }
    }
    match t.iter().position(|&b| b == b'?') {
        Some(q) => (&t[..q], &t[q + 1..]),
        None => (t, b""),
    }
}

impl EnvironBuilder {
    pub fn new(
        py: Python<'_>,
        settings: &WsgiSettings,
        extra: Option<&Bound<'_, PyDict>>,
        file_wrapper: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let template = PyDict::new(py);
        let sys = py.import("sys")?;
        template.set_item("SCRIPT_NAME", "")?;
        template.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
        template.set_item("wsgi.url_scheme", settings.url_scheme.as_str())?;
        template.set_item("wsgi.errors", sys.getattr("stderr")?)?;
        template.set_item("wsgi.multithread", true)?;
        template.set_item("wsgi.multiprocess", settings.multiprocess)?;
        template.set_item("wsgi.run_once", false)?;
        template.set_item("wsgi.input_terminated", true)?;
        template.set_item("wsgi.file_wrapper", file_wrapper)?;
        template.set_item(
            "SERVER_SOFTWARE",
            concat!("unyoke/", env!("CARGO_PKG_VERSION")),
        )?;
        crate::extensions::add_to_template(py, &template)?;
        if let Some(extra) = extra {
            for (k, v) in extra.iter() {
                template.set_item(k, v)?;
            }
        }
        let methods = [
            "GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
        ]
        .iter()
        .map(|m| (m.as_bytes(), intern(py, m)))
        .collect();
        let builder = EnvironBuilder {
            template: template.unbind(),
            k_method: intern(py, "REQUEST_METHOD"),
            k_path: intern(py, "PATH_INFO"),
            k_query: intern(py, "QUERY_STRING"),
            k_protocol: intern(py, "SERVER_PROTOCOL"),
            k_remote_addr: intern(py, "REMOTE_ADDR"),
            k_remote_port: intern(py, "REMOTE_PORT"),
            k_raw_uri: intern(py, "RAW_URI"),
            k_request_uri: intern(py, "REQUEST_URI"),
            k_server_name: intern(py, "SERVER_NAME"),
            k_server_port: intern(py, "SERVER_PORT"),
            k_input: intern(py, "wsgi.input"),
            empty_input: Py::new(py, Input::empty())?,
            v_http10: intern(py, "HTTP/1.0"),
            v_http11: intern(py, "HTTP/1.1"),
            v_empty: intern(py, ""),
            methods,
            known_headers: {
                let mut by_len: Vec<Vec<(&'static [u8], Py<PyString>)>> =
                    (0..=KNOWN_NAME_MAX).map(|_| Vec::new()).collect();
                for n in KNOWN_HEADERS {
                    let key = intern(py, &environ_key(n.as_bytes()));
                    if let Some(bucket) = by_len.get_mut(n.len()) {
                        bucket.push((n.as_bytes(), key));
                    }
                }
                by_len
            },
            header_keys: Mutex::new(HashMap::new()),
            server_name: settings.server_name.as_deref().map(|s| intern(py, s)),
            listener_templates: Mutex::new(Vec::new()),
            forwarded_allow: settings.forwarded_allow_ips.clone(),
        };
        // The keys every request has, present in the template: the copy then replaces
        // values in place instead of inserting, and its table is already large enough for
        // the request's headers (inserting ~11 keys into a copy of a small table resized
        // it once or twice per request). Four hold their usual value (GET, HTTP/1.1, no
        // query, the input of a request without a body), which `build` or the handler
        // replaces only when the request differs; the others hold a placeholder that
        // `build` (or the listener's template) always replaces.
        let template = builder.template.bind(py);
        for k in [
            &builder.k_path,
            &builder.k_query,
            &builder.k_raw_uri,
            &builder.k_request_uri,
            &builder.k_server_name,
            &builder.k_server_port,
            &builder.k_remote_addr,
            &builder.k_remote_port,
        ] {
            template.set_item(k, &builder.v_empty)?;
        }
        template.set_item(&builder.k_input, &builder.empty_input)?;
        template.set_item(&builder.k_method, intern(py, "GET"))?;
        template.set_item(&builder.k_protocol, &builder.v_http11)?;
        Ok(builder)
    }

    fn header_key<'py>(&self, py: Python<'py>, name: &[u8]) -> Option<Bound<'py, PyString>> {
        // Lowercased once (into the stack) for the known names: then a few whole-slice
        // comparisons among the names of that length, where comparing case-insensitively
        // against each known name in turn cost a few hundred instructions per header.
        let mut lower = [0u8; KNOWN_NAME_MAX];
        if let Some(bucket) = self.known_headers.get(name.len()) {
            let lower = &mut lower[..name.len()];
            let mut underscore = false;
            for (d, &b) in lower.iter_mut().zip(name) {
                underscore |= b == b'_';
                *d = b.to_ascii_lowercase();
            }
            if underscore {
                // Dropped: `X_Foo` would collide with `X-Foo` in the environ.
                return None;
            }
            if let Some((_, k)) = bucket.iter().find(|(n, _)| *n == &*lower) {
                return Some(k.bind(py).clone());
            }
        } else if name.contains(&b'_') {
            return None;
        }
        let mut cache = self.header_keys.lock();
        if let Some(k) = cache.get(name) {
            return Some(k.bind(py).clone());
        }
        let key = environ_key(name);
        let key = PyString::intern(py, &key);
        if cache.len() < HEADER_KEY_CACHE {
            cache.insert(name.to_vec(), key.clone().unbind());
        }
        Some(key)
    }

    /// The template of the listener `conn` arrived on (see [`ListenerTemplate`]).
    ///
    /// Every request copies it: one dictionary shared by all the listener's connections
    /// stays in the CPU's caches, where a template per connection (tried before) was
    /// read from memory on every request once a few hundred connections took turns
    /// (callgrind's cache simulation, 256 connections, 512 KiB last-level cache: ~11 of
    /// the ~93 misses per request were in copying it). The peer's address is stored
    /// into the copy instead: two dictionary stores.
    fn listener_template(&self, py: Python<'_>, conn: &ConnInfo) -> PyResult<Py<PyDict>> {
        let find = |cache: &[ListenerTemplate]| {
            cache
                .iter()
                .find(|(a, tls, _)| *a == conn.local && *tls == conn.tls)
                .map(|(_, _, t)| t.clone_ref(py))
        };
        if let Some(t) = find(&self.listener_templates.lock()) {
            return Ok(t);
        }
        // Made without the lock held: allocating the dictionary may run the garbage
        // collector, and a finalizer that lets the GIL go would let another thread block
        // on this lock while holding the GIL.
        let (name, port) = match &conn.local {
            PeerAddr::Tcp(a) => (a.ip().to_string(), a.port().to_string()),
            PeerAddr::Unix(p) => (
                if p.is_empty() {
                    "localhost".to_string()
                } else {
                    p.clone()
                },
                String::new(),
            ),
        };
        let env = self.template.bind(py).copy()?;
        match &self.server_name {
            Some(n) => env.set_item(&self.k_server_name, n)?,
            None => env.set_item(&self.k_server_name, name)?,
        }
        env.set_item(&self.k_server_port, port)?;
        if conn.tls {
            env.set_item("wsgi.url_scheme", "https")?;
        }
        let env = env.unbind();
        let mut cache = self.listener_templates.lock();
        if let Some(t) = find(&cache) {
            return Ok(t); // made meanwhile by another thread
        }
        if cache.len() < LISTENER_TEMPLATES_MAX {
            cache.push((conn.local.clone(), conn.tls, env.clone_ref(py)));
        }
        Ok(env)
    }

    /// The peer's address and port as environ values.
    fn remote<'py>(
        &self,
        py: Python<'py>,
        conn: &ConnInfo,
    ) -> (Bound<'py, PyString>, Bound<'py, PyString>) {
        match &conn.peer {
            PeerAddr::Tcp(a) => (
                PyString::new(py, &a.ip().to_string()),
                PyString::new(py, &a.port().to_string()),
            ),
            PeerAddr::Unix(_) => (self.v_empty.bind(py).clone(), self.v_empty.bind(py).clone()),
        }
    }

    /// What a connection keeps for its requests (see [`ConnEnviron`]).
    fn conn_environ(&self, py: Python<'_>, conn: &ConnInfo) -> PyResult<ConnEnviron> {
        let (addr, port) = self.remote(py, conn);
        Ok(ConnEnviron {
            template: self.listener_template(py, conn)?,
            remote_addr: addr.unbind(),
            remote_port: port.unbind(),
        })
    }

    /// The environ for one request.
    pub fn build<'py>(
        &self,
        py: Python<'py>,
        ex: &Exchange<ReqState>,
        pretend_http10: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (head, conn) = (&ex.head, &*ex.conn);
        // A connection's first request makes what it needs for itself; what stays the
        // same is kept from its second on. A connection used once (or once per idle
        // period) then leaves nothing behind in the interpreter's memory when it is set
        // aside.
        let kept = if ex.earlier_requests == 0 {
            None
        } else {
            conn.cache.get_or_try_init(|| self.conn_environ(py, conn))?
        };
        // (Also when the cache holds another type: made for this request alone.)
        let env = match kept {
            Some(k) => {
                let env = k.template.bind(py).copy()?;
                env.set_item(&self.k_remote_addr, &k.remote_addr)?;
                env.set_item(&self.k_remote_port, &k.remote_port)?;
                env
            }
            None => {
                let env = self.listener_template(py, conn)?.bind(py).copy()?;
                let (addr, port) = self.remote(py, conn);
                env.set_item(&self.k_remote_addr, addr)?;
                env.set_item(&self.k_remote_port, port)?;
                env
            }
        };
        let method = head.method();
        if method != b"GET" {
            match self.methods.iter().find(|(m, _)| *m == method) {
                Some((_, v)) => env.set_item(&self.k_method, v)?,
                None => env.set_item(&self.k_method, latin1(py, method)?)?,
            }
        }
        let target = head.target();
        let (path, query) = split_target(target);
        let raw = latin1(py, target)?;
        let path = percent_decode(path);
        if query.is_empty() && *path == *target {
            // The same text: one string for both (an origin-form target with no escapes).
            env.set_item(&self.k_path, &raw)?;
        } else {
            env.set_item(&self.k_path, latin1(py, &path)?)?;
        }
        if !query.is_empty() {
            env.set_item(&self.k_query, latin1(py, query)?)?;
        }
        env.set_item(&self.k_raw_uri, &raw)?;
        env.set_item(&self.k_request_uri, &raw)?;
        // Exactly as the client sent it, whatever max_http_version says.
        let _ = pretend_http10;
        if head.version == Version::Http10 {
            env.set_item(&self.k_protocol, &self.v_http10)?;
        }
        if !self.forwarded_allow.is_empty() {
            if let PeerAddr::Tcp(peer) = &conn.peer {
                if self.forwarded_allow.iter().any(|n| n.contains(peer.ip())) {
                    let (client, proto) = forwarded(head, &self.forwarded_allow);
                    if let Some(client) = client {
                        env.set_item(&self.k_remote_addr, client)?;
                    }
                    if let Some(proto) = proto {
                        env.set_item("wsgi.url_scheme", proto)?;
                    }
                }
            }
        }
        for (name, value) in head.headers() {
            let Some(key) = self.header_key(py, name) else {
                continue;
            };
            let value = latin1(py, value)?;
            // One dictionary lookup for the usual case, a header seen once: insert unless
            // the key is there (a repeated header), then look at what is there.
            let before = env.len();
            // SAFETY: `env`, `key` and `value` are live objects and the GIL is held;
            // PyDict_SetDefault returns a borrowed reference (NULL with an exception set
            // on failure), which is turned into an owned one at once.
            let present = unsafe {
                let p = PyDict_SetDefault(env.as_ptr(), key.as_ptr(), value.as_ptr());
                Bound::from_borrowed_ptr_or_err(py, p)?
            };
            if env.len() > before {
                continue; // inserted: the first of its name
            }
            let is_http = key
                .to_str()
                .map(|k| k.starts_with("HTTP_"))
                .unwrap_or(false);
            // (Otherwise a repeated, identical Content-Length: the codec checked.)
            if is_http {
                let sep = if name.eq_ignore_ascii_case(b"cookie") {
                    "; "
                } else {
                    ", "
                };
                let joined = format!("{}{}{}", present.str()?.to_str()?, sep, value.to_str()?);
                env.set_item(key, joined)?;
            }
        }
        Ok(env)
    }
}

// Public CPython API (not in the limited API) that pyo3's ffi does not declare.
extern "C" {
    fn PyDict_SetDefault(
        mp: *mut pyo3::ffi::PyObject,
        key: *mut pyo3::ffi::PyObject,
        default: *mut pyo3::ffi::PyObject,
    ) -> *mut pyo3::ffi::PyObject;
}

/// The client address and scheme a trusted proxy reports: RFC 7239 `Forwarded` if
/// present, else `X-Forwarded-For` / `X-Forwarded-Proto`. The client is the rightmost
/// address that is not itself a trusted proxy (addresses further left were written by
/// the client and prove nothing).
fn forwarded(
    head: &RequestHead,
    trusted: &[unyoke_server::Network],
) -> (Option<String>, Option<String>) {
    let all = |name: &[u8]| -> Vec<String> {
        head.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect()
    };
    let pick = |hops: &[(Option<String>, Option<String>)]| -> (Option<String>, Option<String>) {
        for (addr, proto) in hops.iter().rev() {
            let Some(a) = addr else { continue };
            let ip = a.parse::<std::net::IpAddr>().ok();
            if ip.is_some_and(|ip| trusted.iter().any(|n| n.contains(ip))) {
                continue;
            }
            return (Some(a.clone()), proto.clone());
        }
        hops.first()
            .map(|(a, p)| (a.clone(), p.clone()))
            .unwrap_or((None, None))
    };
    let forwarded = all(b"forwarded");
    if !forwarded.is_empty() {
        let hops: Vec<(Option<String>, Option<String>)> = forwarded
            .iter()
            .map(|element| {
                let mut addr = None;
                let mut proto = None;
                for pair in element.split(';') {
                    let Some((k, v)) = pair.split_once('=') else {
                        continue;
                    };
                    let v = v.trim().trim_matches('"');
                    match k.trim().to_ascii_lowercase().as_str() {
                        "for" => {
                            // for=192.0.2.60, for="[2001:db8::1]:4711", for=unknown
                            let v = v
                                .strip_prefix('[')
                                .map_or(v, |r| r.split(']').next().unwrap_or(r));
                            let v = if v.matches(':').count() == 1 {
                                v.split(':').next().unwrap_or(v)
                            } else {
                                v
                            };
                            addr = Some(v.to_string());
                        }
                        "proto" => proto = Some(v.to_ascii_lowercase()),
                        _ => {}
                    }
                }
                (addr, proto.filter(|p| p == "http" || p == "https"))
            })
            .collect();
        return pick(&hops);
    }
    let xff = all(b"x-forwarded-for");
    let proto = all(b"x-forwarded-proto")
        .first()
        .map(|p| p.to_ascii_lowercase())
        .filter(|p| p == "http" || p == "https");
    let hops: Vec<(Option<String>, Option<String>)> =
        xff.into_iter().map(|a| (Some(a), None)).collect();
    let (client, _) = pick(&hops);
    (client, proto)
}
