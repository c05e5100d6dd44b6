//! `wsgi.file_wrapper`: a file response the engine sends with sendfile(2) when it can.

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;

/// Wraps a file-like object as a response iterable. When the object has a real file
/// descriptor (a regular file), the engine sends it without Python touching the bytes.
#[pyclass(module = "unyoke._unyoke", name = "FileWrapper")]
pub struct FileWrapper {
    #[pyo3(get)]
    pub filelike: Py<PyAny>,
    #[pyo3(get)]
    pub block_size: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, block_size = 8192))]
    fn new(filelike: Py<PyAny>, block_size: usize) -> Self {
        FileWrapper {
            filelike,
            block_size: block_size.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.block_size,))?;
        if data.len()? == 0 {
            return Err(PyStopIteration::new_err(()));
        }
        Ok(data)
    }

    /// Closes the wrapped file.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}
