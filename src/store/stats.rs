//! Counters shared by every process using a cache directory: u64 atomics in a memory-mapped
//! file. Updates are single atomic instructions on shared memory, so they are never lost between
//! processes and cost nanoseconds on the hot path. The store keeps one file of [`Counter`]s; each
//! cached function has its own file of [`FunctionCounter`]s.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

use super::trust::Trust;
use super::{fault, is_read_only};
use crate::error::{Error, Result};

const FILE_LEN: u64 = 4096;

/// A counter's place in its file (slot 0 holds the file's magic word).
pub trait Slot: Copy {
    const MAGIC: u64;
    fn index(self) -> usize;
}

/// The store's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    Hits = 1,
    Misses,
    Sets,
    Deletes,
    Evictions,
    /// Bytes of entry files on disk.
    Bytes,
    /// Number of entry files.
    Count,
    /// Bumped by every change to any entry: a memory copy made at generation g is current while
    /// the generation is still g, without looking at the disk.
    Generation,
    /// 1 once each function's [`FunctionCounter::Bytes`] and [`FunctionCounter::Entries`] are
    /// kept; a directory written by an older version has them rebuilt from its files first.
    FunctionSizesKept,
}

impl Slot for Counter {
    const MAGIC: u64 = u64::from_le_bytes(*b"AFMLCST1");
    fn index(self) -> usize {
        self as usize
    }
}

/// A cached function's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum FunctionCounter {
    Calls = 1,
    Hits,
    Misses,
    /// Nanoseconds spent computing on misses.
    ComputeNs,
    /// Nanoseconds of computation that hits avoided (the stored compute time of each hit).
    SavedNs,
    /// When the function was last called, in ns since the epoch (kept as a maximum).
    LastAccessedNs,
    /// Nanoseconds of whole calls that hit, and that missed (the sums of the histograms).
    HitLatencyNs,
    MissLatencyNs,
    /// Bytes and number of the function's entry files on disk: kept by every write and removal,
    /// so reports need no scan; rebuilt from the files by `check(fix)`.
    Bytes,
    Entries,
}

impl Slot for FunctionCounter {
    const MAGIC: u64 = u64::from_le_bytes(*b"AFMLFNS1");
    fn index(self) -> usize {
        self as usize
    }
}

/// Buckets of a latency histogram: 4 per doubling from 1 µs, so a percentile read from them is
/// within 19% of the true value; the last bucket (past nine days) is open-ended.
pub const LATENCY_BUCKETS: usize = 160;
/// Where the histograms of hits and of misses start in a function's counters file (after the
/// [`FunctionCounter`]s, with room to add more of those).
const LATENCY_SLOTS: [usize; 2] = [64, 64 + LATENCY_BUCKETS];

/// The upper bound, in seconds, of latency bucket `i` (infinite for the last).
pub fn latency_bound(i: usize) -> f64 {
    if i + 1 >= LATENCY_BUCKETS {
        f64::INFINITY
    } else {
        1e-6 * (i as f64 / 4.0).exp2()
    }
}

/// The bucket of a call that took `ns` nanoseconds: the first whose bound is not below it.
pub fn latency_bucket(ns: u64) -> usize {
    if ns <= 1_000 {
        return 0;
    }
    let quarters = (4.0 * (ns as f64 / 1_000.0).log2()).ceil() as usize;
    // Rounding can put a value on a bound one bucket too high or low; settle it exactly.
    let mut i = quarters.min(LATENCY_BUCKETS - 1);
    while i > 0 && ns as f64 <= latency_bound(i - 1) * 1e9 {
        i -= 1;
    }
    while (ns as f64) > latency_bound(i) * 1e9 {
        i += 1;
    }
    i
}

pub struct SharedCounters<S: Slot> {
    /// Keeps a truncated file's SIGBUS from killing the process (`fault.rs`); declared before
    /// `map`, so it is unregistered before the map is unmapped.
    guard: fault::Guard,
    map: MmapMut,
    /// (device, inode) of the file shared with other processes; None for counters of this
    /// process alone (a read-only directory).
    identity: Option<(u64, u64)>,
    /// Whether `open` found the file new, or of another format, and started it from zero: the
    /// counts that are sizes of what is on disk are then to be rebuilt from the entries.
    fresh: bool,
    _slots: std::marker::PhantomData<S>,
}

impl<S: Slot> SharedCounters<S> {
    pub fn open(path: &Path, trust: Trust) -> Result<Self> {
        let file = match trust.open_or_create(path, trust.shared_mode()) {
            Ok(file) => file,
            Err(Error::Io { source, .. }) if is_read_only(&source) => return Self::private(path),
            Err(e) => return Err(e),
        };
        let meta = file.metadata().map_err(|e| Error::io("cannot stat", path, e))?;
        // A sparse file would be given its pages only when the map is first written, and on a
        // full filesystem that write kills the process (SIGBUS). Allocated now, a full disk is an
        // error here. Growing with zeros is safe even if another process does it at once.
        if meta.blocks() * 512 < FILE_LEN {
            // SAFETY: a valid descriptor and range.
            let failed = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, FILE_LEN as libc::off_t) };
            if failed != 0 {
                let error = std::io::Error::from_raw_os_error(failed);
                return Err(Error::io("cannot allocate the counters file", path, error));
            }
        }
        // SAFETY: the file is FILE_LEN bytes and only ever accessed through atomics.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| Error::io("cannot map the counters file", path, e))?;
        let guard = fault::register(map.as_ptr(), map.len());
        let identity = Some((meta.dev(), meta.ino()));
        let mut counters = Self { guard, map, identity, fresh: false, _slots: std::marker::PhantomData };
        counters.fresh = match counters.slot(0).compare_exchange(0, S::MAGIC, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,                            // a new file, now ours
            Err(found) if found == S::MAGIC => false, // ours already
            // Not our format: start from zero.
            Err(_) => {
                counters.start_afresh();
                true
            }
        };
        Ok(counters)
    }

    /// The counters of a cache this process may only read (a read-only mount, a directory of
    /// another user's): a private copy of the file, or zeros, that this process counts in
    /// alone, so that it still reads the cache's entries.
    pub fn private(path: &Path) -> Result<Self> {
        let map = match std::fs::File::open(path) {
            // SAFETY: private (copy-on-write) pages: the file is never written through them.
            Ok(file) if file.metadata().is_ok_and(|m| m.len() >= FILE_LEN) => unsafe {
                memmap2::MmapOptions::new().len(FILE_LEN as usize).map_copy(&file)
            },
            _ => MmapMut::map_anon(FILE_LEN as usize),
        }
        .map_err(|e| Error::io("cannot map the counters file", path, e))?;
        let counters =
            Self { guard: fault::Guard::none(), map, identity: None, fresh: false, _slots: std::marker::PhantomData };
        if counters.slot(0).load(Ordering::Acquire) != S::MAGIC {
            counters.start_afresh();
        }
        Ok(counters)
    }

    /// Whether other processes see these counters (and this process theirs): not a read-only
    /// directory's, nor a file truncated under this process (`detached`).
    pub fn is_shared(&self) -> bool {
        self.identity.is_some() && !self.detached()
    }

    /// Whether this process started the shared file from zero (see the field).
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// Whether the file was truncated under this process, which counts alone since.
    pub fn detached(&self) -> bool {
        self.guard.detached()
    }

    /// (device, inode) of the shared file; None when private.
    pub fn identity(&self) -> Option<(u64, u64)> {
        self.identity
    }

    /// Zero counts, marked as ours (a file of another format, or none).
    fn start_afresh(&self) {
        for i in 1..(FILE_LEN as usize / 8) {
            self.slot(i).store(0, Ordering::Relaxed);
        }
        self.slot(0).store(S::MAGIC, Ordering::Release);
    }

    fn slot(&self, index: usize) -> &AtomicU64 {
        assert!(index < FILE_LEN as usize / 8);
        // SAFETY: the map is page-aligned and FILE_LEN bytes long, and index is in bounds.
        unsafe { &*(self.map.as_ptr().cast::<AtomicU64>().add(index)) }
    }

    pub fn add(&self, counter: S, n: u64) {
        self.slot(counter.index()).fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts, wrapping: one process may count a file's removal before another counts its
    /// creation, and the two must cancel out in any order. `get` reads a value below zero as 0.
    pub fn sub(&self, counter: S, n: u64) {
        self.slot(counter.index()).fetch_sub(n, Ordering::Relaxed);
    }

    pub fn max(&self, counter: S, value: u64) {
        self.slot(counter.index()).fetch_max(value, Ordering::Relaxed);
    }

    /// The counter as stored, a wrapped negative included (see `sub`): for arithmetic that
    /// must cancel out, as `get`'s reading of it as 0 would not.
    pub fn raw(&self, counter: S) -> u64 {
        self.slot(counter.index()).load(Ordering::Relaxed)
    }

    pub fn get(&self, counter: S) -> u64 {
        let value = self.slot(counter.index()).load(Ordering::Relaxed);
        // No counter reaches 2^63; above it is a wrapped negative (see `sub`).
        if value > i64::MAX as u64 {
            0
        } else {
            value
        }
    }

    pub fn set(&self, counter: S, value: u64) {
        self.slot(counter.index()).store(value, Ordering::Relaxed);
    }
}

impl SharedCounters<FunctionCounter> {
    /// Counts a call of `ns` nanoseconds in the histogram of hits or of misses.
    pub fn add_latency(&self, hit: bool, ns: u64) {
        self.slot(LATENCY_SLOTS[usize::from(!hit)] + latency_bucket(ns)).fetch_add(1, Ordering::Relaxed);
    }

    /// The histogram of hits or of misses: calls per bucket.
    pub fn latency(&self, hit: bool) -> Vec<u64> {
        let start = LATENCY_SLOTS[usize::from(!hit)];
        (start..start + LATENCY_BUCKETS).map(|i| self.slot(i).load(Ordering::Relaxed)).collect()
    }

    /// Sets every call counter and histogram to zero; the sizes of the entries stay (the
    /// entries do).
    pub fn reset(&self) {
        let sizes = [FunctionCounter::Bytes.index(), FunctionCounter::Entries.index()];
        for i in (1..(FILE_LEN as usize / 8)).filter(|i| !sizes.contains(i)) {
            self.slot(i).store(0, Ordering::Relaxed);
        }
    }
}

/// The store's counters file.
pub type Stats = SharedCounters<Counter>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_handles_on_one_file_share_counts() {
        let dir = std::env::temp_dir().join(format!("afml-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats");
        let a = Stats::open(&path, Trust::Owner).unwrap();
        let b = Stats::open(&path, Trust::Owner).unwrap();
        a.add(Counter::Hits, 2);
        b.add(Counter::Hits, 3);
        b.sub(Counter::Bytes, 10);
        assert_eq!(a.get(Counter::Hits), 5);
        assert_eq!(a.get(Counter::Bytes), 0);
        // A removal counted before its creation cancels out.
        a.add(Counter::Bytes, 15);
        assert_eq!(b.get(Counter::Bytes), 5);
        // Allocated, not sparse: a full disk cannot fault a write into the map.
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= FILE_LEN);
        drop((a, b));
        assert_eq!(Stats::open(&path, Trust::Owner).unwrap().get(Counter::Hits), 5);
        // A file of another kind is not misread as this one.
        let f = SharedCounters::<FunctionCounter>::open(&path, Trust::Owner).unwrap();
        assert_eq!(f.get(FunctionCounter::Calls), 0);
        f.max(FunctionCounter::LastAccessedNs, 7);
        f.max(FunctionCounter::LastAccessedNs, 3);
        assert_eq!(f.get(FunctionCounter::LastAccessedNs), 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latency_buckets_hold_what_their_bounds_say() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1_000), 0);
        assert_eq!(latency_bucket(1_001), 1);
        assert_eq!(latency_bucket(2_000), 4); // 1 µs · 2^(4/4)
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        for ns in (0..40).map(|e| 3u64.pow(e / 2) * (1 + e as u64 % 2)) {
            let i = latency_bucket(ns);
            assert!(ns as f64 <= latency_bound(i) * 1e9, "{ns} ns above bucket {i}");
            assert!(i == 0 || ns as f64 > latency_bound(i - 1) * 1e9, "{ns} ns belongs below bucket {i}");
        }
        let dir = std::env::temp_dir().join(format!("afml-latency-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = SharedCounters::<FunctionCounter>::open(&dir.join("f.stats"), Trust::Owner).unwrap();
        f.add_latency(true, 1_500);
        f.add_latency(false, 3_000_000_000);
        f.add(FunctionCounter::Calls, 2);
        assert_eq!(f.latency(true)[latency_bucket(1_500)], 1);
        assert_eq!(f.latency(false).iter().sum::<u64>(), 1);
        assert_eq!(f.latency(true).iter().sum::<u64>(), 1);
        f.add(FunctionCounter::Bytes, 300);
        f.add(FunctionCounter::Entries, 2);
        f.reset();
        assert_eq!(f.get(FunctionCounter::Calls), 0);
        assert_eq!(f.latency(false).iter().sum::<u64>(), 0);
        // Resetting the statistics leaves the entries, so their sizes stay.
        assert_eq!((f.get(FunctionCounter::Bytes), f.get(FunctionCounter::Entries)), (300, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
