//! afml-cache's Rust core. `fingerprint` (content digests), `codec` (buffer compression),
//! `store` (entries on disk), `memory` and `error` are plain Rust with no Python types; `bindings` is the
//! one layer that touches Python.

pub mod codec;
pub mod error;
pub mod fingerprint;
pub mod memory;
pub mod parallel;
pub mod store;

#[cfg(feature = "python")]
mod bindings;

#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    #[pymodule_export]
    use crate::bindings::fingerprint;
    #[pymodule_export]
    use crate::bindings::store::{EntryExport, EntryInfo, FunctionTotals, KeyLock, MappedEntry, StagedImport, Store};
    #[pymodule_export]
    const SPEC_VERSION: u32 = crate::fingerprint::SPEC_VERSION;

    use pyo3::prelude::*;
    use pyo3::types::PyTuple;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        use crate::store::{latency_bound, LATENCY_BUCKETS};
        let bounds = PyTuple::new(m.py(), (0..LATENCY_BUCKETS).map(latency_bound))?;
        m.add("LATENCY_BOUNDS", bounds)
    }
}
