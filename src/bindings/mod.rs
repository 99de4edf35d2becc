//! The one layer that touches Python: it walks Python values, hands bytes, shapes and Arrow
//! data to the core with the GIL released for heavy work, and turns failures into exceptions.

mod error;
pub mod store;
mod walk;

use pyo3::prelude::*;

/// The 64-hex-digit BLAKE3 content fingerprint of `obj` (see docs/fingerprint.md).
///
/// Equal content gives equal digests in any process, session or machine; any change to a value,
/// dtype, shape, column name, index label, tz or freq gives a different one. With
/// `strict=True`, a value that has no fingerprint rule raises `FingerprintError` naming its type
/// and where it sits inside `obj`, instead of being hashed through its pickle reduction.
#[pyfunction]
#[pyo3(signature = (obj, *, strict = false))]
pub fn fingerprint(py: Python<'_>, obj: &Bound<'_, PyAny>, strict: bool) -> PyResult<String> {
    walk::Walker::new(py, strict).hex(obj)
}
