//! `wsgi.input`: the request body as a file-like object, streamed as it arrives.

use std::sync::Arc;

use bytes::Bytes;
use pyo3::exceptions::{PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use unyoke_http::BodyKind;
use unyoke_server::{BodyError, BodyFill, BodyRead, Exchange};

use crate::handler::ReqState;
use crate::ClientDisconnected;

/// How long the leader, waiting in its own call for body bytes, drives the engine itself
/// before it hands it to another thread (other requests' calls wait that long).
const BRIEF_DRIVE: std::time::Duration = std::time::Duration::from_millis(1);

/// Largest `read` made as one bytes object that the connection may read the body
/// straight into (no copy between the socket and Python). Larger reads are assembled as
/// the bytes arrive, so that a Content-Length alone cannot make the server allocate.
const LENT_READ_UP_TO: usize = 1024 * 1024;

/// The request body (`environ['wsgi.input']`). Reads block until data arrives; the
/// first read sends `100 Continue` when the client asked for it.
#[pyclass(module = "unyoke._unyoke", name = "Input")]
pub struct Input {
    /// None for a request without a body: then one shared, exhausted instance serves
    /// them all (see [`Input::empty`]), saving an object per request.
    ex: Option<Arc<Exchange<ReqState>>>,
    /// Bytes fetched but not returned yet (after a `readline`).
    pending: Bytes,
    eof: bool,
    /// Body bytes taken from the exchange so far.
    taken: u64,
}

impl Input {
    pub fn new(ex: Arc<Exchange<ReqState>>) -> Self {
        Input {
            ex: Some(ex),
            pending: Bytes::new(),
            eof: false,
            taken: 0,
        }
    }

    /// The input of a request without a body: at its end from the start. It holds no
    /// state a read could change, so one instance serves every such request.
    pub fn empty() -> Self {
        Input {
            ex: None,
            pending: Bytes::new(),
            eof: true,
            taken: 0,
        }
    }

    /// Waits for the body to make progress after a read found nothing (`drove`: the
    /// brief drive of this read was used).
    fn wait_body(ex: &Arc<Exchange<ReqState>>, py: Python<'_>, drove: &mut bool) {
        if ex.must_drive() {
            // No thread could take over the engine: drive it from here.
            ex.drive_until_body();
        } else if !*drove && ex.may_drive() {
            // The rest of a body being uploaded is usually microseconds away: read it
            // from here for a moment rather than hand the engine to another thread and
            // back (measured: 10 context switches per 1 MiB upload read in 64 KiB
            // pieces). A slow client still gets the hand-off after BRIEF_DRIVE.
            *drove = true;
            ex.drive_for_body(Some(BRIEF_DRIVE));
        } else {
            let waiter = Arc::clone(ex);
            py.allow_threads(move || waiter.wait_body());
            ex.gate_taken();
        }
    }

    /// How many bytes `read(limit)` returns if the body is not cut short, when that is
    /// known (a Content-Length body).
    fn known_read_len(&self, limit: usize) -> Option<usize> {
        let BodyKind::Length(len) = self.ex.as_ref()?.head.body else {
            return None;
        };
        let left = usize::try_from(len.saturating_sub(self.taken)).ok()?;
        Some(limit.min(self.pending.len().saturating_add(left)))
    }

    /// `read` of exactly `want` bytes (fewer only at an early end) into one new bytes
    /// object, which the connection may read the body straight into.
    fn read_lent<'py>(&mut self, py: Python<'py>, want: usize) -> PyResult<Bound<'py, PyBytes>> {
        // (Borrowed, not cloned: the reads below change only the other fields.)
        let Some(ex) = &self.ex else {
            return Ok(PyBytes::new(py, b""));
        };
        let (obj, dst) = uninit_bytes(py, want)?;
        let mut filled = self.pending.len().min(want);
        // SAFETY: filled <= want bytes into our buffer, from our own `pending`.
        unsafe { std::ptr::copy_nonoverlapping(self.pending.as_ptr(), dst, filled) };
        bytes::Buf::advance(&mut self.pending, filled);
        // The loan to the connection ends before the object can reach Python code, on
        // every way out (an error or a panic included).
        let lent = Lent(ex);
        let mut drove = false;
        while filled < want && !self.eof {
            // SAFETY: dst + filled is writable for want - filled bytes, and nothing else
            // touches the buffer until `lent` is dropped.
            match unsafe { ex.try_read_body_into(dst.add(filled), want - filled) } {
                BodyFill::Filled(n) => {
                    filled += n;
                    self.taken += n as u64;
                    // Progress: the next wait may be a brief drive again.
                    drove = false;
                }
                BodyFill::Eof => self.eof = true,
                BodyFill::Pending => Self::wait_body(ex, py, &mut drove),
                BodyFill::Error(e) => return Err(body_error(e)),
            }
        }
        drop(lent);
        if filled < want {
            // Ended early (a body shorter than announced cannot reach here, but a short
            // Length is not worth a panic): the bytes read so far.
            // SAFETY: the first `filled` bytes were written.
            let got = unsafe { std::slice::from_raw_parts(dst, filled) };
            return Ok(PyBytes::new(py, got));
        }
        Ok(obj)
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
        let Some(ex) = &self.ex else {
            return Ok(None);
        };
        let mut drove = false;
        loop {
            match ex.try_read_body(max) {
                BodyRead::Data(b) => {
                    self.taken += b.len() as u64;
                    return Ok(Some(b));
                }
                BodyRead::Eof => {
                    self.eof = true;
                    return Ok(None);
                }
                BodyRead::Pending => Self::wait_body(ex, py, &mut drove),
                BodyRead::Error(e) => return Err(body_error(e)),
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

/// The exception for a body that cannot be read.
fn body_error(e: BodyError) -> PyErr {
    ClientDisconnected::new_err(match e {
        BodyError::Malformed(status) => format!("malformed request body ({status})"),
        BodyError::Disconnected => "client disconnected while sending the body".to_string(),
        BodyError::Timeout => "timed out reading the request body".to_string(),
    })
}

/// Memory lent to the connection for the body (see `Exchange::try_read_body_into`),
/// taken back when dropped.
struct Lent<'a>(&'a Exchange<ReqState>);

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.0.take_back_target();
    }
}

/// A new bytes object of `len` bytes, not yet filled (no zero-fill), and its buffer: the
/// caller must write all of it before the object reaches Python code.
fn uninit_bytes(py: Python<'_>, len: usize) -> PyResult<(Bound<'_, PyBytes>, *mut u8)> {
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new bytes object whose n-byte
    // buffer is uninitialised and only ours until we hand the object out (NULL with an
    // exception set, MemoryError, if it cannot).
    let obj = unsafe {
        pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as pyo3::ffi::Py_ssize_t)
    };
    if obj.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: obj is a new, owned reference to a bytes object.
    let obj: Bound<'_, PyBytes> =
        unsafe { Bound::from_owned_ptr(py, obj).downcast_into_unchecked() };
    // SAFETY: the buffer of a bytes object we own, `len` bytes long.
    let buf = unsafe { pyo3::ffi::PyBytes_AsString(obj.as_ptr()) }.cast::<u8>();
    Ok((obj, buf))
}

/// A bytes object made of `pieces` (`total` bytes), with one copy and no zero-fill.
fn concat_bytes<'py>(
    py: Python<'py>,
    pieces: &[Bytes],
    total: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let (obj, dst) = uninit_bytes(py, total)?;
    let mut at = 0;
    for p in pieces {
        // SAFETY: the pieces add up to `total`, the size of the buffer.
        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), dst.add(at), p.len()) };
        at += p.len();
    }
    Ok(obj)
}

#[pymethods]
impl Input {
    /// Reads at most `size` bytes (all of the rest when `size` is None or negative).
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let limit = match size {
            Some(n) if n >= 0 => n as usize,
            _ => usize::MAX,
        };
        if let Some(want) = self.known_read_len(limit) {
            if want <= LENT_READ_UP_TO && !self.eof {
                return self.read_lent(py, want);
            }
        }
        let (pieces, total) = self.read_pieces(py, size)?;
        if let [one] = pieces.as_slice() {
            return Ok(PyBytes::new(py, one));
        }
        concat_bytes(py, &pieces, total)
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
        if let Some(ex) = &self.ex {
            ex.set_continue_headers(lines);
        }
        Ok(())
    }
}
