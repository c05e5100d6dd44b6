//! The WSGI handler: calls the application and turns its answer into engine output.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyList, PyTuple};
use unyoke_server::{
    ConnInfo, Exchange, Handler, OutChunk, ParkOutcome, PeerAddr, ResponseStart, OUTPUT_HIGH_WATER,
};

use unyoke_http::BodyFraming;

use crate::environ::EnvironBuilder;
use crate::extensions::{self, Pending, Responder};
use crate::file_wrapper::FileWrapper;
use crate::input::Input;
use crate::settings::WsgiSettings;
use crate::start_response::{type_name, StartResponse};

/// What a request keeps between its application call and its end. Requests answered
/// at once with a list keep nothing (and cost no trip back at the end).
pub struct ReqState {
    /// The object the application returned, if it has `close()`.
    pub(crate) closeable: Option<Py<PyAny>>,
    /// The iterator over the body, while it is not exhausted.
    pub(crate) iterator: Option<Py<PyIterator>>,
    pub(crate) start_response: Py<StartResponse>,
    /// The environ, when something later needs it (posthooks, coroutine results).
    pub(crate) environ: Option<Py<PyDict>>,
    /// `environ['unyoke.posthooks']`, when the application added hooks.
    pub(crate) posthooks: Option<Py<PyList>>,
    /// The deferred responder the application returned.
    pub(crate) responder: Option<Py<Responder>>,
    /// The coroutine operation a parked generator waits for.
    pub(crate) pending: Option<Pending>,
    /// The value `unyoke.signal` delivered to a waiting generator.
    pub(crate) signal_value: Option<Py<PyAny>>,
}

impl ReqState {
    fn new(sr: &Bound<'_, StartResponse>) -> Self {
        ReqState {
            closeable: None,
            iterator: None,
            start_response: sr.clone().unbind(),
            environ: None,
            posthooks: None,
            responder: None,
            pending: None,
            signal_value: None,
        }
    }
}

/// Logs `err` with its traceback on the error logger.
pub fn log_error(py: Python<'_>, logger: &Bound<'_, PyAny>, msg: &str, err: &PyErr) {
    let kwargs = PyDict::new(py);
    let _ = kwargs.set_item("exc_info", exc_info(py, err));
    if logger.call_method("error", (msg,), Some(&kwargs)).is_err() {
        err.print(py);
    }
}

/// Settings and objects every request of the handler uses.
pub struct HandlerShared {
    pub settings: WsgiSettings,
}

pub struct WsgiHandler {
    app: Py<PyAny>,
    /// Applications mounted by path prefix, longest prefix first (`mounts`).
    mounts: Vec<(String, Py<PyAny>)>,
    on_connect: Option<Py<PyAny>>,
    on_disconnect: Option<Py<PyAny>>,
    environ: EnvironBuilder,
    shared: Arc<HandlerShared>,
    error_logger: Py<PyAny>,
    traceback_format: Py<PyAny>,
}

type Ex = Arc<Exchange<ReqState>>;

/// A one-piece body up to this size, sent under a Content-Length, is carried in the
/// head's buffer (see `ResponseStart::inline_body`) rather than in its own allocation:
/// the connection copies pieces this small after the head anyway.
const INLINE_BODY_UP_TO: usize = 1024;

/// Optional parts of a handler: mounted applications and channel events.
#[derive(Default)]
pub struct Hooks {
    pub mounts: Vec<(String, Py<PyAny>)>,
    pub on_connect: Option<Py<PyAny>>,
    pub on_disconnect: Option<Py<PyAny>>,
}

/// Whether `path` is `prefix` or below it (at a `/` boundary).
fn mounted_at(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl WsgiHandler {
    pub fn new(
        py: Python<'_>,
        app: Py<PyAny>,
        settings: WsgiSettings,
        extra_environ: Option<&Bound<'_, PyDict>>,
        hooks: Hooks,
    ) -> PyResult<Self> {
        let file_wrapper = py.get_type::<FileWrapper>();
        let environ = EnvironBuilder::new(py, &settings, extra_environ, file_wrapper.as_any())?;
        let error_logger = py
            .import("logging")?
            .call_method1("getLogger", ("unyoke.error",))?;
        let traceback_format = py.import("traceback")?.getattr("format_exception")?;
        let mut mounts = hooks.mounts;
        mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        Ok(WsgiHandler {
            app,
            mounts,
            on_connect: hooks.on_connect,
            on_disconnect: hooks.on_disconnect,
            environ,
            shared: Arc::new(HandlerShared { settings }),
            error_logger: error_logger.unbind(),
            traceback_format: traceback_format.unbind(),
        })
    }

    fn run_app(&self, py: Python<'_>, ex: &Ex) {
        let env = match self
            .environ
            .build(py, ex, self.shared.settings.pretend_http10)
        {
            Ok(env) => env,
            Err(e) => return self.fail(py, ex, None, e, "building the environ"),
        };
        // A request without a body keeps the template's `wsgi.input` (one shared input at
        // its end, see `Input::empty`).
        if ex.head.body != unyoke_http::BodyKind::Empty {
            let stored = Py::new(py, Input::new(Arc::clone(ex)))
                .and_then(|input| env.set_item(&self.environ.k_input, input));
            if let Err(e) = stored {
                return self.fail(py, ex, None, e, "building the environ");
            }
        }
        let sr = match Bound::new(
            py,
            StartResponse::new(Arc::clone(ex), Arc::clone(&self.shared)),
        ) {
            Ok(sr) => sr,
            Err(e) => return self.fail(py, ex, None, e, "building the environ"),
        };
        let posthooks = PyList::empty(py);
        if let Err(e) = env.set_item(pyo3::intern!(py, "unyoke.posthooks"), &posthooks) {
            return self.fail(py, ex, None, e, "building the environ");
        }
        let app = match self.route(py, &env) {
            Ok(app) => app,
            Err(e) => return self.fail(py, ex, None, e, "routing"),
        };
        let (result, _) = extensions::with_current(ex, Some(&sr), || app.call1((&env, &sr)));
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                self.keep_hooks(ex, &sr, &env, &posthooks);
                return self.fail(py, ex, Some(&sr), e, "calling the application");
            }
        };
        if let Ok(responder) = result.downcast::<Responder>() {
            // Deferred: the application answers later; watch for the client leaving.
            let mut st = ReqState::new(&sr);
            st.responder = Some(responder.clone().unbind());
            st.environ = Some(env.clone().unbind());
            if !posthooks.is_empty() {
                st.posthooks = Some(posthooks.unbind());
            }
            *ex.state.lock() = Some(st);
            ex.watch_client();
            // A flush(callback) made inside the call may already be on the wire.
            responder
                .borrow_mut()
                .fire_flushed(py, ex.written(), self.error_logger.bind(py));
            return;
        }
        self.consume(py, ex, &sr, result, &env);
        self.keep_hooks(ex, &sr, &env, &posthooks);
    }

    /// Keeps the posthooks (and the environ they take) when the application added any.
    fn keep_hooks(
        &self,
        ex: &Ex,
        sr: &Bound<'_, StartResponse>,
        env: &Bound<'_, PyDict>,
        hooks: &Bound<'_, PyList>,
    ) {
        if hooks.is_empty() {
            return;
        }
        let mut state = ex.state.lock();
        let st = state.get_or_insert_with(|| ReqState::new(sr));
        st.posthooks = Some(hooks.clone().unbind());
        st.environ = Some(env.clone().unbind());
    }

    /// The application for this request: the longest mounted prefix of PATH_INFO, which
    /// moves from PATH_INFO to SCRIPT_NAME; the main application otherwise.
    fn route<'py>(&self, py: Python<'py>, env: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        if self.mounts.is_empty() {
            return Ok(self.app.bind(py).clone());
        }
        let path: String = env
            .get_item("PATH_INFO")?
            .map(|p| p.extract())
            .transpose()?
            .unwrap_or_default();
        for (prefix, app) in &self.mounts {
            if mounted_at(prefix, &path) {
                let p = prefix.trim_end_matches('/');
                env.set_item("SCRIPT_NAME", p)?;
                env.set_item("PATH_INFO", &path[p.len()..])?;
                return Ok(app.bind(py).clone());
            }
        }
        Ok(self.app.bind(py).clone())
    }

    /// Handles what the application returned.
    fn consume(
        &self,
        py: Python<'_>,
        ex: &Ex,
        sr: &Bound<'_, StartResponse>,
        result: Bound<'_, PyAny>,
        env: &Bound<'_, PyDict>,
    ) {
        // The common case: a list (or tuple) of bytes, all known now. (Iterating it
        // runs no Python code, so the list cannot change meanwhile.)
        let all = if let Ok(list) = result.downcast_exact::<PyList>() {
            Some(self.respond_all(ex, sr, list.iter()))
        } else if let Ok(tuple) = result.downcast_exact::<PyTuple>() {
            Some(self.respond_all(ex, sr, tuple.iter()))
        } else {
            None
        };
        if let Some(sent) = all {
            if let Err(e) = sent {
                self.fail(py, ex, Some(sr), e, "sending the response");
            }
            return;
        }
        if let Ok(fw) = result.downcast::<FileWrapper>() {
            match self.send_file(py, ex, sr, fw) {
                Ok(true) => {
                    self.keep_for_close(py, ex, sr, &result, None);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    self.keep_for_close(py, ex, sr, &result, None);
                    return self.fail(py, ex, Some(sr), e, "sending the file");
                }
            }
        }
        let iterator = match result.try_iter() {
            Ok(it) => it,
            Err(_) => {
                let e = pyo3::exceptions::PyTypeError::new_err(format!(
                    "the application returned {}, which is not an iterable of bytes",
                    type_name(&result)
                ));
                self.keep_for_close(py, ex, sr, &result, None);
                return self.fail(py, ex, Some(sr), e, "iterating the response");
            }
        };
        self.keep_for_close(py, ex, sr, &result, Some(iterator.unbind()));
        if let Some(st) = ex.state.lock().as_mut() {
            // Coroutine operations put their results in the environ.
            st.environ = Some(env.clone().unbind());
        }
        self.pump(py, ex);
    }

    fn keep_for_close(
        &self,
        _py: Python<'_>,
        ex: &Ex,
        sr: &Bound<'_, StartResponse>,
        result: &Bound<'_, PyAny>,
        iterator: Option<Py<PyIterator>>,
    ) {
        let closeable = result
            .hasattr(pyo3::intern!(result.py(), "close"))
            .unwrap_or(false)
            .then(|| result.clone().unbind());
        let mut state = ex.state.lock();
        let st = state.get_or_insert_with(|| ReqState::new(sr));
        st.closeable = closeable;
        st.iterator = iterator;
    }

    fn respond_all<'py>(
        &self,
        ex: &Ex,
        sr: &Bound<'py, StartResponse>,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let mut sr = sr.borrow_mut();
        // The first chunk apart: a one-item body (the usual) then needs no vector, and a
        // small one travels inside the head's buffer.
        let mut first: Option<Bound<'py, PyBytes>> = None;
        let mut chunks = Vec::new();
        let mut total = 0u64;
        for item in items {
            let b = item.downcast_into::<PyBytes>().map_err(|e| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "the response iterable yielded {}, not bytes",
                    type_name(e.into_inner().as_any())
                ))
            })?;
            let len = b.as_bytes().len();
            if len > 0 {
                total += len as u64;
                if first.is_none() {
                    first = Some(b);
                } else {
                    chunks.push(crate::start_response::to_bytes(&b));
                }
            }
        }
        sr.sent += total;
        if let Some(mistake) = sr.length_mistake() {
            self.warn_app(ex, &mistake);
        }
        if !sr.head_sent {
            if sr.status.is_none() {
                return Err(pyo3::exceptions::PyAssertionError::new_err(
                    "the application returned without calling start_response",
                ));
            }
            // Everything is here: one step, head and body.
            let mut start = sr.prepare_head(Some(total))?;
            let small = first
                .as_ref()
                .map(|b| b.as_bytes())
                .filter(|d| chunks.is_empty() && d.len() <= INLINE_BODY_UP_TO);
            if let (Some(data), BodyFraming::Length(_)) = (small, start.framing) {
                start.head.extend_from_slice(data);
                start.inline_body = data.len();
                ex.respond(start, std::iter::empty());
            } else {
                let first = first.map(|b| crate::start_response::to_bytes(&b));
                ex.respond(start, first.into_iter().chain(chunks).map(OutChunk::Data));
            }
        } else {
            let first = first.map(|b| crate::start_response::to_bytes(&b));
            for c in first.into_iter().chain(chunks) {
                ex.send(OutChunk::Data(c));
            }
            ex.finish();
        }
        Ok(())
    }

    /// Sends a file wrapper's file with sendfile when it is a regular file.
    fn send_file(
        &self,
        py: Python<'_>,
        ex: &Ex,
        sr: &Bound<'_, StartResponse>,
        fw: &Bound<'_, FileWrapper>,
    ) -> PyResult<bool> {
        use std::os::fd::FromRawFd;
        let filelike = fw.borrow().filelike.clone_ref(py);
        let f = filelike.bind(py);
        let Ok(fileno) = f.call_method0("fileno").and_then(|n| n.extract::<i32>()) else {
            return Ok(false);
        };
        let pos: u64 = f
            .call_method0("tell")
            .and_then(|p| p.extract())
            .unwrap_or(0);
        // SAFETY: fstat on a descriptor the file object owns, into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fileno, &mut st) } != 0
            || (st.st_mode & libc::S_IFMT) != libc::S_IFREG
        {
            return Ok(false);
        }
        // SAFETY: dup of an open descriptor; the result is checked and owned below.
        let dup = unsafe { libc::fcntl(fileno, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Ok(false);
        }
        // SAFETY: `dup` is a fresh descriptor owned by nothing else.
        let file = unsafe { std::fs::File::from_raw_fd(dup) };
        let size = (st.st_size as u64).saturating_sub(pos);
        let mut sr = sr.borrow_mut();
        let len = sr.content_length.map_or(size, |cl| cl.min(size));
        if !sr.head_sent {
            let start = sr.prepare_head(Some(len))?;
            ex.start(start);
        }
        ex.send(OutChunk::File {
            file,
            offset: pos,
            len,
        });
        ex.finish();
        Ok(true)
    }

    /// Iterates the response body until it ends or enough output is queued.
    fn pump(&self, py: Python<'_>, ex: &Ex) {
        let (iterator, sr) = {
            let state = ex.state.lock();
            let Some(state) = state.as_ref() else { return };
            let Some(it) = &state.iterator else { return };
            (it.clone_ref(py), state.start_response.clone_ref(py))
        };
        let mut iterator = iterator.bind(py).clone();
        let sr = sr.bind(py);
        let min_chunk = self.shared.settings.minimum_chunk_size;
        let mut coalesced: Vec<u8> = Vec::new();
        loop {
            let (next, op) = extensions::with_current(ex, Some(sr), || iterator.next());
            match next {
                None => {
                    if let Some(st) = ex.state.lock().as_mut() {
                        st.iterator = None;
                    }
                    let mut r = sr.borrow_mut();
                    if !coalesced.is_empty() {
                        let b = PyBytes::new(py, &coalesced);
                        if let Err(e) = r.send_chunk(&b) {
                            drop(r);
                            return self.fail(py, ex, Some(sr), e, "sending the response");
                        }
                    }
                    if let Some(mistake) = r.length_mistake() {
                        self.warn_app(ex, &mistake);
                    }
                    if !r.head_sent {
                        match r.prepare_head(Some(0)) {
                            Ok(start) => {
                                ex.respond(start, std::iter::empty());
                            }
                            Err(e) => {
                                drop(r);
                                return self.fail(py, ex, Some(sr), e, "sending the response");
                            }
                        }
                    } else {
                        ex.finish();
                    }
                    return;
                }
                Some(Err(e)) => return self.fail(py, ex, Some(sr), e, "iterating the response"),
                Some(Ok(item)) => {
                    let Ok(b) = item.downcast::<PyBytes>() else {
                        let e = pyo3::exceptions::PyTypeError::new_err(format!(
                            "the response iterable yielded {}, not bytes",
                            type_name(&item)
                        ));
                        return self.fail(py, ex, Some(sr), e, "iterating the response");
                    };
                    if min_chunk > 0 {
                        coalesced.extend_from_slice(b.as_bytes());
                        if coalesced.len() < min_chunk && op.is_none() {
                            continue;
                        }
                        let joined = PyBytes::new(py, &coalesced);
                        coalesced.clear();
                        let sent = sr.borrow_mut().send_chunk(&joined);
                        match sent {
                            Ok(true) => {}
                            Ok(false) => return,
                            Err(e) => {
                                return self.fail(py, ex, Some(sr), e, "sending the response")
                            }
                        }
                    } else {
                        let sent = sr.borrow_mut().send_chunk(b);
                        match sent {
                            Ok(true) => {}
                            Ok(false) => return, // client gone; close() follows
                            Err(e) => {
                                return self.fail(py, ex, Some(sr), e, "sending the response")
                            }
                        }
                    }
                    if sr.borrow().length_reached() {
                        // The body is complete: stop iterating (an iterable that would
                        // go on forever must not spin a thread), finish, and let close()
                        // come with the end of the exchange.
                        if let Some(st) = ex.state.lock().as_mut() {
                            st.iterator = None;
                        }
                        if let Some(mistake) = sr.borrow().length_mistake() {
                            self.warn_app(ex, &mistake);
                        }
                        ex.finish();
                        return;
                    }
                    if let Some(op) = op {
                        // A coroutine operation: send what came so far, then park.
                        if !coalesced.is_empty() {
                            let joined = PyBytes::new(py, &coalesced);
                            coalesced.clear();
                            if let Err(e) = sr.borrow_mut().send_chunk(&joined) {
                                return self.fail(py, ex, Some(sr), e, "sending the response");
                            }
                        }
                        if let Err(e) = extensions::start_op(py, ex, op) {
                            return self.fail(
                                py,
                                ex,
                                Some(sr),
                                e,
                                "starting a coroutine operation",
                            );
                        }
                        return;
                    }
                    if ex.queued_bytes() >= OUTPUT_HIGH_WATER {
                        if !coalesced.is_empty() {
                            let joined = PyBytes::new(py, &coalesced);
                            let _ = sr.borrow_mut().send_chunk(&joined);
                        }
                        ex.want_more();
                        return;
                    }
                }
            }
        }
    }

    /// Logs a mistake of the application that the server worked around.
    fn warn_app(&self, ex: &Ex, mistake: &str) {
        Python::with_gil(|py| {
            let msg = format!(
                "{} {}: {mistake}",
                String::from_utf8_lossy(ex.head.method()),
                String::from_utf8_lossy(ex.head.target())
            );
            let _ = self.error_logger.bind(py).call_method1("warning", (msg,));
        });
    }

    /// The application failed: log it; answer 500 if nothing was sent, else cut the
    /// connection so a partial body never passes for a whole one.
    fn fail(
        &self,
        py: Python<'_>,
        ex: &Ex,
        sr: Option<&Bound<'_, StartResponse>>,
        err: PyErr,
        during: &str,
    ) {
        let head_sent = sr.map(|s| s.borrow().head_sent).unwrap_or(false);
        if let (Some(unyoke_server::BodyError::Malformed(status)), false) =
            (ex.body_error(), head_sent)
        {
            // The client's body was at fault (too large, bad chunking), not the
            // application: answer with the client error, and close.
            let reason = match status {
                413 => "Content Too Large",
                431 => "Request Header Fields Too Large",
                501 => "Not Implemented",
                _ => "Bad Request",
            };
            let body = format!("{status} {reason}\n").into_bytes();
            let framing = unyoke_http::BodyFraming::Length(body.len() as u64);
            respond_plain(ex, status, reason, body, framing, false);
            return;
        }
        let head = &ex.head;
        let msg = format!(
            "Error {during} for {} {}",
            String::from_utf8_lossy(head.method()),
            String::from_utf8_lossy(head.target())
        );
        log_error(py, self.error_logger.bind(py), &msg, &err);
        if head_sent {
            ex.abort();
            return;
        }
        let mut body = b"Internal Server Error\n".to_vec();
        if self.shared.settings.expose_tracebacks {
            if let Ok(lines) = self.traceback_format.bind(py).call1(exc_info(py, &err)) {
                if let Ok(lines) = lines.extract::<Vec<String>>() {
                    body.extend_from_slice(b"\n");
                    for l in lines {
                        body.extend_from_slice(l.as_bytes());
                    }
                }
            }
        }
        let framing = if ex.head.is_head() {
            unyoke_http::BodyFraming::NoBody
        } else {
            unyoke_http::BodyFraming::Length(body.len() as u64)
        };
        respond_plain(
            ex,
            500,
            "Internal Server Error",
            body,
            framing,
            ex.keep_alive(),
        );
    }
}

/// Answers with a plain-text response of the server's own (an error page).
fn respond_plain(
    ex: &Ex,
    status: u16,
    reason: &str,
    body: Vec<u8>,
    framing: unyoke_http::BodyFraming,
    keep_alive: bool,
) {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    unyoke_http::write_header(&mut head, b"Content-Type", b"text/plain; charset=utf-8");
    unyoke_http::write_header(
        &mut head,
        b"Content-Length",
        body.len().to_string().as_bytes(),
    );
    ex.respond(
        ResponseStart {
            head,
            status,
            framing,
            keep_alive,
            inline_body: 0,
        },
        std::iter::once(OutChunk::Data(body.into())),
    );
}

/// `(host, port)` for TCP, the path for UNIX sockets.
fn addr_object<'py>(py: Python<'py>, a: &PeerAddr) -> PyResult<Bound<'py, PyAny>> {
    Ok(match a {
        PeerAddr::Tcp(s) => (s.ip().to_string(), s.port()).into_pyobject(py)?.into_any(),
        PeerAddr::Unix(p) => p.into_pyobject(py)?.into_any(),
    })
}

/// `(type, value, traceback)` of an error, as `logging` and `traceback` take it.
fn exc_info<'py>(py: Python<'py>, err: &PyErr) -> Bound<'py, PyTuple> {
    let tb = err
        .traceback(py)
        .map(|t| t.into_any())
        .unwrap_or_else(|| py.None().into_bound(py));
    PyTuple::new(
        py,
        [
            err.get_type(py).into_any(),
            err.value(py).clone().into_any(),
            tb,
        ],
    )
    .unwrap_or_else(|_| PyTuple::empty(py))
}

impl Handler for WsgiHandler {
    type State = ReqState;

    fn call(&self, ex: &Ex) {
        Python::with_gil(|py| self.run_app(py, ex));
    }

    fn resume(&self, ex: &Ex) {
        Python::with_gil(|py| {
            // Back from a park: put the operation's result in the environ first.
            if let Some(outcome) = ex.take_park_outcome() {
                let (pending, environ) = {
                    let mut state = ex.state.lock();
                    let Some(st) = state.as_mut() else { return };
                    (
                        st.pending.take(),
                        st.environ.as_ref().map(|e| e.clone_ref(py)),
                    )
                };
                if let (Some(pending), Some(environ)) = (pending, environ) {
                    let timed_out = outcome == ParkOutcome::TimedOut;
                    if let Err(e) =
                        extensions::deliver(py, environ.bind(py), ex, pending, timed_out)
                    {
                        return self.fail(py, ex, None, e, "resuming after a coroutine operation");
                    }
                }
            }
            self.pump(py, ex)
        });
    }

    fn close(&self, ex: &Ex) {
        let state = ex.state.lock().take();
        let Some(mut state) = state else { return };
        Python::with_gil(|py| {
            let log = self.error_logger.bind(py);
            if let Some(Pending::Wait(name)) = state.pending.take() {
                extensions::unregister_waiter(&name, ex);
            }
            if let Some(r) = &state.responder {
                r.borrow_mut(py).fire_close(py, log);
            }
            if let Some(obj) = &state.closeable {
                if let Err(e) = obj.bind(py).call_method0("close") {
                    log_error(py, log, "Error in the response iterable's close()", &e);
                }
            }
            if let (Some(hooks), Some(environ)) = (&state.posthooks, &state.environ) {
                for hook in hooks.bind(py).iter() {
                    let run = || -> PyResult<()> {
                        let (func, args, kwargs): (
                            Bound<'_, PyAny>,
                            Bound<'_, PyAny>,
                            Option<Bound<'_, PyDict>>,
                        ) = hook.extract()?;
                        let mut all = vec![environ.bind(py).clone().into_any()];
                        all.extend(args.try_iter()?.collect::<PyResult<Vec<_>>>()?);
                        func.call(PyTuple::new(py, all)?, kwargs.as_ref())?;
                        Ok(())
                    };
                    if let Err(e) = run() {
                        log_error(py, log, "Error in a post hook", &e);
                    }
                }
            }
            drop(state);
        });
    }

    fn written(&self, ex: &Ex) {
        Python::with_gil(|py| {
            let responder = ex
                .state
                .lock()
                .as_ref()
                .and_then(|s| s.responder.as_ref().map(|r| r.clone_ref(py)));
            if let Some(r) = responder {
                r.borrow_mut(py)
                    .fire_flushed(py, ex.written(), self.error_logger.bind(py));
            }
        });
    }

    fn wants_connection_events(&self) -> bool {
        self.on_connect.is_some() || self.on_disconnect.is_some()
    }

    fn connection_event(&self, info: &Arc<ConnInfo>, open: bool) {
        let hook = if open {
            &self.on_connect
        } else {
            &self.on_disconnect
        };
        let Some(hook) = hook else { return };
        Python::with_gil(|py| {
            let run = || -> PyResult<()> {
                let d = PyDict::new(py);
                d.set_item("id", info.id)?;
                d.set_item("peer", addr_object(py, &info.peer)?)?;
                d.set_item("local", addr_object(py, &info.local)?)?;
                hook.bind(py).call1((d,))?;
                Ok(())
            };
            if let Err(e) = run() {
                log_error(
                    py,
                    self.error_logger.bind(py),
                    "Error in a connection event hook",
                    &e,
                );
            }
        });
    }
}
