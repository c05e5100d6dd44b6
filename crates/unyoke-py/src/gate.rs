//! The GIL as the dispatcher's gate.

use std::cell::Cell;

use pyo3::ffi;
use pyo3::Python;
use unyoke_server::Gate;

/// Dispatch threads attach to the interpreter for their whole life and give the GIL up
/// only around waits, with the raw thread-state calls (the waits run no Python code).
pub struct Gil;

thread_local! {
    static SAVED: Cell<*mut ffi::PyThreadState> = const { Cell::new(std::ptr::null_mut()) };
}

impl Gate for Gil {
    fn run_thread(&self, body: &mut dyn FnMut()) {
        Python::with_gil(|_py| body());
    }

    fn release(&self) {
        SAVED.with(|s| {
            if s.get().is_null() {
                // SAFETY: called on a dispatch thread that holds the GIL (inside
                // `run_thread`); the saved state is restored by `acquire` on this thread.
                s.set(unsafe { ffi::PyEval_SaveThread() });
            }
        });
    }

    fn acquire(&self) {
        SAVED.with(|s| {
            let ts = s.replace(std::ptr::null_mut());
            if !ts.is_null() {
                // SAFETY: `ts` was returned by PyEval_SaveThread on this same thread.
                unsafe { ffi::PyEval_RestoreThread(ts) };
            }
        });
    }
}
