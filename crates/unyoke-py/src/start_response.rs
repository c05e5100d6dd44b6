//! `start_response` and the `write()` callable it returns (PEP 3333).

use std::sync::Arc;

use bytes::Bytes;
use pyo3::exceptions::{PyAssertionError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBytes, PyString, PyTuple};
use unyoke_http::{plan_response, BodyFraming, ResponseField, Version};
use unyoke_server::{Exchange, OutChunk, ResponseStart};

use crate::handler::{HandlerShared, ReqState};
use crate::ClientDisconnected;

/// Bodies below this size are copied; larger ones are sent from the bytes object itself.
const COPY_BELOW: usize = 4096;

/// A Python bytes object's buffer, kept alive while the engine writes it.
struct PyBytesOwner {
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: a bytes object is immutable; its buffer stays valid and unchanged for as long
// as `_obj` holds a reference, whichever thread reads it.
unsafe impl Send for PyBytesOwner {}
// SAFETY: as above, shared reads of immutable memory.
unsafe impl Sync for PyBytesOwner {}

impl AsRef<[u8]> for PyBytesOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr/len describe the live buffer of `_obj` (see the Send impl).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Turns a bytes object into engine bytes: copied when small, shared when large.
pub fn to_bytes(b: &Bound<'_, PyBytes>) -> Bytes {
    let data = b.as_bytes();
    if data.len() < COPY_BELOW {
        Bytes::copy_from_slice(data)
    } else {
        Bytes::from_owner(PyBytesOwner {
            ptr: data.as_ptr(),
            len: data.len(),
            _obj: b.clone().unbind(),
        })
    }
}

/// The `start_response` callable of one request; also holds the response state.
#[pyclass(module = "unyoke._unyoke", name = "StartResponse")]
pub struct StartResponse {
    pub(crate) ex: Arc<Exchange<ReqState>>,
    pub(crate) shared: Arc<HandlerShared>,
    /// The status code, once start_response was called.
    pub(crate) status: Option<u16>,
    /// The response head so far: the status line and the application's header lines,
    /// each ending in CRLF (one buffer, so a response head is one allocation).
    pub(crate) head: Vec<u8>,
    pub(crate) content_length: Option<u64>,
    /// The application sent `Connection: close`.
    pub(crate) close: bool,
    pub(crate) head_sent: bool,
    pub(crate) framing: BodyFraming,
    /// Body bytes the application produced so far.
    pub(crate) sent: u64,
}

impl StartResponse {
    /// Whether the body has all the bytes its Content-Length announced (iteration stops).
    pub fn length_reached(&self) -> bool {
        self.content_length.is_some_and(|cl| self.sent >= cl) && self.body_expected()
    }

    /// The application's mistake about Content-Length, if the body it produced (now
    /// complete) does not match it.
    pub fn length_mistake(&self) -> Option<String> {
        let cl = self.content_length?;
        if !self.body_expected() || self.sent == cl {
            return None;
        }
        Some(if self.sent < cl {
            format!(
                "the application sent {} body bytes but its Content-Length says {cl}: the \
                 connection was closed after them, so the client sees a truncated response",
                self.sent
            )
        } else {
            format!(
                "the application produced {} body bytes but its Content-Length says {cl}: \
                 the bytes past it were not sent",
                self.sent
            )
        })
    }

    /// A body is sent for this response (not HEAD, 1xx, 204, 304).
    fn body_expected(&self) -> bool {
        let code = self.status.unwrap_or(200);
        !(self.ex.head.is_head() || code < 200 || code == 204 || code == 304)
    }
    pub fn new(ex: Arc<Exchange<ReqState>>, shared: Arc<HandlerShared>) -> Self {
        StartResponse {
            ex,
            shared,
            status: None,
            head: Vec::new(),
            content_length: None,
            close: false,
            head_sent: false,
            framing: BodyFraming::NoBody,
            sent: 0,
        }
    }

    /// Sends the response head. `total` is the whole body length when known (a list
    /// body, or an iterable already exhausted): it becomes Content-Length if the
    /// application gave none.
    pub fn send_head(&mut self, total: Option<u64>) -> PyResult<()> {
        let start = self.prepare_head(total)?;
        self.ex.start(start);
        Ok(())
    }

    /// Builds the response head (see `send_head`) and marks it sent; the caller hands it
    /// to the exchange.
    pub fn prepare_head(&mut self, total: Option<u64>) -> PyResult<ResponseStart> {
        let Some(code) = self.status else {
            return Err(PyAssertionError::new_err(
                "the application produced a body before calling start_response",
            ));
        };
        let version = if self.shared.settings.pretend_http10 {
            Version::Http10
        } else {
            self.ex.head.version
        };
        let mut head = std::mem::take(&mut self.head);
        if self.content_length.is_none() && self.body_expected() {
            if let Some(n) = total {
                let mut digits = [0u8; 20];
                let n_text = unyoke_http::decimal(n, &mut digits);
                unyoke_http::write_header(&mut head, b"Content-Length", n_text);
                self.content_length = Some(n);
            }
        }
        let keep_alive = self.ex.keep_alive() && !self.close;
        let plan = plan_response(
            self.ex.head.is_head(),
            version,
            keep_alive,
            code,
            self.content_length,
        );
        self.framing = plan.body;
        self.head_sent = true;
        Ok(ResponseStart {
            head,
            status: code,
            framing: plan.body,
            keep_alive: plan.keep_alive,
            inline_body: 0,
        })
    }

    /// Queues a body chunk, sending the head first if needed.
    pub fn send_chunk(&mut self, data: &Bound<'_, PyBytes>) -> PyResult<bool> {
        if data.as_bytes().is_empty() {
            return Ok(!self.ex.is_gone());
        }
        self.sent += data.as_bytes().len() as u64;
        if !self.head_sent {
            self.send_head(None)?;
        }
        Ok(self.ex.send(OutChunk::Data(to_bytes(data))))
    }

    /// Validates the status and headers and encodes them as the response head; nothing
    /// changes if they are invalid.
    fn set_status_and_headers(
        &mut self,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let s = str_bytes(status)
            .ok_or_else(|| PyTypeError::new_err("status must be a str, e.g. '200 OK'"))??;
        let code = unyoke_http::parse_status(s)
            .filter(|_| s.is_ascii())
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "invalid status line {:?}: expected e.g. '200 OK'",
                    String::from_utf8_lossy(s)
                ))
            })?;
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(if self.shared.settings.pretend_http10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        out.extend_from_slice(s);
        out.extend_from_slice(b"\r\n");
        let mut content_length = None;
        let mut close = false;
        let capitalize = self.shared.settings.capitalize_response_headers;
        let list = headers.downcast::<pyo3::types::PyList>().map_err(|_| {
            PyTypeError::new_err("response headers must be a list of (name, value) tuples")
        })?;
        for item in list.iter() {
            let pair = item.downcast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("each response header must be a (name, value) tuple")
            })?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err(
                    "each response header must be a (name, value) tuple",
                ));
            }
            // Borrowed: the tuple holds both while they are read.
            let name_obj = pair.get_borrowed_item(0)?;
            let value_obj = pair.get_borrowed_item(1)?;
            let name = str_bytes(&name_obj).ok_or_else(|| {
                PyTypeError::new_err(format!("header name {name_obj:?} is not a str"))
            })??;
            let shown = || String::from_utf8_lossy(name);
            let value = latin1_bytes(&value_obj)
                .ok_or_else(|| {
                    PyTypeError::new_err(format!("value of header {:?} is not a str", shown()))
                })?
                .ok_or_else(|| {
                    PyValueError::new_err(format!("value of header {:?} is not latin-1", shown()))
                })?;
            let Some(class) = unyoke_http::classify_response_field(name) else {
                return Err(PyValueError::new_err(format!(
                    "invalid header name {:?}",
                    shown()
                )));
            };
            if !unyoke_http::is_valid_header_value(&value) {
                return Err(PyValueError::new_err(format!(
                    "invalid value for header {:?}: control characters are not allowed",
                    shown()
                )));
            }
            match class {
                ResponseField::Other => {}
                ResponseField::Connection => {
                    if value
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                    {
                        close = true;
                    }
                    continue;
                }
                ResponseField::HopByHop => {
                    return Err(PyValueError::new_err(format!(
                        "hop-by-hop header {:?} is not allowed from a WSGI application (PEP 3333)",
                        shown()
                    )));
                }
                ResponseField::ContentLength => {
                    let n = unyoke_http::parse_content_length(&value).ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "invalid Content-Length {:?}",
                            String::from_utf8_lossy(&value)
                        ))
                    })?;
                    if content_length.is_some_and(|c| c != n) {
                        return Err(PyValueError::new_err(
                            "several different Content-Length headers",
                        ));
                    }
                    if content_length.is_some() {
                        continue;
                    }
                    content_length = Some(n);
                }
            }
            if capitalize {
                let cap: Vec<u8> = name
                    .iter()
                    .scan(true, |up, &b| {
                        let c = if *up {
                            b.to_ascii_uppercase()
                        } else {
                            b.to_ascii_lowercase()
                        };
                        *up = b == b'-';
                        Some(c)
                    })
                    .collect();
                unyoke_http::write_header(&mut out, &cap, &value);
            } else {
                unyoke_http::write_header(&mut out, name, &value);
            }
        }
        self.status = Some(code);
        self.head = out;
        self.content_length = content_length;
        self.close = close;
        Ok(())
    }
}

/// The text of `obj` when it is an exact `str` of ASCII characters (nearly every status
/// and header), read in place: no call into the interpreter, no scan for non-ASCII.
fn ascii_str<'a>(obj: &'a Bound<'_, PyAny>) -> Option<&'a [u8]> {
    let p = obj.as_ptr();
    // SAFETY: `p` is a live object (held by `obj` for 'a). PyUnicode_IS_ASCII and the data
    // macros are only used once the exact type is known to be str; an ASCII string's
    // data is its length in bytes, immutable while the object lives.
    unsafe {
        if ffi::PyUnicode_CheckExact(p) == 0 || ffi::PyUnicode_IS_ASCII(p) == 0 {
            return None;
        }
        let len = usize::try_from(ffi::PyUnicode_GET_LENGTH(p)).ok()?;
        Some(std::slice::from_raw_parts(
            ffi::PyUnicode_DATA(p).cast::<u8>(),
            len,
        ))
    }
}

/// The UTF-8 bytes of a str (a subclass too); `None` if `obj` is not a str.
fn str_bytes<'a>(obj: &'a Bound<'_, PyAny>) -> Option<PyResult<&'a [u8]>> {
    if let Some(b) = ascii_str(obj) {
        return Some(Ok(b));
    }
    let s = obj.downcast::<PyString>().ok()?;
    Some(s.to_str().map(str::as_bytes))
}

/// A str's latin-1 bytes (PEP 3333's "native strings"): borrowed when ASCII. `None` if
/// `obj` is not a str, `Some(None)` if it has a character above U+00FF.
fn latin1_bytes<'a>(obj: &'a Bound<'_, PyAny>) -> Option<Option<std::borrow::Cow<'a, [u8]>>> {
    if let Some(b) = ascii_str(obj) {
        return Some(Some(std::borrow::Cow::Borrowed(b)));
    }
    let s = obj.downcast::<PyString>().ok()?;
    let Ok(s) = s.to_str() else {
        // Lone surrogates: not latin-1 either.
        return Some(None);
    };
    if s.is_ascii() {
        return Some(Some(std::borrow::Cow::Borrowed(s.as_bytes())));
    }
    Some(
        s.chars()
            .map(|c| u8::try_from(c as u32).ok())
            .collect::<Option<Vec<u8>>>()
            .map(std::borrow::Cow::Owned),
    )
}

#[pymethods]
impl StartResponse {
    /// `start_response(status, response_headers, exc_info=None)` → `write`.
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        mut slf: PyRefMut<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let exc_info = exc_info.filter(|e| !e.is_none());
        if let Some(info) = exc_info {
            if slf.head_sent {
                // PEP 3333: too late to change the status; re-raise the original error.
                let value = info.get_item(1)?;
                // The exception object carries its own __traceback__.
                return Err(PyErr::from_value(value));
            }
        } else if slf.status.is_some() {
            return Err(PyAssertionError::new_err(
                "start_response called a second time without exc_info",
            ));
        }
        slf.set_status_and_headers(status, headers)?;
        let obj = slf.into_pyobject(py)?;
        bound_write(py, obj.as_any())
    }

    /// The legacy `write(data)` callable: queues `data` for sending now.
    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data.downcast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!("write() takes bytes, not {}", type_name(data)))
        })?;
        if !self.send_chunk(bytes)? {
            return Err(ClientDisconnected::new_err("the client has disconnected"));
        }
        if self.ex.queued_bytes() >= unyoke_server::OUTPUT_HIGH_WATER {
            // PEP 3333: write() returns once the data is on its way; here it waits for
            // room, so a writing loop cannot buffer without bound.
            let alive = if self.ex.must_drive() {
                self.ex.drive_until_writable()
            } else {
                let ex = Arc::clone(&self.ex);
                let alive = data.py().allow_threads(move || ex.wait_writable());
                self.ex.gate_taken();
                alive
            };
            if !alive {
                return Err(ClientDisconnected::new_err("the client has disconnected"));
            }
        }
        Ok(())
    }
}

/// `obj.write`, bound through the method's descriptor, found once: the generic attribute
/// lookup it spares (type dictionary, method cache) was a tenth of start_response.
fn bound_write<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    static WRITE: GILOnceCell<Py<PyAny>> = GILOnceCell::new();
    let descr = WRITE
        .get_or_try_init(py, || {
            py.get_type::<StartResponse>()
                .getattr(pyo3::intern!(py, "write"))
                .map(Bound::unbind)
        })?
        .bind(py);
    // SAFETY: both pointers are live objects held by this thread with the GIL; the
    // descriptor's tp_descr_get takes borrowed arguments and returns a new reference
    // (or NULL with an exception set, which from_owned_ptr_or_err turns into the error).
    unsafe {
        match (*ffi::Py_TYPE(descr.as_ptr())).tp_descr_get {
            Some(get) => Bound::from_owned_ptr_or_err(
                py,
                get(
                    descr.as_ptr(),
                    obj.as_ptr(),
                    ffi::Py_TYPE(obj.as_ptr()).cast::<ffi::PyObject>(),
                ),
            ),
            None => obj.getattr(pyo3::intern!(py, "write")),
        }
    }
}

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}
