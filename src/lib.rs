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
    use crate::bindings::store::{KeyLock, Store};
    #[pymodule_export]
    const SPEC_VERSION: u32 = crate::fingerprint::SPEC_VERSION;
}
