//! Per-key locks for single-flight: one process (or thread) computes a missing value while the
//! others wait for it. They are `flock` locks on small files, so the kernel releases a lock the
//! moment its holder dies: a lock of a dead process is never waited on.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Held until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

/// Waits up to `timeout` for the lock at `path`; `None` when it is still held by then.
pub fn acquire(path: &Path, timeout: Duration) -> Result<Option<KeyLock>> {
    let file = open_lock_file(path)?;
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(KeyLock { _file: file })),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(Error::io("cannot lock", path, e)),
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Ok(None);
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Takes the lock only if it is free right now.
pub fn try_acquire(path: &Path) -> Result<Option<KeyLock>> {
    acquire(path, Duration::ZERO)
}

fn open_lock_file(path: &Path) -> Result<File> {
    let open = || OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path);
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                super::create_private_dir(dir)?;
            }
            open().map_err(|e| Error::io("cannot create the lock file", path, e))
        }
        Err(e) => Err(Error::io("cannot open the lock file", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_and_gets_it_after_release() {
        let dir = std::env::temp_dir().join(format!("afml-lock-{}", std::process::id()));
        let path = dir.join("x").join("k.lock");
        let first = acquire(&path, Duration::from_secs(1)).unwrap().expect("free lock");
        assert!(try_acquire(&path).unwrap().is_none(), "a held lock was taken twice");
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || acquire(&path, Duration::from_secs(5)).unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(first);
        assert!(waiter.join().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
