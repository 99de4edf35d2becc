//! Mapped files that vanish under a running process. The counters are a file mapped into memory
//! (`stats.rs`), and so is an entry while it uploads (`export.rs`); if someone truncates it while a process runs (a restore copying a backup
//! over the directory, `: > stats`), the next counter update touches a page that no longer exists
//! and the kernel kills the process with SIGBUS. A cache must never end the user's run, so this
//! module's SIGBUS handler maps zeros over a registered region that faulted and marks it
//! detached: the counters then go on in this process alone (as a read-only directory's do) until
//! the store opens the file afresh. A SIGBUS anywhere else goes to the handler that was there
//! before, or kills the process as it would have.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// Regions registered at once, at most; more (a process with more cached functions than this)
/// stay unprotected, as before.
const SLOTS: usize = 1024;

static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LENGTHS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static DETACHED: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
static INSTALL: Once = Once::new();
/// The handler found at installation, called for faults outside the registered regions.
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

/// A registered region; unregistered when dropped, before its owner unmaps it.
pub struct Guard {
    slot: Option<usize>,
}

impl Guard {
    /// No region: memory of this process alone, which nothing can truncate.
    pub fn none() -> Self {
        Self { slot: None }
    }

    /// Whether the handler covers the region (false when every slot was taken).
    pub fn registered(&self) -> bool {
        self.slot.is_some()
    }

    /// Whether the region faulted and now holds this process's zeros instead of the file.
    pub fn detached(&self) -> bool {
        self.slot.is_some_and(|slot| DETACHED[slot].load(Ordering::Acquire))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            let _registering = REGISTERING.lock();
            STARTS[slot].store(0, Ordering::Release);
            DETACHED[slot].store(false, Ordering::Release);
        }
    }
}

/// Registers `len` bytes at `start` (a file mapping) for the handler.
pub fn register(start: *const u8, len: usize) -> Guard {
    INSTALL.call_once(install);
    let _registering = REGISTERING.lock(); // the handler only reads; registrations take turns
    for slot in 0..SLOTS {
        if STARTS[slot].load(Ordering::Acquire) == 0 {
            LENGTHS[slot].store(len, Ordering::Release);
            DETACHED[slot].store(false, Ordering::Release);
            STARTS[slot].store(start as usize, Ordering::Release);
            return Guard { slot: Some(slot) };
        }
    }
    Guard { slot: None }
}

static REGISTERING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn install() {
    // SAFETY: sigaction with a zeroed struct, a valid handler and flags; PREVIOUS is written
    // here once, before the handler can run (it is installed by this very call).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, (&raw mut PREVIOUS).cast::<libc::sigaction>());
    }
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let (address, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    if code > 0 {
        // A fault at an address (not a signal sent by kill): ours if inside a registered region.
        for slot in 0..SLOTS {
            let start = STARTS[slot].load(Ordering::Acquire);
            let len = LENGTHS[slot].load(Ordering::Acquire);
            if start != 0 && address >= start && address < start + len {
                // SAFETY: the region is a live mapping of `len` bytes owned by counters that a
                // thread is using at this moment (it faulted there); zeros replace it in place.
                let mapped = unsafe {
                    libc::mmap(
                        start as *mut libc::c_void,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if mapped != libc::MAP_FAILED {
                    DETACHED[slot].store(true, Ordering::Release);
                    return; // the faulting instruction runs again, on the zeros
                }
            }
        }
    }
    // SAFETY: PREVIOUS was filled by `install` before this handler was set.
    unsafe {
        let previous = &*(&raw const PREVIOUS).cast::<libc::sigaction>();
        let handler = previous.sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // As if this handler had never been set: a fault runs again and kills the process;
            // a signal someone sent is sent again.
            libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut());
            if code <= 0 {
                libc::raise(signal);
            }
        } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let chained: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            chained(signal, info, context);
        } else {
            let chained: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            chained(signal);
        }
    }
}
