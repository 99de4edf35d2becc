//! afml-cache's Rust core. `fingerprint` (content digests) and `error` are plain Rust with no
//! Python types; `bindings` is the one layer that touches Python.

pub mod error;
pub mod fingerprint;

#[cfg(feature = "python")]
mod bindings;

#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    #[pymodule_export]
    use crate::bindings::fingerprint;
    #[pymodule_export]
    const SPEC_VERSION: u32 = crate::fingerprint::SPEC_VERSION;
}
