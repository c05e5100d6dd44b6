//! unyoke's extensions to WSGI: deferred responses (`unyoke.defer`), coroutine
//! operations for generator apps (`unyoke.sleep`, `unyoke.wait`, `unyoke.future`,
//! `unyoke.signal`). The environ keys are the API; see docs/extensions.md.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use unyoke_server::{Exchange, OutChunk};

use crate::handler::ReqState;
use crate::start_response::{type_name, StartResponse};
use crate::ClientDisconnected;

type Ex = Arc<Exchange<ReqState>>;

/// A coroutine operation a generator asked for during its last step.
pub enum Op {
    Sleep(Duration),
    Wait(String, Option<Duration>),
    Future(Py<PyAny>),
}

/// The operation being waited for by a parked generator.
pub enum Pending {
    Sleep,
    Wait(String),
    Future(Py<PyAny>),
}

thread_local! {
    /// The request whose application code runs on this thread right now, and the
    /// operation it recorded (the operation functions are shared objects in the
    /// environ template, so they find their request here: no per-request cost).
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// The request running on this thread: its exchange, its start_response, and the
/// operation it recorded.
type Current = (Ex, Option<Py<StartResponse>>, Option<Op>);

/// Runs `f` with `ex` as the current request; returns what it returned and the
/// operation recorded meanwhile.
pub fn with_current<R>(
    ex: &Ex,
    sr: Option<&Bound<'_, StartResponse>>,
    f: impl FnOnce() -> R,
) -> (R, Option<Op>) {
    let cur = (Arc::clone(ex), sr.map(|s| s.clone().unbind()), None);
    let prev = CURRENT.with(|c| c.borrow_mut().replace(cur));
    let r = f();
    let op = CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let op = c.as_mut().and_then(|(_, _, op)| op.take());
        *c = prev;
        op
    });
    (r, op)
}

fn current(py: Python<'_>) -> Option<(Ex, Option<Py<StartResponse>>)> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|(ex, sr, _)| (Arc::clone(ex), sr.as_ref().map(|s| s.clone_ref(py))))
    })
}

fn record(op: Op) -> PyResult<()> {
    CURRENT.with(|c| match c.borrow_mut().as_mut() {
        Some((_, _, slot)) => {
            *slot = Some(op);
            Ok(())
        }
        None => Err(PyRuntimeError::new_err(
            "unyoke coroutine operations must be called while a request's generator runs",
        )),
    })
}

fn seconds(s: f64, what: &str) -> PyResult<Duration> {
    if s.is_finite() && s >= 0.0 {
        Ok(Duration::from_secs_f64(s.min(1e7)))
    } else {
        Err(PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds"
        )))
    }
}

/// `environ['unyoke.sleep'](seconds)`: the generator that yields the result is parked
/// for `seconds`, holding no thread. Returns `b''`, so it passes through middleware.
#[pyfunction]
pub fn sleep(py: Python<'_>, seconds_: f64) -> PyResult<Bound<'_, PyBytes>> {
    record(Op::Sleep(seconds(seconds_, "sleep")?))?;
    Ok(PyBytes::new(py, b""))
}

/// `environ['unyoke.wait'](name, timeout=None)`: parks the generator until
/// `unyoke.signal(name, value)`; resumes with `environ['unyoke.result'] = value`, or
/// after `timeout` seconds with `None` and `environ['unyoke.timed_out'] = True`.
#[pyfunction]
#[pyo3(signature = (name, timeout = None))]
pub fn wait<'py>(
    py: Python<'py>,
    name: String,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let timeout = timeout.map(|t| seconds(t, "timeout")).transpose()?;
    record(Op::Wait(name, timeout))?;
    Ok(PyBytes::new(py, b""))
}

/// `environ['unyoke.future'](f)`: parks the generator until the
/// `concurrent.futures.Future` (or anything with `add_done_callback`) is done; resumes
/// with its result in `environ['unyoke.result']`, or its exception as
/// `environ['unyoke.exception'] = (type, value, traceback)`.
#[pyfunction]
pub fn future<'py>(py: Python<'py>, f: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    if !f.hasattr("add_done_callback")? {
        return Err(PyTypeError::new_err(format!(
            "unyoke.future takes a future (with add_done_callback), not {}",
            type_name(f)
        )));
    }
    record(Op::Future(f.clone().unbind()))?;
    Ok(PyBytes::new(py, b""))
}

/// Requests parked in `wait`, by name.
static WAITERS: LazyLock<Mutex<HashMap<String, Vec<Ex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

pub fn register_waiter(name: String, ex: &Ex) {
    WAITERS.lock().entry(name).or_default().push(Arc::clone(ex));
}

pub fn unregister_waiter(name: &str, ex: &Ex) {
    let mut w = WAITERS.lock();
    if let Some(list) = w.get_mut(name) {
        list.retain(|e| !Arc::ptr_eq(e, ex));
        if list.is_empty() {
            w.remove(name);
        }
    }
}

/// `unyoke.signal(name, value=None)`: wakes every request waiting on `name`, from any
/// thread. Returns how many were woken.
#[pyfunction]
#[pyo3(signature = (name, value = None))]
pub fn signal(py: Python<'_>, name: &str, value: Option<Py<PyAny>>) -> usize {
    let waiters = WAITERS.lock().remove(name).unwrap_or_default();
    for ex in &waiters {
        if let Some(st) = ex.state.lock().as_mut() {
            st.signal_value = Some(
                value
                    .as_ref()
                    .map_or_else(|| py.None(), |v| v.clone_ref(py)),
            );
        }
        ex.unpark();
    }
    waiters.len()
}

/// Ends a park when a future completes (its `add_done_callback` callable).
#[pyclass(module = "unyoke._unyoke", name = "Unparker", frozen)]
pub struct Unparker {
    ex: Ex,
}

impl Unparker {
    pub fn new(ex: &Ex) -> Self {
        Unparker { ex: Arc::clone(ex) }
    }
}

#[pymethods]
impl Unparker {
    fn __call__(&self, _future: &Bound<'_, PyAny>) {
        self.ex.unpark();
    }
}

/// `environ['unyoke.defer']()`: returns a responder; the application returns it and
/// answers later, from any thread.
#[pyfunction]
pub fn defer(py: Python<'_>) -> PyResult<Py<Responder>> {
    let Some((ex, Some(sr))) = current(py) else {
        return Err(PyRuntimeError::new_err(
            "unyoke.defer must be called while the application runs",
        ));
    };
    Py::new(
        py,
        Responder {
            ex,
            sr,
            buffered: Vec::new(),
            queued: 0,
            finished: false,
            closed: false,
            on_close: Vec::new(),
            on_flushed: Vec::new(),
        },
    )
}

/// A response that the application completes later, from any thread: returned by
/// `environ['unyoke.defer']()`.
#[pyclass(module = "unyoke._unyoke", name = "Responder")]
pub struct Responder {
    ex: Ex,
    sr: Py<StartResponse>,
    buffered: Vec<Py<PyBytes>>,
    /// Body bytes handed to the engine so far.
    queued: u64,
    finished: bool,
    closed: bool,
    on_close: Vec<Py<PyAny>>,
    on_flushed: Vec<(u64, Py<PyAny>)>,
}

impl Responder {
    pub fn exchange(&self) -> &Ex {
        &self.ex
    }

    fn check_open(&self) -> PyResult<()> {
        if self.finished {
            return Err(PyRuntimeError::new_err("the response is already finished"));
        }
        if self.closed || self.ex.is_gone() {
            return Err(ClientDisconnected::new_err("the client has disconnected"));
        }
        Ok(())
    }

    fn send_buffered(&mut self, py: Python<'_>) -> PyResult<()> {
        let mut sr = self.sr.borrow_mut(py);
        if !sr.head_sent {
            sr.send_head(None)?;
        }
        for b in std::mem::take(&mut self.buffered) {
            let b = b.bind(py);
            self.queued += b.as_bytes().len() as u64;
            if !sr.send_chunk(b)? {
                return Err(ClientDisconnected::new_err("the client has disconnected"));
            }
        }
        Ok(())
    }

    /// The exchange is over: run the `on_close` callbacks once.
    pub fn fire_close(&mut self, py: Python<'_>, log: &Bound<'_, PyAny>) {
        if self.closed {
            return;
        }
        self.closed = true;
        for cb in std::mem::take(&mut self.on_close) {
            if let Err(e) = cb.bind(py).call0() {
                crate::handler::log_error(py, log, "Error in a responder's on_close callback", &e);
            }
        }
        self.on_flushed.clear();
    }

    /// Body bytes are on the wire: run the flush callbacks they satisfy.
    pub fn fire_flushed(&mut self, py: Python<'_>, written: u64, log: &Bound<'_, PyAny>) {
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.on_flushed)
            .into_iter()
            .partition(|(t, _)| *t <= written);
        self.on_flushed = rest;
        if let Some(next) = self.on_flushed.iter().map(|(t, _)| *t).min() {
            self.ex.notify_when_written(next);
        }
        for (_, cb) in due {
            if let Err(e) = cb.bind(py).call0() {
                crate::handler::log_error(py, log, "Error in a responder's flush callback", &e);
            }
        }
    }
}

#[pymethods]
impl Responder {
    /// Sets the status and headers, as WSGI's `start_response` (nothing is sent yet).
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn start_response(
        &mut self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.check_open()?;
        let sr = self.sr.bind(py);
        sr.call1((status, headers, exc_info))?;
        Ok(())
    }

    /// Buffers body bytes; `flush()` or `finish()` sends them.
    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.check_open()?;
        let b = data.downcast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!("write() takes bytes, not {}", type_name(data)))
        })?;
        if !b.as_bytes().is_empty() {
            self.buffered.push(b.clone().unbind());
        }
        Ok(())
    }

    /// Sends the head (if not yet sent) and what was written. `callback()` is called once
    /// these bytes are on the wire (not if the client leaves first).
    #[pyo3(signature = (callback = None))]
    fn flush(&mut self, py: Python<'_>, callback: Option<Py<PyAny>>) -> PyResult<()> {
        self.check_open()?;
        self.send_buffered(py)?;
        if let Some(cb) = callback {
            self.on_flushed.push((self.queued, cb));
            self.ex.notify_when_written(self.queued);
        }
        Ok(())
    }

    /// Sends `data` and whatever is buffered, and ends the response. When nothing was
    /// flushed before, the response gets a Content-Length.
    #[pyo3(signature = (data = None))]
    fn finish(&mut self, py: Python<'_>, data: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        if let Some(d) = data {
            self.write(d)?;
        }
        self.check_open()?;
        let mut sr = self.sr.borrow_mut(py);
        if !sr.head_sent {
            let total: u64 = self
                .buffered
                .iter()
                .map(|b| b.bind(py).as_bytes().len() as u64)
                .sum();
            let start = sr.prepare_head(Some(total))?;
            let chunks: Vec<OutChunk> = std::mem::take(&mut self.buffered)
                .iter()
                .map(|b| OutChunk::Data(crate::start_response::to_bytes(b.bind(py))))
                .collect();
            self.queued += total;
            drop(sr);
            self.finished = true;
            self.ex.respond(start, chunks);
            return Ok(());
        }
        drop(sr);
        self.send_buffered(py)?;
        self.finished = true;
        self.ex.finish();
        Ok(())
    }

    /// True once the response is finished or the client has left.
    #[getter]
    fn closed(&self) -> bool {
        self.finished || self.closed || self.ex.is_gone()
    }

    /// Calls `fn()` when the exchange ends: the response was sent, or the client left.
    fn on_close(&mut self, py: Python<'_>, func: Py<PyAny>) -> PyResult<()> {
        if self.closed {
            func.bind(py).call0()?;
        } else {
            self.on_close.push(func);
        }
        Ok(())
    }
}

/// Puts the result of a finished park into the environ.
pub fn deliver(
    py: Python<'_>,
    environ: &Bound<'_, PyDict>,
    ex: &Ex,
    pending: Pending,
    timed_out: bool,
) -> PyResult<()> {
    let _ = environ.del_item("unyoke.exception");
    // Only a wait can time out; a sleep ending on time is its success.
    let timed_out = timed_out && matches!(pending, Pending::Wait(_));
    environ.set_item("unyoke.timed_out", timed_out)?;
    match pending {
        Pending::Sleep => environ.set_item("unyoke.result", py.None())?,
        Pending::Wait(name) => {
            let value = if timed_out {
                unregister_waiter(&name, ex);
                None
            } else {
                ex.state.lock().as_mut().and_then(|s| s.signal_value.take())
            };
            environ.set_item("unyoke.result", value.unwrap_or_else(|| py.None()))?;
        }
        Pending::Future(f) => {
            let f = f.bind(py);
            match f.call_method0("exception") {
                Ok(e) if !e.is_none() => {
                    let tb = e.getattr("__traceback__")?;
                    environ.set_item(
                        "unyoke.exception",
                        PyTuple::new(py, [e.get_type().into_any(), e.clone(), tb])?,
                    )?;
                    environ.set_item("unyoke.result", py.None())?;
                }
                Ok(_) => environ.set_item("unyoke.result", f.call_method0("result")?)?,
                Err(err) => {
                    // e.g. CancelledError from exception() itself
                    let v = err.value(py);
                    let tb = err
                        .traceback(py)
                        .map(|t| t.into_any())
                        .unwrap_or_else(|| py.None().into_bound(py));
                    environ.set_item(
                        "unyoke.exception",
                        PyTuple::new(py, [err.get_type(py).into_any(), v.clone().into_any(), tb])?,
                    )?;
                    environ.set_item("unyoke.result", py.None())?;
                }
            }
        }
    }
    Ok(())
}

/// Starts waiting for `op`: records what is awaited in the request's state, then parks
/// the exchange until it completes (in that order: a future may complete at once, on
/// another thread, and its resumption must find the record).
pub fn start_op(py: Python<'_>, ex: &Ex, op: Op) -> PyResult<()> {
    let now = Instant::now();
    let set_pending = |p: Pending| {
        if let Some(st) = ex.state.lock().as_mut() {
            st.pending = Some(p);
        }
    };
    match op {
        Op::Sleep(d) => {
            set_pending(Pending::Sleep);
            ex.park(Some(now + d));
        }
        Op::Wait(name, timeout) => {
            set_pending(Pending::Wait(name.clone()));
            register_waiter(name, ex);
            ex.park(timeout.map(|t| now + t));
        }
        Op::Future(f) => {
            set_pending(Pending::Future(f.clone_ref(py)));
            let cb = Py::new(py, Unparker::new(ex))?;
            ex.park(None);
            f.bind(py).call_method1("add_done_callback", (cb,))?;
        }
    }
    Ok(())
}

/// The environ template entries of the extensions (shared objects, no per-request cost).
pub fn add_to_template(py: Python<'_>, template: &Bound<'_, PyDict>) -> PyResult<()> {
    let m = py.import("unyoke._unyoke")?;
    template.set_item("unyoke.defer", m.getattr("defer")?)?;
    template.set_item("unyoke.sleep", m.getattr("sleep")?)?;
    template.set_item("unyoke.wait", m.getattr("wait")?)?;
    template.set_item("unyoke.future", m.getattr("future")?)?;
    template.set_item("unyoke.signal", m.getattr("signal")?)?;
    Ok(())
}
