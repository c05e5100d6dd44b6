//! The WSGI handler: calls the application and turns its answer into engine output.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyList, PyTuple};
use unyoke_server::{Exchange, Handler, OutChunk, ResponseStart, OUTPUT_HIGH_WATER};

use crate::environ::EnvironBuilder;
use crate::file_wrapper::FileWrapper;
use crate::input::Input;
use crate::settings::WsgiSettings;
use crate::start_response::{type_name, StartResponse};

/// What a request keeps between its application call and its end.
pub struct ReqState {
    /// The object the application returned, if it has `close()`.
    closeable: Option<Py<PyAny>>,
    /// The iterator over the body, while it is not exhausted.
    iterator: Option<Py<PyIterator>>,
    start_response: Py<StartResponse>,
}

/// Settings and objects every request of the handler uses.
pub struct HandlerShared {
    pub settings: WsgiSettings,
}

pub struct WsgiHandler {
    app: Py<PyAny>,
    environ: EnvironBuilder,
    shared: Arc<HandlerShared>,
    error_logger: Py<PyAny>,
    traceback_format: Py<PyAny>,
}

type Ex = Arc<Exchange<ReqState>>;

impl WsgiHandler {
    pub fn new(
        py: Python<'_>,
        app: Py<PyAny>,
        settings: WsgiSettings,
        extra_environ: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let file_wrapper = py.get_type::<FileWrapper>();
        let environ = EnvironBuilder::new(py, &settings, extra_environ, file_wrapper.as_any())?;
        let error_logger = py
            .import("logging")?
            .call_method1("getLogger", ("unyoke.error",))?;
        let traceback_format = py.import("traceback")?.getattr("format_exception")?;
        Ok(WsgiHandler {
            app,
            environ,
            shared: Arc::new(HandlerShared { settings }),
            error_logger: error_logger.unbind(),
            traceback_format: traceback_format.unbind(),
        })
    }

    fn run_app(&self, py: Python<'_>, ex: &Ex) {
        let env =
            match self
                .environ
                .build(py, &ex.head, &ex.conn, self.shared.settings.pretend_http10)
            {
                Ok(env) => env,
                Err(e) => return self.fail(py, ex, None, e, "building the environ"),
            };
        let input = match Py::new(py, Input::new(Arc::clone(ex))) {
            Ok(i) => i,
            Err(e) => return self.fail(py, ex, None, e, "building the environ"),
        };
        if let Err(e) = env.set_item(&self.environ.k_input, input) {
            return self.fail(py, ex, None, e, "building the environ");
        }
        let sr = match Bound::new(
            py,
            StartResponse::new(Arc::clone(ex), Arc::clone(&self.shared)),
        ) {
            Ok(sr) => sr,
            Err(e) => return self.fail(py, ex, None, e, "building the environ"),
        };
        let result = match self.app.bind(py).call1((env, sr.clone())) {
            Ok(r) => r,
            Err(e) => return self.fail(py, ex, Some(&sr), e, "calling the application"),
        };
        self.consume(py, ex, &sr, result);
    }

    /// Handles what the application returned.
    fn consume(
        &self,
        py: Python<'_>,
        ex: &Ex,
        sr: &Bound<'_, StartResponse>,
        result: Bound<'_, PyAny>,
    ) {
        // The common case: a list (or tuple) of bytes, all known now.
        let items = if let Ok(list) = result.downcast_exact::<PyList>() {
            Some(list.iter().collect::<Vec<_>>())
        } else if let Ok(tuple) = result.downcast_exact::<PyTuple>() {
            Some(tuple.iter().collect::<Vec<_>>())
        } else {
            None
        };
        if let Some(items) = items {
            if let Err(e) = self.respond_all(ex, sr, &items) {
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
            .hasattr("close")
            .unwrap_or(false)
            .then(|| result.clone().unbind());
        *ex.state.lock() = Some(ReqState {
            closeable,
            iterator,
            start_response: sr.clone().unbind(),
        });
    }

    fn respond_all(
        &self,
        ex: &Ex,
        sr: &Bound<'_, StartResponse>,
        items: &[Bound<'_, PyAny>],
    ) -> PyResult<()> {
        let mut sr = sr.borrow_mut();
        let mut chunks = Vec::with_capacity(items.len());
        let mut total = 0u64;
        for item in items {
            let b = item.downcast::<PyBytes>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "the response iterable yielded {}, not bytes",
                    type_name(item)
                ))
            })?;
            let data = b.as_bytes();
            if !data.is_empty() {
                total += data.len() as u64;
                chunks.push(crate::start_response::to_bytes(b));
            }
        }
        if !sr.head_sent {
            if sr.status.is_none() {
                return Err(pyo3::exceptions::PyAssertionError::new_err(
                    "the application returned without calling start_response",
                ));
            }
            // Everything is here: one step, head and body.
            let start = sr.prepare_head(Some(total))?;
            ex.respond(start, chunks.into_iter().map(OutChunk::Data));
        } else {
            for c in chunks {
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
            match iterator.next() {
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
                        if coalesced.len() < min_chunk {
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
            let mut h = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
            unyoke_http::write_header(&mut h, b"Content-Type", b"text/plain; charset=utf-8");
            unyoke_http::write_header(&mut h, b"Content-Length", body.len().to_string().as_bytes());
            ex.respond(
                ResponseStart {
                    head: h,
                    status,
                    framing: unyoke_http::BodyFraming::Length(body.len() as u64),
                    keep_alive: false,
                },
                std::iter::once(OutChunk::Data(body.into())),
            );
            return;
        }
        let head = &ex.head;
        let msg = format!(
            "Error {during} for {} {}",
            String::from_utf8_lossy(head.method()),
            String::from_utf8_lossy(head.target())
        );
        let kwargs = PyDict::new(py);
        let _ = kwargs.set_item("exc_info", exc_info(py, &err));
        if self
            .error_logger
            .bind(py)
            .call_method("error", (msg,), Some(&kwargs))
            .is_err()
        {
            err.print(py);
        }
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
        let mut h = b"HTTP/1.1 500 Internal Server Error\r\n".to_vec();
        unyoke_http::write_header(&mut h, b"Content-Type", b"text/plain; charset=utf-8");
        unyoke_http::write_header(&mut h, b"Content-Length", body.len().to_string().as_bytes());
        let framing = if ex.head.is_head() {
            unyoke_http::BodyFraming::NoBody
        } else {
            unyoke_http::BodyFraming::Length(body.len() as u64)
        };
        ex.respond(
            ResponseStart {
                head: h,
                status: 500,
                framing,
                keep_alive: ex.keep_alive(),
            },
            std::iter::once(OutChunk::Data(body.into())),
        );
    }
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
        Python::with_gil(|py| self.pump(py, ex));
    }

    fn close(&self, ex: &Ex) {
        let state = ex.state.lock().take();
        let Some(state) = state else { return };
        Python::with_gil(|py| {
            if let Some(obj) = &state.closeable {
                if let Err(e) = obj.bind(py).call_method0("close") {
                    let kwargs = PyDict::new(py);
                    let _ = kwargs.set_item("exc_info", exc_info(py, &e));
                    let _ = self.error_logger.bind(py).call_method(
                        "error",
                        ("Error in the response iterable's close()",),
                        Some(&kwargs),
                    );
                }
            }
            drop(state);
        });
    }
}
