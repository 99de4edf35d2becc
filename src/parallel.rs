//! Whether rayon's thread pool can run work in this process.
//!
//! A child made by `fork()` (multiprocessing's "fork" start method, joblib and Dask fork
//! workers) inherits the parent's memory, including rayon's record of the pool it started, but
//! none of the pool's threads: work sent there would wait forever. Every parallel path asks here
//! first, and a forked child runs it serially.

use std::sync::OnceLock;

/// The process that first sent work to the pool (set just before it did).
static POOL_OWNER: OnceLock<u32> = OnceLock::new();

pub fn available() -> bool {
    *POOL_OWNER.get_or_init(std::process::id) == std::process::id()
}

/// `items` mapped through `f`, in order: in parallel where the pool can run, serially in a
/// forked child.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if available() {
        items.par_iter().map(f).collect()
    } else {
        items.iter().map(f).collect()
    }
}
