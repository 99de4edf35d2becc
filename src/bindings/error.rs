//! The one place where failures become Python exceptions, all classes of `afml_cache.errors`:
//! the core's [`Error`] through `From`, and the walker's fingerprint failures.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::error::Error;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        Python::attach(|py| match &err {
            Error::InvalidArgument(message) => PyValueError::new_err(message.clone()),
            // StoreError is an OSError: (errno, message, filename) fill its attributes.
            Error::Io { path, source, .. } => match errors_class(py, &STORE_ERROR, "StoreError") {
                Ok(ty) => match source.raw_os_error() {
                    Some(errno) => PyErr::from_type(ty.clone(), (errno, err.to_string(), path.display().to_string())),
                    // Not from the OS (a pipe where an entry belongs): the message alone, which
                    // names the path, rather than "[Errno 0]".
                    None => PyErr::from_type(ty.clone(), (err.to_string(),)),
                },
                Err(e) => e,
            },
            _ => match errors_class(py, &CACHE_ERROR, "CacheError") {
                Ok(ty) => PyErr::from_type(ty.clone(), err.to_string()),
                Err(e) => e,
            },
        })
    }
}

static CACHE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static STORE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static FINGERPRINT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A `FingerprintError` saying `message`, which names the value and where it sits.
pub(super) fn fingerprint_error(py: Python<'_>, message: String) -> PyErr {
    match errors_class(py, &FINGERPRINT_ERROR, "FingerprintError") {
        Ok(ty) => PyErr::from_type(ty.clone(), message),
        Err(err) => err,
    }
}

/// Whether `err` is already a `FingerprintError` (so it passes through without a second wrap).
pub(super) fn is_fingerprint_error(py: Python<'_>, err: &PyErr) -> bool {
    errors_class(py, &FINGERPRINT_ERROR, "FingerprintError")
        .is_ok_and(|ty| err.get_type(py).is_subclass(ty).unwrap_or(false))
}

fn errors_class<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, "afml_cache.errors", name)
}
