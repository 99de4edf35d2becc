//! Statistics shared by every process using a cache directory: atomic counters in a
//! memory-mapped file. Updates are single atomic instructions on shared memory, so they are never
//! lost between processes and cost nanoseconds on the hot path.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

use crate::error::{Error, Result};

const MAGIC: u64 = u64::from_le_bytes(*b"AFMLCST1");
const FILE_LEN: u64 = 4096;

/// The counters, in file order (after the magic word).
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
}

pub struct Stats {
    map: MmapMut,
}

impl Stats {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("cannot open the statistics file", path, e))?;
        if file.metadata().map_err(|e| Error::io("cannot stat", path, e))?.len() < FILE_LEN {
            // Growing with zeros is safe even if another process does it at the same time.
            file.set_len(FILE_LEN).map_err(|e| Error::io("cannot size the statistics file", path, e))?;
        }
        // SAFETY: the file is FILE_LEN bytes and only ever accessed through atomics.
        let map =
            unsafe { MmapMut::map_mut(&file) }.map_err(|e| Error::io("cannot map the statistics file", path, e))?;
        let stats = Self { map };
        match stats.slot(0).compare_exchange(0, MAGIC, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}                        // a new file, now ours
            Err(found) if found == MAGIC => {} // ours already
            Err(_) => {
                // Not our format: start from zero; `check(fix=True)` rebuilds the sizes.
                for i in 1..=Counter::Generation as usize {
                    stats.slot(i).store(0, Ordering::Relaxed);
                }
                stats.slot(0).store(MAGIC, Ordering::Release);
            }
        }
        Ok(stats)
    }

    fn slot(&self, index: usize) -> &AtomicU64 {
        // SAFETY: the map is page-aligned and FILE_LEN bytes long; index ≤ Generation < FILE_LEN / 8.
        unsafe { &*(self.map.as_ptr().cast::<AtomicU64>().add(index)) }
    }

    pub fn add(&self, counter: Counter, n: u64) {
        self.slot(counter as usize).fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts, saturating at zero (sizes can drift below zero after a crash between writing a
    /// file and counting it; a scan sets them right).
    pub fn sub(&self, counter: Counter, n: u64) {
        let slot = self.slot(counter as usize);
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.slot(counter as usize).load(Ordering::Relaxed)
    }

    pub fn set(&self, counter: Counter, value: u64) {
        self.slot(counter as usize).store(value, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_handles_on_one_file_share_counts() {
        let dir = std::env::temp_dir().join(format!("afml-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats");
        let a = Stats::open(&path).unwrap();
        let b = Stats::open(&path).unwrap();
        a.add(Counter::Hits, 2);
        b.add(Counter::Hits, 3);
        b.sub(Counter::Bytes, 10);
        assert_eq!(a.get(Counter::Hits), 5);
        assert_eq!(a.get(Counter::Bytes), 0);
        drop((a, b));
        assert_eq!(Stats::open(&path).unwrap().get(Counter::Hits), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
