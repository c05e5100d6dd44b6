//! The Python binding of unyoke: the only crate that knows Python. It turns requests
//! into PEP 3333 calls and the application's answers into engine output.

mod environ;
mod extensions;
mod file_wrapper;
mod gate;
mod handler;
mod input;
mod settings;
mod start_response;

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use unyoke_server::{Listener, ListenerKind};

pyo3::create_exception!(
    _unyoke,
    ClientDisconnected,
    PyOSError,
    "The client went away (or sent a malformed body) while the application read or wrote."
);

/// A server bound to listening sockets, serving one WSGI application.
#[pyclass(module = "unyoke._unyoke", name = "Engine", frozen)]
struct Engine {
    inner: unyoke_server::Engine<handler::WsgiHandler>,
}

#[pymethods]
impl Engine {
    /// `Engine(app, listeners, settings)`: `listeners` is a list of `(fd, kind, display)`
    /// with kind "tcp" or "unix" (the fds are duplicated); `settings` the validated
    /// settings dict.
    #[new]
    fn new(
        py: Python<'_>,
        app: Py<PyAny>,
        listeners: Vec<(i32, String, String)>,
        settings: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        if !app.bind(py).is_callable() {
            return Err(PyValueError::new_err("the application is not callable"));
        }
        let (config, wsgi) = settings::from_dict(settings)?;
        let extra = match settings.get_item("environ")? {
            Some(e) if !e.is_none() => Some(e.downcast_into::<PyDict>().map_err(|_| {
                PyValueError::new_err("setting environ: must be a dict of str to str")
            })?),
            _ => None,
        };
        let hooks = settings::hooks(settings)?;
        let handler = handler::WsgiHandler::new(py, app, wsgi, extra.as_ref(), hooks)?;
        let mut ls = Vec::with_capacity(listeners.len());
        for (fd, kind, display) in listeners {
            let kind = match kind.as_str() {
                "tcp" => ListenerKind::Tcp,
                "unix" => ListenerKind::Unix,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "unknown listener kind {other:?}"
                    )))
                }
            };
            ls.push(
                Listener::from_fd(fd, kind, display)
                    .map_err(|e| PyOSError::new_err(e.to_string()))?,
            );
        }
        if ls.is_empty() {
            return Err(PyValueError::new_err("no listening socket"));
        }
        let inner = unyoke_server::Engine::new(config, ls, handler, Arc::new(gate::Gil))
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the engine: {e}")))?;
        Ok(Engine { inner })
    }

    /// Serves until shutdown completes. Runs pending signal handlers every
    /// `check_signals_every` seconds, and at once after `signal_arrived()`; if one raises,
    /// shuts down at once and re-raises.
    fn run(&self, py: Python<'_>, check_signals_every: f64) -> PyResult<()> {
        if !(check_signals_every.is_finite() && check_signals_every > 0.0) {
            return Err(PyValueError::new_err(
                "check_signals_every must be a positive number of seconds",
            ));
        }
        let every = Duration::from_secs_f64(check_signals_every.min(3600.0));
        let mut raised: Option<PyErr> = None;
        let result = py.allow_threads(|| {
            self.inner.run(every, || {
                Python::with_gil(|py| match py.check_signals() {
                    Ok(()) => true,
                    Err(e) => {
                        raised = Some(e);
                        false
                    }
                })
            })
        });
        if let Some(e) = raised {
            return Err(e);
        }
        result.map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// A signal arrived: `run()` runs the pending signal handlers now instead of at its
    /// next check (they run only on the thread in `run()`, the main thread). Thread-safe.
    fn signal_arrived(&self) {
        self.inner.tick_now();
    }

    /// Stops accepting; requests in flight get `grace` seconds; then `run()` returns.
    #[pyo3(signature = (grace = 30.0))]
    fn shutdown(&self, grace: f64) {
        let grace = if grace.is_finite() && grace > 0.0 {
            grace.min(1e6)
        } else {
            0.0
        };
        self.inner.shutdown(Duration::from_secs_f64(grace));
    }

    /// The application calls running now, longest first, as `(seconds, request)`
    /// pairs: what a stuck worker is stuck on.
    fn running_calls(&self) -> Vec<(f64, String)> {
        self.inner
            .running_calls()
            .into_iter()
            .map(|(d, s)| (d.as_secs_f64(), s))
            .collect()
    }

    /// Counters: open_connections, requests_in_flight, requests_total, bytes_in,
    /// bytes_out, threads, idle_connections (set aside while idle), responses_by_class
    /// (index 0: none sent, 1: 1xx … 5: 5xx), duration_buckets (per bucket, the last
    /// +Inf), duration_bucket_bounds (seconds), duration_sum_seconds, takeovers_blocked
    /// and takeovers_computing (the event loop taken over from a call that blocked, or
    /// from one that kept computing).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("open_connections", s.open_connections)?;
        d.set_item("requests_in_flight", s.requests_in_flight)?;
        d.set_item("requests_total", s.requests_total)?;
        d.set_item("bytes_in", s.bytes_in)?;
        d.set_item("bytes_out", s.bytes_out)?;
        d.set_item("threads", s.threads)?;
        d.set_item("idle_connections", s.idle_connections)?;
        d.set_item("responses_by_class", s.responses_by_class.to_vec())?;
        d.set_item("duration_buckets", s.duration_buckets.to_vec())?;
        d.set_item(
            "duration_bucket_bounds",
            unyoke_server::DURATION_BUCKETS.to_vec(),
        )?;
        d.set_item("duration_sum_seconds", s.duration_sum_us as f64 / 1e6)?;
        d.set_item("takeovers_blocked", s.takeovers_blocked)?;
        d.set_item("takeovers_computing", s.takeovers_computing)?;
        Ok(d)
    }
}

#[pymodule]
fn _unyoke(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<input::Input>()?;
    m.add_class::<start_response::StartResponse>()?;
    m.add_class::<file_wrapper::FileWrapper>()?;
    m.add_class::<extensions::Responder>()?;
    m.add_class::<extensions::Unparker>()?;
    m.add_function(wrap_pyfunction!(extensions::defer, m)?)?;
    m.add_function(wrap_pyfunction!(extensions::sleep, m)?)?;
    m.add_function(wrap_pyfunction!(extensions::wait, m)?)?;
    m.add_function(wrap_pyfunction!(extensions::future, m)?)?;
    m.add_function(wrap_pyfunction!(extensions::signal, m)?)?;
    m.add(
        "ClientDisconnected",
        m.py().get_type::<ClientDisconnected>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
