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

/// Runs `work` for a value written behind: on a rayon pool of its own (a thread per core) at a
/// lower priority (10 nice steps below the thread that started it, on Linux), so that a write
/// uses the cores the caller leaves idle and yields those its next fingerprint and function
/// need; rayon work inside it stays in that pool. In a forked child, which inherited the
/// parent's record of that pool but not its threads, `work` runs on the calling thread.
pub fn in_background<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    static WRITER: OnceLock<Option<(u32, rayon::ThreadPool)>> = OnceLock::new();
    let pool = WRITER.get_or_init(|| {
        let built = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("afml-cache-writer-{i}"))
            .start_handler(|_| lower_priority())
            .build();
        built.ok().map(|pool| (std::process::id(), pool))
    });
    match pool {
        Some((owner, pool)) if *owner == std::process::id() => pool.install(work),
        _ => work(),
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // Linux applies PRIO_PROCESS with `who` 0 to the calling thread alone, which starts at the
    // nice value of the thread that made it. Best effort: a failure leaves it as it is.
    // SAFETY: getpriority and setpriority read no memory of ours.
    unsafe {
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (nice + 10).min(19));
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    #[test]
    fn background_work_runs_in_the_writers_pool_below_the_callers_priority() {
        let name = super::in_background(|| std::thread::current().name().map(String::from));
        assert!(name.is_some_and(|n| n.starts_with("afml-cache-writer-")));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: getpriority reads no memory of ours.
            let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let caller = nice();
            assert_eq!(super::in_background(nice), (caller + 10).min(19));
        }
    }
}
