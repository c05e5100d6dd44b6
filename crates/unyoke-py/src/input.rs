//! `wsgi.input`: the request body as a file-like object, streamed as it arrives.

use std::sync::Arc;

use bytes::Bytes;
use pyo3::exceptions::{PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use unyoke_server::{BodyError, BodyRead, Exchange};

use crate::handler::ReqState;
use crate::ClientDisconnected;

/// How long the leader, waiting in its own call for body bytes, drives the engine itself
/// before it hands it to another thread (other requests' calls wait that long).
const BRIEF_DRIVE: std::time::Duration = std::time::Duration::from_millis(1);

/// The request body (`environ['wsgi.input']`). Reads block until data arrives; the
/// first read sends `100 Continue` when the client asked for it.
#[pyclass(module = "unyoke._unyoke", name = "Input")]
pub struct Input {
    ex: Arc<Exchange<ReqState>>,
    /// Bytes fetched but not returned yet (after a `readline`).
    pending: Bytes,
    eof: bool,
}

impl Input {
    pub fn new(ex: Arc<Exchange<ReqState>>) -> Self {
        Input {
            ex,
            pending: Bytes::new(),
            eof: false,
        }
    }

    /// The next piece of the body (at most `max` bytes), or None at the end.
    fn next_chunk(&mut self, py: Python<'_>, max: usize) -> PyResult<Option<Bytes>> {
        if !self.pending.is_empty() {
            let n = max.min(self.pending.len());
            return Ok(Some(self.pending.split_to(n)));
        }
        if self.eof || max == 0 {
            return Ok(None);
        }
        let mut drove = false;
        loop {
            match self.ex.try_read_body(max) {
                BodyRead::Data(b) => return Ok(Some(b)),
                BodyRead::Eof => {
                    self.eof = true;
                    return Ok(None);
                }
                BodyRead::Pending => {
                    if self.ex.must_drive() {
                        // No thread could take over the engine: drive it from here.
                        self.ex.drive_until_body();
                    } else if !drove && self.ex.may_drive() {
                        // The rest of a body being uploaded is usually microseconds away:
                        // read it from here for a moment rather than hand the engine to
                        // another thread and back (measured: 10 context switches per
                        // 1 MiB upload read in 64 KiB pieces). A slow client still gets
                        // the hand-off after BRIEF_DRIVE.
                        drove = true;
                        self.ex.drive_for_body(Some(BRIEF_DRIVE));
                    } else {
                        let ex = Arc::clone(&self.ex);
                        py.allow_threads(move || ex.wait_body());
                        self.ex.gate_taken();
                    }
                }
                BodyRead::Error(e) => {
                    return Err(ClientDisconnected::new_err(match e {
                        BodyError::Malformed(status) => {
                            format!("malformed request body ({status})")
                        }
                        BodyError::Disconnected => {
                            "client disconnected while sending the body".to_string()
                        }
                        BodyError::Timeout => "timed out reading the request body".to_string(),
                    }))
                }
            }
        }
    }

    /// Pieces of the body up to `size` bytes (all of it when None or negative).
    fn read_pieces(
        &mut self,
        py: Python<'_>,
        size: Option<isize>,
    ) -> PyResult<(Vec<Bytes>, usize)> {
        let limit = match size {
            Some(n) if n >= 0 => n as usize,
            _ => usize::MAX,
        };
        let mut pieces = Vec::new();
        let mut total = 0usize;
        while total < limit {
            match self.next_chunk(py, limit - total)? {
                Some(b) => {
                    total += b.len();
                    pieces.push(b);
                }
                None => break,
            }
        }
        Ok((pieces, total))
    }

    fn readline_impl(&mut self, py: Python<'_>, size: Option<isize>) -> PyResult<Vec<u8>> {
        let limit = match size {
            Some(n) if n >= 0 => n as usize,
            _ => usize::MAX,
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(mut chunk) = self.next_chunk(py, limit - out.len())? else {
                break;
            };
            if let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
                let rest = chunk.split_off(pos + 1);
                out.extend_from_slice(&chunk);
                if !rest.is_empty() {
                    // Put the rest back in front of anything still pending.
                    let mut joined = Vec::with_capacity(rest.len() + self.pending.len());
                    joined.extend_from_slice(&rest);
                    joined.extend_from_slice(&self.pending);
                    self.pending = Bytes::from(joined);
                }
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// A bytes object made of `pieces` (`total` bytes), with one copy and no zero-fill.
fn concat_bytes<'py>(py: Python<'py>, pieces: &[Bytes], total: usize) -> Bound<'py, PyBytes> {
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new bytes object whose n-byte
    // buffer is uninitialised and exclusively ours until returned; we fill all of it.
    unsafe {
        let obj =
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), total as pyo3::ffi::Py_ssize_t);
        if obj.is_null() {
            // Out of memory: fall back to the safe path, which raises MemoryError cleanly.
            return PyBytes::new(py, &pieces.concat());
        }
        let dst = pyo3::ffi::PyBytes_AsString(obj) as *mut u8;
        let mut at = 0;
        for p in pieces {
            std::ptr::copy_nonoverlapping(p.as_ptr(), dst.add(at), p.len());
            at += p.len();
        }
        Bound::from_owned_ptr(py, obj).downcast_into_unchecked()
    }
}

#[pymethods]
impl Input {
    /// Reads at most `size` bytes (all of the rest when `size` is None or negative).
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let (pieces, total) = self.read_pieces(py, size)?;
        if let [one] = pieces.as_slice() {
            return Ok(PyBytes::new(py, one));
        }
        Ok(concat_bytes(py, &pieces, total))
    }

    /// Reads one line (up to and including b"\n"), at most `size` bytes.
    #[pyo3(signature = (size = None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.readline_impl(py, size)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Reads lines until the end (or until about `hint` bytes were read).
    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        let mut total = 0usize;
        loop {
            let line = self.readline_impl(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            list.append(PyBytes::new(py, &line))?;
            if let Some(h) = hint {
                if h > 0 && total >= h as usize {
                    break;
                }
            }
        }
        Ok(list)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let line = self.readline_impl(py, None)?;
        if line.is_empty() {
            return Err(PyStopIteration::new_err(()));
        }
        Ok(PyBytes::new(py, &line))
    }

    /// Always True: the body can be read.
    fn readable(&self) -> bool {
        true
    }

    /// Headers for the `100 Continue` response, sent on the first read of the body.
    fn set_hundred_continue_response_headers(&self, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut lines = Vec::new();
        for item in headers.try_iter()? {
            let item = item?;
            let (name, value): (String, String) = item
                .extract()
                .map_err(|_| PyTypeError::new_err("headers must be (name, value) pairs of str"))?;
            let (name, value) = (name.as_bytes(), value.as_bytes());
            if !unyoke_http::is_valid_header_name(name)
                || !unyoke_http::is_valid_header_value(value)
            {
                return Err(PyValueError::new_err(format!(
                    "invalid 100 Continue header {:?}",
                    String::from_utf8_lossy(name)
                )));
            }
            unyoke_http::write_header(&mut lines, name, value);
        }
        self.ex.set_continue_headers(lines);
        Ok(())
    }
}
