//! Per-key locks for single-flight: one process (or thread) computes a missing value while the
//! others wait for it. They are `flock` locks on small files, so the kernel releases a lock the
//! moment its holder dies: a lock of a dead process is never waited on.
//!
//! A forked child must not hold its parent's locks. A `flock` belongs to the open file
//! description, which `fork` shares with the child, so the lock would stay held until the child
//! closes its copy too, which a child that knows nothing of it (a pool worker, a server) only
//! does when it exits. POSIX record locks (`F_SETLK`) are not inherited, but they belong to the
//! process, so two threads of one process would not exclude each other, and closing any
//! descriptor of the file drops them; OFD locks are shared by `fork` like `flock`. So this keeps
//! `flock` and, in every forked child (a `pthread_atfork` handler), points each inherited lock
//! descriptor at /dev/null: the child's copy of the open file description is gone, so the lock is
//! released when the parent releases it (explicitly, `LOCK_UN`, in case the child has not run
//! that handler yet) or dies, and the number stays valid for the child's own `KeyLock`s to close
//! later. Lock files are registered while they are open (waiting included:
//! a description the parent locks after the fork would be shared too), under a mutex the fork
//! handler holds across `fork`, so no child sees a half-updated list.

use std::cell::RefCell;
use std::fs::{File, TryLockError};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use super::trust::Trust;
use crate::error::{Error, Result};

/// Held until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _file: LockFile,
}

/// Waits up to `timeout` for the lock at `path`; `None` when it is still held by then.
pub fn acquire(path: &Path, timeout: Duration, trust: Trust) -> Result<Option<KeyLock>> {
    let file = LockFile::open(path, trust)?;
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        match file.file().try_lock() {
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
pub fn try_acquire(path: &Path, trust: Trust) -> Result<Option<KeyLock>> {
    acquire(path, Duration::ZERO, trust)
}

/// Descriptors of the lock files open in this process.
static OPEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());
static AT_FORK: Once = Once::new();

thread_local! {
    /// The registry, held by the forking thread from just before `fork` until just after.
    static FORKING: RefCell<Option<MutexGuard<'static, Vec<RawFd>>>> = const { RefCell::new(None) };
}

fn open_locks() -> MutexGuard<'static, Vec<RawFd>> {
    OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A lock file, registered while open.
#[derive(Debug)]
struct LockFile {
    file: Option<File>,
}

impl LockFile {
    fn open(path: &Path, trust: Trust) -> Result<Self> {
        AT_FORK.call_once(|| {
            // SAFETY: the handlers are plain functions that stay valid for the process's life.
            unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child)) };
        });
        let mut open = open_locks();
        let file = trust.open_or_create(path, trust.shared_mode())?;
        open.push(file.as_raw_fd());
        Ok(Self { file: Some(file) })
    }

    fn file(&self) -> &File {
        self.file.as_ref().expect("open until dropped")
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let mut open = open_locks();
        let file = self.file.take().expect("open until dropped");
        // Unlocked, not only closed: a child forked a moment ago may not have let go of its
        // copy yet. (In a child, its copy is /dev/null by the time any of this runs.)
        let _ = file.unlock();
        open.retain(|&registered| registered != file.as_raw_fd());
        // Closed while the registry is held: a fork in between would give the child a copy
        // that is no longer listed.
        drop(file);
    }
}

extern "C" fn before_fork() {
    FORKING.with(|held| *held.borrow_mut() = Some(open_locks()));
}

extern "C" fn after_fork_in_parent() {
    FORKING.with(|held| held.borrow_mut().take());
}

/// Runs in the child before `fork` returns there; only async-signal-safe calls.
extern "C" fn after_fork_in_child() {
    FORKING.with(|held| {
        if let Some(open) = held.borrow_mut().take() {
            // SAFETY: open, dup2, fcntl and close on descriptors this process owns.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if null >= 0 {
                    for &fd in open.iter() {
                        if libc::dup2(null, fd) == fd {
                            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                        }
                    }
                    libc::close(null);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_and_gets_it_after_release() {
        let dir = std::env::temp_dir().join(format!("afml-lock-{}", std::process::id()));
        let path = dir.join("x").join("k.lock");
        let first = acquire(&path, Duration::from_secs(1), Trust::Owner).unwrap().expect("free lock");
        assert!(try_acquire(&path, Trust::Owner).unwrap().is_none(), "a held lock was taken twice");
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || acquire(&path, Duration::from_secs(5), Trust::Owner).unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(first);
        assert!(waiter.join().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_forked_child_keeps_no_lock_of_its_parent() {
        let dir = std::env::temp_dir().join(format!("afml-lock-fork-{}", std::process::id()));
        let path = dir.join("k.lock");
        let held = acquire(&path, Duration::ZERO, Trust::Owner).unwrap().expect("free lock");
        let (mut to_child, mut from_parent) = ([0; 2], [0u8; 1]);
        // SAFETY: a pipe, a fork whose child only reads, locks and leaves with _exit.
        unsafe {
            assert_eq!(libc::pipe(to_child.as_mut_ptr()), 0);
            let child = libc::fork();
            if child == 0 {
                libc::close(to_child[1]);
                libc::read(to_child[0], from_parent.as_mut_ptr().cast(), 1);
                let mine = try_acquire(&path, Trust::Owner).map(|l| l.is_some()).unwrap_or(false);
                libc::_exit(if mine { 0 } else { 3 });
            }
            libc::close(to_child[0]);
            drop(held);
            // The child still lives, and the lock is free.
            assert!(try_acquire(&path, Trust::Owner).unwrap().is_some());
            libc::write(to_child[1], b"x".as_ptr().cast(), 1);
            let mut status = 0;
            libc::waitpid(child, &mut status, 0);
            assert_eq!(libc::WEXITSTATUS(status), 0, "the child could not take the lock its parent released");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
