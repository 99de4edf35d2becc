//! The store on disk: entries as files, the truth of the cache. Small entries are records
//! appended to a pack file per shard instead of files of their own (pack.rs); `pack::Location`
//! is where either kind is read, its counters written and its bytes removed.
//!
//! Writes go to a temp file beside the entry, then an atomic rename, so a reader sees the old
//! entry or the new one, never part of one; a writer killed at any instant leaves at most a temp
//! file, which scans remove once its writer is gone. Reads verify the keyed MAC before anything is
//! returned; a corrupt, truncated, foreign or older-format entry is removed and reported as a miss.
//! Sizes are tracked in shared counters; when a write pushes the total over the limit, one process
//! at a time scans the entries and evicts by policy down to 90% of the limit.

mod archive;
pub mod entry;
mod export;
mod fault;
mod large;
mod layout;
pub mod lock;
mod pack;
#[cfg(test)]
mod pack_tests;
pub mod policy;
pub mod stats;
#[cfg(test)]
mod tests;
mod trust;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::codec::{self, Compression};
use crate::error::{Error, Result};
use crate::parallel;
pub use archive::{Outputs, Staged};
pub use entry::{Counters, Header};
pub use export::{Export, Mapped};
pub use large::{Filled, LargeEntry, Streamed};
pub use lock::KeyLock;
use pack::{Location, PackIndex, PACKED_BELOW};
pub use policy::{Policy, Usage};
pub use stats::{latency_bound, Counter, FunctionCounter, LATENCY_BUCKETS};
use stats::{SharedCounters, Stats};
pub use trust::Trust;

/// How often (at most) a store checks that its directory was not replaced under it: a `stat`
/// per operation would be a third of a memory hit's cost.
const CHECK_DIRECTORY_NS: u64 = 20_000_000;

/// Temp files older than this are removed by scans even if their writer seems alive (its pid
/// may have been reused).
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// A value to store: its pickle stream and out-of-band buffers (bytes, item size).
pub struct NewEntry<'a> {
    pub namespace: &'a str,
    pub key: &'a str,
    pub stream: &'a [u8],
    pub buffers: Vec<(&'a [u8], usize)>,
    pub compression: Compression,
    pub expires: Option<f64>,
    pub compute_time: f64,
    pub protected: bool,
    pub tags: Vec<String>,
    pub time_range: Option<(i64, i64)>,
    pub metadata: String,
}

/// A value's buffers compressed for its write ([`encode`], [`Store::put_encoded`]): a frame per
/// buffer, and the buffers' bytes before compression.
struct Encoded {
    frames: Vec<Vec<u8>>,
    raw_len: usize,
}

impl Drop for Encoded {
    /// The frames' memory goes to the next values' frames (see `memory::Spare`).
    fn drop(&mut self) {
        for frame in self.frames.drain(..) {
            crate::memory::FRAMES.give_back(frame);
        }
    }
}

/// Compresses each buffer (item size beside it) into its frame, in parallel.
fn encode(buffers: &[(&[u8], usize)], compression: Compression) -> Encoded {
    let frames = parallel::map(buffers, |(data, itemsize)| codec::encode(data, *itemsize, compression));
    Encoded { frames, raw_len: buffers.iter().map(|(b, _)| b.len()).sum() }
}

/// The header of `new`, whose buffers hold `raw_len` bytes, written now.
fn header_of(new: NewEntry<'_>, raw_len: usize) -> Header {
    Header {
        namespace: new.namespace.to_string(),
        key: new.key.to_string(),
        created: now(),
        expires: new.expires,
        compute_time: new.compute_time,
        value_size: (new.stream.len() + raw_len) as u64,
        protected: new.protected,
        tags: new.tags,
        time_range: new.time_range,
        metadata: new.metadata,
        compression: new.compression.name().to_string(),
    }
}

#[derive(Debug)]
pub enum Stored {
    /// Written; the entry file's size in bytes and its MAC (identifies this very write).
    Written { bytes: u64, mac: [u8; 32] },
    /// Larger than the whole size limit, so not written (it would evict everything).
    TooLarge { bytes: u64, limit: u64 },
}

/// A verified entry.
pub struct Loaded {
    pub bytes: Vec<u8>,
    pub opened: entry::Opened,
}

impl Loaded {
    pub fn mac(&self) -> [u8; 32] {
        self.bytes[self.bytes.len() - entry::MAC_LEN..].try_into().unwrap()
    }
}

pub enum Lookup {
    Hit(Box<Loaded>),
    Miss,
    /// The entry was unreadable and has been removed: a miss, with the reason to log.
    Removed {
        path: PathBuf,
        reason: String,
    },
}

/// An entry as a scan sees it (header read without verifying the MAC: for listing and
/// eviction, never for returning a value).
#[derive(Debug, Clone)]
pub struct Scanned {
    pub path: PathBuf,
    pub bytes: u64,
    pub header: Header,
    pub counters: Counters,
}

impl Scanned {
    pub fn usage(&self) -> Usage {
        Usage {
            created: self.header.created,
            last_access: self.counters.last_access_ns as f64 / 1e9,
            hits: self.counters.hits,
            bytes: self.bytes,
            compute_time: self.header.compute_time,
        }
    }

    pub fn is_expired(&self, now: f64) -> bool {
        self.header.expires.is_some_and(|e| e <= now)
    }
}

/// One call of a cached function, as its statistics count it.
#[derive(Debug, Clone, Copy)]
pub struct CallRecord {
    pub hit: bool,
    /// Time spent computing (misses).
    pub compute_ns: u64,
    /// Computation a hit avoided: the entry's stored compute time.
    pub saved_ns: u64,
    /// The whole call, as the caller saw it.
    pub latency_ns: u64,
}

/// A cached function's counters, as [`Store::function_stats`] reads them.
#[derive(Debug, Clone)]
pub struct FunctionStats {
    pub namespace: String,
    pub calls: u64,
    pub hits: u64,
    pub misses: u64,
    pub compute_ns: u64,
    pub saved_ns: u64,
    /// ns since the epoch; 0 if never called.
    pub last_accessed_ns: u64,
    /// Total time of the calls that hit, and that missed.
    pub hit_latency_ns: u64,
    pub miss_latency_ns: u64,
    /// Calls per latency bucket (see [`latency_bound`]).
    pub hit_latency: Vec<u64>,
    pub miss_latency: Vec<u64>,
    /// Bytes and number of the namespace's entry files on disk.
    pub bytes: u64,
    pub entries: u64,
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub path: PathBuf,
    pub problem: String,
    pub fixed: bool,
}

/// The directory's MAC key and shared counters. Replaced as a whole when the directory is
/// replaced under a running process (e.g. `rm -rf` and a new process recreating it).
pub struct Keyring {
    pub mac_key: [u8; 32],
    pub stats: Stats,
    /// Counters of cached functions, by namespace, opened on first use.
    functions: Mutex<HashMap<String, Arc<SharedCounters<FunctionCounter>>>>,
    /// The same counters files by namespace directory name, for what knows only an entry's path
    /// (its removal, counted in its namespace's sizes).
    sizes: Mutex<HashMap<String, Arc<SharedCounters<FunctionCounter>>>>,
    /// (device, inode) of mac.key: a new key file means a new directory.
    identity: (u64, u64),
    /// This process's index of each pack it has read, by path.
    packs: Mutex<HashMap<PathBuf, Arc<Mutex<PackIndex>>>>,
}

impl Keyring {
    /// Refuses a directory others could write before reading or creating anything in it.
    fn open(root: &Path, trust: Trust) -> Result<Self> {
        trust.create_dir(root)?;
        trust.check_dir(root)?;
        let entries = layout::entries_dir(root);
        trust.create_dir(&entries)?;
        trust.check_dir(&entries)?;
        let key_path = root.join("mac.key");
        let mac_key = load_or_create_mac_key(&key_path, trust)?;
        trust.check_key(&key_path)?;
        let identity = file_identity(&key_path)?;
        let stats_path = root.join("stats");
        if fs::symlink_metadata(&stats_path).is_ok() && !fs::metadata(&stats_path).is_ok_and(|m| m.is_file()) {
            // Only counters live there, which the entries rebuild: say what to do, as for mac.key.
            let why = "not a regular file (a directory, pipe or broken link); remove it and the counters \
                       start again from the entries";
            return Err(Error::io("cannot use the counters file", &stats_path, std::io::Error::other(why)));
        }
        let stats = Stats::open(&stats_path, trust)?;
        Ok(Self {
            mac_key,
            stats,
            functions: Mutex::default(),
            sizes: Mutex::default(),
            identity,
            packs: Mutex::default(),
        })
    }
}

pub struct Store {
    root: PathBuf,
    keyring: RwLock<Arc<Keyring>>,
    /// Bumped each time the keyring is replaced; part of `generation()`.
    epoch: AtomicU64,
    /// Counts `generation()` calls while the counters are private (see there).
    unshared_reads: AtomicU64,
    last_check_ns: AtomicU64,
    size_limit: u64,
    policy: Policy,
    trust: Trust,
    temp_sequence: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the cache directory `root`; refuses it (`Error::Untrusted`) if
    /// anyone `trust` does not cover could write it.
    pub fn open(root: &Path, size_limit: u64, policy: Policy, trust: Trust) -> Result<Self> {
        let keyring = Keyring::open(root, trust)?;
        let store = Self {
            root: root.to_path_buf(),
            keyring: RwLock::new(Arc::new(keyring)),
            epoch: AtomicU64::new(0),
            unshared_reads: AtomicU64::new(0),
            last_check_ns: AtomicU64::new(now_ns()),
            size_limit,
            policy,
            trust,
            temp_sequence: AtomicU64::new(0),
        };
        store.count_entries_if_fresh();
        Ok(store)
    }

    /// Counts the entries on disk into counters this process started from zero (a counters
    /// file removed, emptied or restored from elsewhere): the size limit and every report read
    /// them, and left at zero they would never see the entries already there. A new cache's
    /// scan is of an empty directory.
    fn count_entries_if_fresh(&self) {
        let ring = self.keyring.read().clone();
        if !ring.stats.fresh() {
            return;
        }
        // Other processes may count their writes meanwhile: the scan's totals replace only what
        // was counted before it began (whose entries it lists), by adding the difference.
        let (bytes_before, count_before) = (ring.stats.raw(Counter::Bytes), ring.stats.raw(Counter::Count));
        // Unlistable entries stay uncounted, as before; check(fix=True) reports them.
        if let Ok(entries) = self.scan(None) {
            let bytes: u64 = entries.iter().map(|s| s.bytes).sum();
            // Wrapping, as every count here: an entry removed meanwhile cancels out.
            ring.stats.add(Counter::Bytes, bytes.wrapping_sub(bytes_before));
            ring.stats.add(Counter::Count, (entries.len() as u64).wrapping_sub(count_before));
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn size_limit(&self) -> u64 {
        self.size_limit
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The current keyring, after checking (at most every 20 ms) that the directory is still the
    /// one it was read from: a process must not seal entries with, or trust memory copies of, a
    /// directory that was replaced under it.
    pub fn keyring(&self) -> Arc<Keyring> {
        let now = now_ns();
        let last = self.last_check_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= CHECK_DIRECTORY_NS {
            self.last_check_ns.store(now, Ordering::Relaxed);
            // A failed check leaves the keyring as it is; the operation reports its own error.
            let _ = self.refresh();
        }
        self.keyring.read().clone()
    }

    /// Re-reads the keyring if mac.key is no longer the file it was (the directory was replaced),
    /// or the shared counters' file is not (deleted or replaced: the counters this process maps
    /// would no longer see other processes' writes). Returns whether it changed.
    pub fn refresh(&self) -> Result<bool> {
        let identity_of = |path: &Path| match file_identity(path) {
            Ok(identity) => Ok(identity),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok((0, 0)),
            Err(e) => Err(e),
        };
        let identity = identity_of(&self.root.join("mac.key"))?;
        let current = self.keyring.read().clone();
        let counters = current.stats.identity();
        let stats_same = counters.is_none() || counters == Some(identity_of(&self.root.join("stats"))?);
        // A counters file truncated under this process (`fault.rs`) is opened afresh too.
        if identity == current.identity && stats_same && !current.stats.detached() {
            return Ok(false);
        }
        let fresh = Arc::new(Keyring::open(&self.root, self.trust)?);
        *self.keyring.write() = fresh;
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.count_entries_if_fresh();
        Ok(true)
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.keyring().stats.get(counter)
    }

    /// Adds to a counter without checking the directory (for hits already validated).
    pub fn add_to_counter(&self, counter: Counter, n: u64) {
        self.keyring.read().stats.add(counter, n);
    }

    /// Changes whenever any entry in the directory changes (any process), or the directory is
    /// replaced: a memory copy made at generation g is current while this still returns g.
    pub fn generation(&self) -> u64 {
        let ring = self.keyring();
        if !ring.stats.is_shared() {
            // Counters of this process alone (a read-only directory) never see another's
            // writes: no copy is ever known current by them, and each is checked on disk.
            return u64::MAX - self.unshared_reads.fetch_add(1, Ordering::Relaxed);
        }
        (self.epoch.load(Ordering::Relaxed) << 40) ^ ring.stats.get(Counter::Generation)
    }

    pub fn entry_path(&self, namespace: &str, key: &str) -> Result<PathBuf> {
        layout::check_digest(key)?;
        Ok(layout::entry_path(&self.root, namespace, key))
    }

    /// Compresses the buffers (in parallel) and writes the entry atomically. Evicts afterwards if
    /// the cache has grown past its limit.
    pub fn put(&self, new: NewEntry<'_>) -> Result<Stored> {
        Ok(self.put_sealing_for(new, None)?.0)
    }

    /// `put` for a value about to go up under `receiver` (a remote tier's key): a large value is
    /// sealed under that key too as it is written (both MACs from the same bytes as they are
    /// made), and that MAC comes back beside the outcome, for [`Store::open_export_sealed`];
    /// None for a small value, which an upload reads and checks whole ([`Store::open_export`]).
    pub fn put_sealing_for(
        &self,
        mut new: NewEntry<'_>,
        receiver: Option<&[u8; 32]>,
    ) -> Result<(Stored, Option<[u8; entry::MAC_LEN]>)> {
        if large::streamed(&new.buffers) {
            let path = self.entry_path(new.namespace, new.key)?;
            let (namespace, stream, compression) = (new.namespace, new.stream, new.compression);
            let buffers = std::mem::take(&mut new.buffers);
            let header = header_of(new, buffers.iter().map(|(b, _)| b.len()).sum());
            let stored = self.put_streamed(&path, &header, stream, &buffers, compression, receiver)?;
            // Best effort, once the entry is in place (a full disk must not cost the entry its
            // room): the namespace's name beside its sizes, for `function_stats`.
            let _ = self.function_counters(namespace);
            return Ok(stored);
        }
        let encoded = encode(&new.buffers, new.compression);
        Ok((self.put_encoded(new, &encoded)?, None))
    }

    /// `put` of a value whose buffers [`encode`] compressed (at `new.compression`; `new.buffers`
    /// is not read): the entry is sealed and written.
    fn put_encoded(&self, new: NewEntry<'_>, encoded: &Encoded) -> Result<Stored> {
        self.entry_path(new.namespace, new.key)?; // checks the digest before any work
        let (namespace, key, stream) = (new.namespace, new.key, new.stream);
        let header = header_of(new, encoded.raw_len);
        let ring = self.keyring();
        let sealed = entry::seal(&ring.mac_key, &header, stream, &encoded.frames, Counters::default());
        let size = sealed.byte_len() as u64;
        if size > self.size_limit {
            return Ok(Stored::TooLarge { bytes: size, limit: self.size_limit });
        }
        self.install_sealed(&ring, namespace, key, &sealed)?;
        let _ = self.function_counters(namespace); // as in `put`
        ring.stats.add(Counter::Sets, 1);
        Ok(Stored::Written { bytes: size, mac: sealed.mac })
    }

    /// Reads and verifies an entry; counts the hit or miss. Expired entries are removed (a miss).
    pub fn get(&self, namespace: &str, key: &str) -> Result<Lookup> {
        let found = self.load(namespace, key, true)?;
        self.keyring().stats.add(if matches!(found, Lookup::Hit(_)) { Counter::Hits } else { Counter::Misses }, 1);
        Ok(found)
    }

    /// Like `get`, without counting or recording the access (for `contains`, export, touch).
    pub fn peek(&self, namespace: &str, key: &str) -> Result<Lookup> {
        self.load(namespace, key, false)
    }

    fn load(&self, namespace: &str, key: &str, record_access: bool) -> Result<Lookup> {
        // Read-write so the access counters can be updated in place; a read-only cache still reads.
        let Some(found) = self.locate_entry(namespace, key, record_access)? else { return Ok(Lookup::Miss) };
        let bytes = match found.read() {
            Ok(bytes) => bytes,
            Err(Error::CorruptEntry(reason)) => return Ok(self.remove_unreadable_entry(&found, key, reason)),
            Err(e) => return Err(e),
        };
        let mut verified = entry::open(&self.keyring().mac_key, &bytes);
        if matches!(verified, Err(Error::CorruptEntry(_))) && self.refresh()? {
            // The directory was replaced since this store read its key: try the new key.
            verified = entry::open(&self.keyring().mac_key, &bytes);
        }
        let opened = match verified {
            Ok(opened) if opened.header.namespace == namespace && opened.header.key == key => opened,
            // Another key's record at this key's index slot (see pack.rs): intact, and not ours.
            Ok(_) if found.packed && found.framed_digest() != Some(pack::digest_bytes(key)) => return Ok(Lookup::Miss),
            Ok(_) => return Ok(self.remove_unreadable_entry(&found, key, "its header names another key".into())),
            Err(Error::CorruptEntry(reason)) => return Ok(self.remove_unreadable_entry(&found, key, reason)),
            Err(e) => return Err(e),
        };
        if opened.header.expires.is_some_and(|e| e <= now()) {
            self.remove_found(&found, key);
            return Ok(Lookup::Miss);
        }
        if record_access {
            found.write_counters(Counters { hits: opened.counters.hits + 1, last_access_ns: now_ns() });
        }
        Ok(Lookup::Hit(Box::new(Loaded { bytes, opened })))
    }

    /// Where the entry of `key` is stored: the file holding it, the offset of its sealed form in
    /// that file, and its length (0 and the file's size for an entry in a file of its own).
    pub fn locate(&self, namespace: &str, key: &str) -> Result<Option<(PathBuf, u64, u64)>> {
        Ok(self.locate_entry(namespace, key, false)?.map(|found| (found.path, found.offset, found.len)))
    }

    fn remove_unreadable(&self, path: &Path, file: &File, reason: String) -> Lookup {
        if same_file(path, file) {
            self.remove(path);
        }
        Lookup::Removed { path: path.to_path_buf(), reason }
    }

    fn remove_unreadable_entry(&self, found: &Location, key: &str, reason: String) -> Lookup {
        self.remove_found(found, key);
        // A pack holds other entries: the reason says which one went.
        let reason =
            if found.packed { format!("the entry of {key} at byte {}: {reason}", found.offset) } else { reason };
        Lookup::Removed { path: found.path.clone(), reason }
    }

    /// Removes exactly the entry `found` (not one written since in its place) and counts it.
    fn remove_found(&self, found: &Location, key: &str) {
        if found.packed {
            self.remove_packed(&found.path, &pack::digest_bytes(key), Some(found.offset));
        } else if same_file(&found.path, &found.file) {
            self.remove(&found.path);
        }
    }

    /// Removes the entry file at `path` and counts it; returns its size (None if there was
    /// none, or it could not be removed).
    fn remove(&self, path: &Path) -> Option<u64> {
        let bytes = self.take(path).ok()??;
        self.count_removed(&self.keyring(), path, bytes);
        Some(bytes)
    }

    /// Counts the removal of the entry file `path` of `bytes` bytes.
    fn count_removed(&self, ring: &Keyring, path: &Path, bytes: u64) {
        self.count_removed_in(ring, layout::namespace_of(path), bytes);
    }

    /// Counts the removal of an entry of `bytes` bytes in namespace directory `dir`.
    fn count_removed_in(&self, ring: &Keyring, dir: Option<&str>, bytes: u64) {
        ring.stats.sub(Counter::Bytes, bytes);
        ring.stats.sub(Counter::Count, 1);
        ring.stats.add(Counter::Generation, 1);
        if let Some(sizes) = dir.and_then(|dir| self.namespace_sizes(ring, dir)) {
            sizes.sub(FunctionCounter::Bytes, bytes);
            sizes.sub(FunctionCounter::Entries, 1);
        }
    }

    /// The counters file of the namespace whose entries are in directory `dir` (a name from
    /// `layout::namespace_dir`), where the sizes of its entries are kept.
    fn namespace_sizes(&self, ring: &Keyring, dir: &str) -> Option<Arc<SharedCounters<FunctionCounter>>> {
        if let Some(found) = ring.sizes.lock().get(dir) {
            return Some(found.clone());
        }
        let functions = self.root.join("functions");
        self.trust.create_dir(&functions).ok()?;
        let counters = Arc::new(SharedCounters::open(&functions.join(format!("{dir}.stats")), self.trust).ok()?);
        ring.sizes.lock().insert(dir.to_string(), counters.clone());
        Some(counters)
    }

    /// Sets each namespace's sizes to those of the entries `entries` (entry file or pack, bytes):
    /// the files are the truth. A namespace with a counters file and no entry gets zero. Writes
    /// made meanwhile by other processes may be off until the next rebuild (`check(fix)`).
    fn rebuild_function_sizes<'a>(&self, entries: impl Iterator<Item = (&'a Path, u64)>) {
        let ring = self.keyring();
        let mut sums: HashMap<String, (u64, u64)> = HashMap::new();
        if let Ok(listing) = fs::read_dir(self.root.join("functions")) {
            for item in listing.flatten() {
                if let Some(dir) = item.file_name().to_str().and_then(|n| n.strip_suffix(".stats")) {
                    sums.insert(dir.to_string(), (0, 0));
                }
            }
        }
        for (path, bytes) in entries {
            if let Some(dir) = layout::namespace_of(path) {
                let sum = sums.entry(dir.to_string()).or_default();
                *sum = (sum.0 + bytes, sum.1 + 1);
            }
        }
        for (dir, (bytes, count)) in sums {
            if let Some(sizes) = self.namespace_sizes(&ring, &dir) {
                sizes.set(FunctionCounter::Bytes, bytes);
                sizes.set(FunctionCounter::Entries, count);
            }
        }
        ring.stats.set(Counter::FunctionSizesKept, 1);
    }

    /// Moves the file at `path` aside, then deletes it; returns the size of exactly the file it
    /// removed, though another process may replace the entry at any instant: the shared sizes
    /// stay equal to the files on disk only if every removal subtracts what it removed.
    fn take(&self, path: &Path) -> std::io::Result<Option<u64>> {
        let aside = layout::temp_path(path, self.temp_sequence.fetch_add(1, Ordering::Relaxed));
        match fs::rename(path, &aside) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        let bytes = fs::metadata(&aside).map(|m| m.len()).unwrap_or(0);
        // If this fails, scans remove the temp file later.
        let _ = fs::remove_file(&aside);
        Ok(Some(bytes))
    }

    /// Adds hits served from a memory copy to the entry's counters (they steer eviction).
    pub fn record_access(&self, namespace: &str, key: &str, hits: u64, last_access_ns: u64) -> Result<()> {
        let Ok(Some(found)) = self.locate_entry(namespace, key, true) else { return Ok(()) };
        if let Some(before) = found.counters() {
            found.write_counters(Counters { hits: before.hits + hits, last_access_ns });
        }
        Ok(())
    }

    /// Counts one call of the cached function of `namespace`: a hit (saving `saved_ns` of
    /// computation) or a miss (computed in `compute_ns`), which took `latency_ns` in all.
    pub fn record_call(&self, namespace: &str, call: CallRecord) -> Result<()> {
        let counters = self.function_counters(namespace)?;
        counters.add(FunctionCounter::Calls, 1);
        if call.hit {
            counters.add(FunctionCounter::Hits, 1);
            counters.add(FunctionCounter::SavedNs, call.saved_ns);
        } else {
            counters.add(FunctionCounter::Misses, 1);
            counters.add(FunctionCounter::ComputeNs, call.compute_ns);
        }
        counters.add_latency(call.hit, call.latency_ns);
        let latency_sum = if call.hit { FunctionCounter::HitLatencyNs } else { FunctionCounter::MissLatencyNs };
        counters.add(latency_sum, call.latency_ns);
        counters.max(FunctionCounter::LastAccessedNs, now_ns());
        Ok(())
    }

    fn function_counters(&self, namespace: &str) -> Result<Arc<SharedCounters<FunctionCounter>>> {
        let ring = self.keyring();
        if let Some(found) = ring.functions.lock().get(namespace) {
            return Ok(found.clone());
        }
        let dir = self.root.join("functions");
        let stem = layout::namespace_dir(namespace);
        match self.trust.create_dir(&dir) {
            Ok(()) => {}
            // A directory this process may only read: counts of its own, as for its stats.
            Err(Error::Io { source, .. }) if is_read_only(&source) => {
                let counters = Arc::new(SharedCounters::private(&dir.join(format!("{stem}.stats")))?);
                ring.functions.lock().insert(namespace.to_string(), counters.clone());
                return Ok(counters);
            }
            Err(e) => return Err(e),
        }
        // The namespace's own name beside its counters: directory names are escaped and, when
        // long, shortened, so they cannot always be read back.
        let name_path = dir.join(format!("{stem}.name"));
        if !name_path.exists() {
            let written = match self.trust.create_new(&name_path, self.trust.file_mode()) {
                Ok(mut file) => file.write_all(namespace.as_bytes()).inspect_err(|_| {
                    // An empty name (a full disk) would never be written again.
                    let _ = fs::remove_file(&name_path);
                }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                // A directory this process may only read: its counters are its own (below).
                Err(e) if is_read_only(&e) => Ok(()),
                Err(e) => Err(e),
            };
            written.map_err(|e| Error::io("cannot write", &name_path, e))?;
        }
        let counters = Arc::new(SharedCounters::open(&dir.join(format!("{stem}.stats")), self.trust)?);
        ring.functions.lock().insert(namespace.to_string(), counters.clone());
        Ok(counters)
    }

    /// Every cached function's counters, by namespace.
    pub fn function_stats(&self) -> Result<Vec<FunctionStats>> {
        if self.keyring().stats.get(Counter::FunctionSizesKept) == 0 {
            // Written by a version that kept no sizes per function: count them from the files.
            let scanned = self.scan(None)?;
            for s in &scanned {
                let _ = self.function_counters(&s.header.namespace);
            }
            self.rebuild_function_sizes(scanned.iter().map(|s| (s.path.as_path(), s.bytes)));
        }
        let dir = self.root.join("functions");
        let mut namespaces = match fs::read_dir(&dir) {
            Ok(listing) => listing
                .flatten()
                .map(|item| item.path())
                .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("name"))
                .filter_map(|path| fs::read_to_string(path).ok())
                .collect(),
            Err(e) if is_absent(&e) || is_read_only(&e) => Vec::new(),
            Err(e) => return Err(Error::io("cannot list", &dir, e)),
        };
        // Functions whose counters this process keeps alone (a directory it may only read) have
        // no name file to be listed by.
        for (namespace, counters) in self.keyring().functions.lock().iter() {
            if !counters.is_shared() && !namespaces.contains(namespace) {
                namespaces.push(namespace.clone());
            }
        }
        let mut out = Vec::new();
        for namespace in namespaces {
            let c = self.function_counters(&namespace)?;
            out.push(FunctionStats {
                calls: c.get(FunctionCounter::Calls),
                hits: c.get(FunctionCounter::Hits),
                misses: c.get(FunctionCounter::Misses),
                compute_ns: c.get(FunctionCounter::ComputeNs),
                saved_ns: c.get(FunctionCounter::SavedNs),
                last_accessed_ns: c.get(FunctionCounter::LastAccessedNs),
                hit_latency_ns: c.get(FunctionCounter::HitLatencyNs),
                miss_latency_ns: c.get(FunctionCounter::MissLatencyNs),
                hit_latency: c.latency(true),
                miss_latency: c.latency(false),
                bytes: c.get(FunctionCounter::Bytes),
                entries: c.get(FunctionCounter::Entries),
                namespace,
            });
        }
        out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        Ok(out)
    }

    /// Sets every function's counters to zero (files stay: other processes have them mapped).
    pub fn reset_function_stats(&self) -> Result<()> {
        for stats in self.function_stats()? {
            self.function_counters(&stats.namespace)?.reset();
        }
        Ok(())
    }

    /// Whether an unexpired entry exists for `key`, from its header alone (a corrupt entry can
    /// still answer yes; `get` then finds it unreadable and misses).
    pub fn contains(&self, namespace: &str, key: &str) -> Result<bool> {
        let Some(found) = self.locate_entry(namespace, key, false)? else { return Ok(false) };
        let header = if found.packed {
            found.read().ok().and_then(|bytes| entry::peek(&bytes).ok()).map(|(header, _)| header)
        } else {
            read_header(&found.path).ok().map(|s| s.header)
        };
        Ok(header.is_some_and(|h| h.namespace == namespace && h.key == key && !h.expires.is_some_and(|e| e <= now())))
    }

    /// The MAC of the entry currently stored for `key`, read from its last 32 bytes: a memory
    /// copy of an entry is still current exactly when this still matches.
    pub fn current_mac(&self, namespace: &str, key: &str) -> Result<Option<[u8; 32]>> {
        match self.locate_entry(namespace, key, false)? {
            Some(found) => found.mac(),
            None => Ok(None),
        }
    }

    pub fn delete(&self, namespace: &str, key: &str) -> Result<bool> {
        let path = self.entry_path(namespace, key)?;
        let pack = layout::pack_path(&self.root, namespace, key);
        let packed = self.remove_packed(&pack, &pack::digest_bytes(key), None).is_some();
        let file = match self.take(&path) {
            Ok(Some(bytes)) => {
                self.count_removed(&self.keyring(), &path, bytes);
                true
            }
            Ok(None) => false,
            Err(e) => return Err(Error::io("cannot delete", &path, e)),
        };
        if packed || file {
            self.keyring().stats.add(Counter::Deletes, 1);
        }
        Ok(packed || file)
    }

    /// Rewrites an entry with a new expiry (`None`: never). False when there is no entry.
    pub fn touch(&self, namespace: &str, key: &str, expires: Option<f64>) -> Result<bool> {
        let Lookup::Hit(loaded) = self.peek(namespace, key)? else { return Ok(false) };
        let mut header = loaded.opened.header.clone();
        header.expires = expires;
        let stream = &loaded.bytes[loaded.opened.stream.clone()];
        let frames: Vec<Vec<u8>> = loaded.opened.frames.iter().map(|r| loaded.bytes[r.clone()].to_vec()).collect();
        let ring = self.keyring();
        let sealed = entry::seal(&ring.mac_key, &header, stream, &frames, loaded.opened.counters);
        self.install_sealed(&ring, namespace, key, &sealed)?;
        Ok(true)
    }

    /// Every entry's header and counters (not verified), plus stale temp files removed on the way.
    /// `namespace` limits the scan to that namespace's directory.
    pub fn scan(&self, namespace: Option<&str>) -> Result<Vec<Scanned>> {
        let mut dir = layout::entries_dir(&self.root);
        if let Some(namespace) = namespace {
            dir.push(layout::namespace_dir(namespace));
        }
        let mut files = Vec::new();
        collect_files(&dir, &mut files, &mut Vec::new())?;
        let scanned: Vec<Vec<Scanned>> = parallel::map(&files, |path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some(writer) = layout::temp_writer(name) {
                remove_if_abandoned(path, writer);
                return Vec::new();
            }
            if layout::is_pack(path) {
                return self.scan_pack(path);
            }
            if !name.ends_with(layout::ENTRY_SUFFIX) {
                return Vec::new();
            }
            read_header(path).ok().into_iter().collect()
        });
        Ok(scanned.into_iter().flatten().collect())
    }

    /// Removes the entry a scan found (whatever is stored for its key now, in that form) and
    /// counts it; returns its size.
    fn remove_scanned(&self, scanned: &Scanned) -> Option<u64> {
        if !layout::is_pack(&scanned.path) {
            return self.remove(&scanned.path);
        }
        // Scans list only records whose header names their own digest: a checked digest.
        self.remove_packed(&scanned.path, &pack::digest_bytes(&scanned.header.key), None)
    }

    /// Removes entries the predicate selects; returns how many and how many bytes.
    pub fn remove_where(&self, select: impl Fn(&Scanned) -> bool) -> Result<(u64, u64)> {
        let (mut count, mut bytes) = (0, 0);
        for s in self.scan(None)? {
            if let Some(removed) = select(&s).then(|| self.remove_scanned(&s)).flatten() {
                count += 1;
                bytes += removed;
            }
        }
        Ok((count, bytes))
    }

    /// Removes expired entries.
    pub fn expire(&self) -> Result<u64> {
        let now = now();
        Ok(self.remove_where(|s| s.is_expired(now))?.0)
    }

    /// Removes every entry. The sizes go down by what was removed, not to zero: other
    /// processes may be writing meanwhile.
    pub fn clear(&self) -> Result<u64> {
        Ok(self.remove_where(|_| true)?.0)
    }

    /// Brings the cache under 90% of its limit: expired entries first, then by policy; protected
    /// entries stay. Only one process evicts at a time; others skip (the evictor covers them).
    /// Returns the number of entries evicted.
    pub fn evict(&self) -> Result<u64> {
        let Some(_guard) = lock::try_acquire(&self.root.join("evict.lock"), self.trust)? else { return Ok(0) };
        let mut entries = self.scan(None)?;
        let mut total: u64 = entries.iter().map(|s| s.bytes).sum();
        let target = self.size_limit / 10 * 9;
        let now = now();
        let policy = self.policy;
        entries.retain(|s| !s.header.protected);
        // Expired entries first, then by score; total_cmp because a scan reads headers without
        // verifying them, and a damaged one may hold a NaN.
        entries.sort_by(|a, b| {
            let (sa, sb) = (policy.score(&a.usage()), policy.score(&b.usage()));
            (!a.is_expired(now)).cmp(&!b.is_expired(now)).then(sa.total_cmp(&sb))
        });
        let mut evicted = 0;
        // Each removal subtracts its own size from the shared sizes: setting them from this scan
        // would drop what other processes wrote since it.
        for victim in entries {
            if total <= target && !victim.is_expired(now) {
                break;
            }
            if self.remove_scanned(&victim).is_some() {
                total = total.saturating_sub(victim.bytes);
                evicted += 1;
            }
        }
        self.keyring().stats.add(Counter::Evictions, evicted);
        Ok(evicted)
    }

    /// Verifies every entry (MAC, framing, that it sits at its key's path). With `fix`, removes
    /// what fails and abandoned temp files, and rebuilds the shared sizes from what remains.
    pub fn check(&self, fix: bool) -> Result<Vec<Problem>> {
        self.check_with_progress(fix, &|_, _| {})
    }

    /// `check`, calling `progress(done, total)` as files are verified (from worker threads).
    pub fn check_with_progress(&self, fix: bool, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Problem>> {
        let (mut files, mut misplaced, mut unlistable) = (Vec::new(), Vec::new(), Vec::new());
        collect_files_noting(&layout::entries_dir(&self.root), &mut files, &mut misplaced, &mut unlistable)?;
        let locks = self.root.join("locks");
        if fs::symlink_metadata(&locks).is_ok_and(|m| !m.is_dir()) {
            misplaced.push(locks);
        } else {
            misplaced_locks(&locks, &mut misplaced);
        }
        if fs::symlink_metadata(self.root.join("evict.lock")).is_ok_and(|m| !m.is_file()) {
            misplaced.push(self.root.join("evict.lock"));
        }
        let total = files.len();
        let done = AtomicUsize::new(0);
        let results: Vec<(Vec<Problem>, Vec<u64>)> = parallel::map(&files, |path| {
            let result = self.check_file(path, fix);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            result
        });
        if fix {
            let good = || results.iter().flat_map(|(_, sizes)| sizes);
            self.keyring().stats.set(Counter::Bytes, good().sum());
            self.keyring().stats.set(Counter::Count, good().count() as u64);
            self.keyring().stats.add(Counter::Generation, 1);
            let kept =
                files.iter().zip(&results).flat_map(|(path, (_, sizes))| sizes.iter().map(|s| (path.as_path(), *s)));
            self.rebuild_function_sizes(kept);
        }
        let mut problems: Vec<Problem> = results.into_iter().flat_map(|(p, _)| p).collect();
        for path in misplaced {
            let fixed = fix
                && match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
                    _ => fs::remove_file(&path),
                }
                .is_ok();
            let problem = if path.starts_with(self.root.join("locks")) || path.ends_with("evict.lock") {
                "not what belongs among the locks (a directory, pipe or symbolic link where a lock file or \
                 its directory belongs): no writer can take the lock, and `health --fix` removes it"
            } else {
                "not a regular file (a directory, pipe, device or symbolic link where only entries and packs \
                 belong): no reader can use it, and `health --fix` removes it"
            };
            problems.push(Problem { path, problem: problem.into(), fixed });
        }
        for (path, error) in unlistable {
            let problem = format!(
                "cannot list: {error}; the entries under it are neither read nor checked: give the directory back \
                 its owner's rights (chmod 700) or remove it"
            );
            problems.push(Problem { path, problem, fixed: false });
        }
        Ok(problems)
    }

    /// One file of `check`: its problems, and the size of each good entry in it.
    fn check_file(&self, path: &Path, fix: bool) -> (Vec<Problem>, Vec<u64>) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(writer) = layout::temp_writer(name) {
            // A live writer's temp file is a write under way, not a problem.
            if !is_abandoned(path, writer) {
                return (Vec::new(), Vec::new());
            }
            let fixed = fix && fs::remove_file(path).is_ok();
            let problem = "an unfinished temp file (its writer stopped)";
            return (vec![Problem { path: path.to_path_buf(), problem: problem.into(), fixed }], Vec::new());
        }
        if layout::is_pack(path) {
            return self.check_pack(path, fix);
        }
        match self.verify_file(path) {
            Ok(size) => (Vec::new(), vec![size]),
            // Deleted, evicted or replaced by a pack record since it was listed.
            Err(_) if !path.exists() => (Vec::new(), Vec::new()),
            Err(why) => {
                let fixed = fix && fs::remove_file(path).is_ok();
                (vec![Problem { path: path.to_path_buf(), problem: why, fixed }], Vec::new())
            }
        }
    }

    fn verify_file(&self, path: &Path) -> std::result::Result<u64, String> {
        let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let opened = entry::open(&self.keyring().mac_key, &bytes).map_err(|e| e.to_string())?;
        let expected = layout::entry_path(&self.root, &opened.header.namespace, &opened.header.key);
        if expected != path {
            return Err(format!("it holds the entry of another key (it belongs at {})", expected.display()));
        }
        for frame in &opened.frames {
            codec::decoded_len(&bytes[frame.clone()]).map_err(|e| e.to_string())?;
        }
        Ok(bytes.len() as u64)
    }

    /// Waits up to `timeout` for the single-flight lock of a key.
    pub fn lock(&self, namespace: &str, key: &str, timeout: Duration) -> Result<Option<KeyLock>> {
        layout::check_digest(key)?;
        lock::acquire(&layout::lock_path(&self.root, namespace, key), timeout, self.trust)
    }

    /// An entry re-sealed under `archive_key`, for an export archive.
    pub fn export_entry(&self, namespace: &str, key: &str, archive_key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        match self.peek(namespace, key)? {
            Lookup::Hit(loaded) => Ok(Some(entry::reseal(archive_key, &loaded.bytes))),
            _ => Ok(None),
        }
    }

    /// Stores a sealed entry in its form: packed when small, else a file of its own.
    fn install_sealed(&self, ring: &Keyring, namespace: &str, key: &str, sealed: &entry::Sealed<'_>) -> Result<()> {
        if sealed.byte_len() < PACKED_BELOW {
            return self.put_packed(ring, namespace, key, &sealed.to_vec());
        }
        let path = self.entry_path(namespace, key)?;
        let pieces = sealed.pieces();
        let replaced = self.write_atomically(&path, &pieces)?;
        self.count_installed(ring, &path, pieces.iter().map(|p| p.len() as u64).sum(), replaced)
    }

    /// Counts an entry file of `size` bytes just moved into place (replacing an entry counts only
    /// the difference), after removing the key's packed record if it had one (the file is newer);
    /// evicts if the directory is now over its limit.
    fn count_installed(&self, ring: &Keyring, path: &Path, size: u64, replaced: Option<u64>) -> Result<()> {
        self.unpack(path);
        self.count_installed_in(ring, layout::namespace_of(path), size, replaced)
    }

    /// `count_installed` of an entry in namespace directory `dir`.
    fn count_installed_in(&self, ring: &Keyring, dir: Option<&str>, size: u64, replaced: Option<u64>) -> Result<()> {
        ring.stats.add(Counter::Bytes, size);
        ring.stats.add(Counter::Generation, 1);
        match replaced {
            Some(old) => ring.stats.sub(Counter::Bytes, old),
            None => ring.stats.add(Counter::Count, 1),
        }
        if let Some(sizes) = dir.and_then(|dir| self.namespace_sizes(ring, dir)) {
            sizes.add(FunctionCounter::Bytes, size);
            match replaced {
                Some(old) => sizes.sub(FunctionCounter::Bytes, old),
                None => sizes.add(FunctionCounter::Entries, 1),
            }
        }
        if ring.stats.get(Counter::Bytes) > self.size_limit {
            self.evict()?;
        }
        Ok(())
    }

    /// Writes `pieces` to a temp file beside `path` and swaps it into place; returns the size of
    /// the entry it replaced, if any.
    fn write_atomically(&self, path: &Path, pieces: &[&[u8]]) -> Result<Option<u64>> {
        let (temp, mut file) = self.new_temp(path)?;
        let written = write_all_pieces(&mut file, pieces);
        drop(file);
        let replaced = written
            .map_err(|e| Error::io("cannot write", &temp, e))
            .and_then(|()| replace(&temp, path).map_err(|e| Error::io("cannot move into place", path, e)));
        if replaced.is_err() {
            let _ = fs::remove_file(&temp);
        }
        replaced
    }

    /// A new temp file beside `path` (its directory created if need be), private to the cache.
    fn new_temp(&self, path: &Path) -> Result<(PathBuf, File)> {
        let temp = layout::temp_path(path, self.temp_sequence.fetch_add(1, Ordering::Relaxed));
        let create = || self.trust.create_new(&temp, self.trust.file_mode());
        let file = match create() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.trust.create_dir(path.parent().expect("entry paths have a directory"))?;
                create().map_err(|e| Error::io("cannot create", &temp, e))?
            }
            Err(e) => return Err(Error::io("cannot create", &temp, e)),
        };
        Ok((temp, file))
    }
}

/// Moves `temp` to `path` atomically (a reader finds the old entry or the new one, never
/// neither) and returns the size of exactly the entry it replaced, so that concurrent writers of
/// one key count the sizes right. A new entry is renamed without replacing (`RENAME_NOREPLACE`,
/// tried first: a cached function stores mostly new keys). An existing entry is swapped with the
/// temp file (`renameat2(RENAME_EXCHANGE)`), then removed from the temp name: renaming over an
/// existing file instead makes ext4 write the new file's data out first (`auto_da_alloc`), 150 µs
/// instead of 30 µs for a small entry here.
#[cfg(target_os = "linux")]
fn replace(temp: &Path, path: &Path) -> std::io::Result<Option<u64>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_temp = CString::new(temp.as_os_str().as_bytes())?;
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths, relative to the working directory if relative.
    let rename =
        |flags| unsafe { libc::renameat2(libc::AT_FDCWD, c_temp.as_ptr(), libc::AT_FDCWD, c_path.as_ptr(), flags) };
    // A filesystem without these flags: a plain rename (two writers of one new key may then
    // both count it).
    let unsupported =
        |err: &std::io::Error| matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP));
    let plain_rename = || {
        let old = fs::metadata(path).map(|m| m.len()).ok();
        fs::rename(temp, path)?;
        Ok(old)
    };
    // Another writer may create or remove the entry between the two renames: then try again.
    loop {
        if rename(libc::RENAME_NOREPLACE) == 0 {
            return Ok(None);
        }
        let err = std::io::Error::last_os_error();
        if unsupported(&err) {
            return plain_rename();
        }
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
        if rename(libc::RENAME_EXCHANGE) == 0 {
            let old = fs::metadata(temp).map(|m| m.len()).ok();
            let _ = fs::remove_file(temp);
            return Ok(old);
        }
        let err = std::io::Error::last_os_error();
        if unsupported(&err) {
            return plain_rename();
        }
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn replace(temp: &Path, path: &Path) -> std::io::Result<Option<u64>> {
    let old = fs::metadata(path).map(|m| m.len()).ok();
    fs::rename(temp, path)?;
    Ok(old)
}

/// Writes every piece, in as few system calls as the kernel allows (one, for a small entry).
fn write_all_pieces(file: &mut File, pieces: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = pieces.iter().map(|p| std::io::IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    std::io::IoSlice::advance_slices(&mut rest, 0); // skips empty pieces
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The 32-byte key in `path`; None if it is absent. Opened without blocking and read to 33 bytes
/// at most: a pipe or a device in its place (`/dev/zero`) must not hold or fill the caller.
fn read_mac_key(path: &Path) -> Result<Option<[u8; 32]>> {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read the MAC key", path, e)),
    };
    // The directory's fault, not the caller's argument: an unusable directory.
    let not_a_key = || {
        let why = "not a 32-byte key; remove it to start afresh (existing entries become misses)";
        Error::io("cannot use the MAC key", path, std::io::Error::other(why))
    };
    if !file.metadata().is_ok_and(|meta| meta.is_file()) {
        return Err(not_a_key());
    }
    let mut bytes = Vec::new();
    file.take(33).read_to_end(&mut bytes).map_err(|e| Error::io("cannot read the MAC key", path, e))?;
    bytes.try_into().map(Some).map_err(|_| not_a_key())
}

fn load_or_create_mac_key(path: &Path, trust: Trust) -> Result<[u8; 32]> {
    if let Some(key) = read_mac_key(path)? {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| Error::io("cannot read", "/dev/urandom", e))?;
    // Written to a temp file and linked into place: exactly one process's key wins, whole.
    let temp = path.with_extension(format!("{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp); // left by a process of this pid that died here
    let mut file = trust.create_new(&temp, trust.file_mode()).map_err(|e| Error::io("cannot create", &temp, e))?;
    if let Err(e) = file.write_all(&key) {
        let _ = fs::remove_file(&temp); // a full disk: nothing of this attempt stays behind
        return Err(Error::io("cannot write", &temp, e));
    }
    drop(file);
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_mac_key(path)?.ok_or_else(|| Error::io("cannot read the MAC key", path, e))
        }
        Err(e) => Err(Error::io("cannot create the MAC key", path, e)),
    }
}

fn read_header(path: &Path) -> Result<Scanned> {
    let mut file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let bytes = file.metadata().map_err(|e| Error::io("cannot stat", path, e))?.len();
    let mut head = vec![0u8; 4096];
    let n = read_up_to(&mut file, &mut head).map_err(|e| Error::io("cannot read", path, e))?;
    head.truncate(n);
    let needed = entry::header_extent(&head)?;
    if needed > head.len() {
        head.resize(needed, 0);
        let more = read_up_to(&mut file, &mut head[n..]).map_err(|e| Error::io("cannot read", path, e))?;
        head.truncate(n + more);
    }
    let (header, counters) = entry::peek(&head)?;
    Ok(Scanned { path: path.to_path_buf(), bytes, header, counters })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The regular files under `dir` (into `out`), and what stands where only entries and packs
/// belong (into `misplaced`): a pipe, device or symbolic link, or a directory named as an
/// entry or a pack. Nothing follows a symbolic link, and nothing opens a pipe.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, misplaced: &mut Vec<PathBuf>) -> Result<()> {
    let mut unlistable = Vec::new();
    collect_files_noting(dir, out, misplaced, &mut unlistable)?;
    match unlistable.into_iter().next() {
        Some((path, e)) => Err(Error::io("cannot list", &path, e)),
        None => Ok(()),
    }
}

/// `collect_files`, going on past the directories below `dir` it cannot list (into
/// `unlistable`), as `check` does to report them beside everything else.
fn collect_files_noting(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    misplaced: &mut Vec<PathBuf>,
    unlistable: &mut Vec<(PathBuf, std::io::Error)>,
) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            unlistable.push((dir.to_path_buf(), e));
            return Ok(());
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let named_as_file = layout::is_pack(&path) || path.extension().is_some_and(|e| e == layout::ENTRY_SUFFIX);
        match entry.file_type() {
            Ok(t) if t.is_dir() && !named_as_file => collect_files_noting(&path, out, misplaced, unlistable)?,
            Ok(t) if t.is_file() => out.push(path),
            Ok(_) => misplaced.push(path),
            Err(_) => {}
        }
    }
    Ok(())
}

/// What stands where a lock file belongs under `locks/` and is no regular file: a directory
/// named as a lock, a pipe, a symbolic link. Every write of its shard fails on it. Lock files
/// sit one level down: `locks/<d0d1>/` and `locks/packs/<namespace>/` (a namespace may end in
/// `.lock`: `utils.lock`).
fn misplaced_locks(locks: &Path, misplaced: &mut Vec<PathBuf>) {
    let children = |dir: &Path| fs::read_dir(dir).into_iter().flatten().flatten().collect::<Vec<_>>();
    let mut holders = Vec::new();
    for entry in children(locks) {
        match entry.file_type() {
            Ok(t) if t.is_dir() && entry.file_name() == "packs" => {
                holders.extend(children(&entry.path()).into_iter().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())))
            }
            Ok(t) if t.is_dir() => holders.push(entry),
            // Only directories belong here (a link where a shard's belongs hides its locks).
            _ => misplaced.push(entry.path()),
        }
    }
    for holder in holders {
        for entry in children(&holder.path()) {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "lock") && !entry.file_type().is_ok_and(|t| t.is_file()) {
                misplaced.push(path);
            }
        }
    }
}

/// Whether a temp file's writer is gone (or the file is older than any write takes).
fn is_abandoned(path: &Path, writer: u32) -> bool {
    let writer_alive = writer == std::process::id() || process_alive(writer);
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_TEMP);
    !writer_alive || old
}

/// Removes a temp file whose writer is gone (or that is older than any write takes).
fn remove_if_abandoned(path: &Path, writer: u32) -> bool {
    is_abandoned(path, writer) && fs::remove_file(path).is_ok()
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Without /proc, only age tells an abandoned temp file.
#[cfg(not(target_os = "linux"))]
fn process_alive(_pid: u32) -> bool {
    true
}

/// Errors that mean "no entry here": the file or a directory on its path is missing, or a path
/// component is not a directory.
fn is_absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
}

/// Whether opening for writing failed because this process may only read there (another
/// user's file, a read-only mount): it still reads.
fn is_read_only(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EROFS)
}

fn file_identity(path: &Path) -> Result<(u64, u64)> {
    let m = fs::metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
    Ok((m.dev(), m.ino()))
}

fn same_file(path: &Path, file: &File) -> bool {
    match (fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
