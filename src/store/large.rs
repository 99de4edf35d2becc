//! Large values, written and read in pieces: a value of hundreds of MB or more is never framed
//! or read into memory whole, so storing or loading it costs little memory beyond the value.
//!
//! Writing: [`entry::write_streamed`] compresses batches of chunks straight from the caller's
//! buffers into the temp file. The entry is byte for byte what the in-memory path writes, so
//! readers cannot tell which path wrote it.
//!
//! Reading: [`Store::get_streamed`] reads a large entry's structure (a few small reads); the
//! caller allocates the value's final buffers from it, and [`Store::fill_streamed`] reads the
//! file in windows, feeding the MAC and decoding each window straight into those buffers. The
//! value is handed on only once the MAC over every byte has verified.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    entry, is_absent, is_read_only, now, now_ns, replace, same_file, Compression, Counter, Counters, Header, Lookup,
    Result, Store, Stored,
};
use crate::error::Error;

/// Values whose buffers hold at least this many bytes are written in pieces. Below it the
/// in-memory path is as fast and its extra memory (the frames, a fraction of the value) small.
const STREAMED: usize = 64 << 20;

/// Entry files at least this large are read in pieces: below it, reading the file whole costs
/// at most this much memory beyond the value.
const STREAMED_READ: u64 = 16 << 20;

/// Whether a value with these buffers is written in pieces.
pub(super) fn streamed(buffers: &[(&[u8], usize)]) -> bool {
    buffers.iter().map(|(data, _)| data.len()).sum::<usize>() >= STREAMED
}

impl Store {
    /// `put` for a large value: written into a temp file as it is compressed, then swapped into
    /// place like any entry. With `receiver`, the entry's MAC under that key too, hashed from
    /// the same bytes as they are written (see [`Store::put_sealing_for`]).
    pub(super) fn put_streamed(
        &self,
        path: &Path,
        header: &Header,
        stream: &[u8],
        buffers: &[(&[u8], usize)],
        compression: Compression,
        receiver: Option<&[u8; 32]>,
    ) -> Result<(Stored, Option<[u8; entry::MAC_LEN]>)> {
        let ring = self.keyring();
        let (temp, file) = self.new_temp(path)?;
        let keys: Vec<&[u8; 32]> = std::iter::once(&ring.mac_key).chain(receiver).collect();
        let written = entry::write_streamed(&file, &keys, header, stream, buffers, compression);
        drop(file);
        let outcome = match written {
            Err(e) => Err(Error::io("cannot write", &temp, e)),
            Ok((bytes, _)) if bytes > self.size_limit => Ok((Stored::TooLarge { bytes, limit: self.size_limit }, None)),
            Ok((bytes, macs)) => match replace(&temp, path) {
                Ok(replaced) => {
                    self.count_installed(&ring, path, bytes, replaced)?;
                    ring.stats.add(Counter::Sets, 1);
                    return Ok((Stored::Written { bytes, mac: macs[0] }, macs.get(1).copied()));
                }
                Err(e) => Err(Error::io("cannot move into place", path, e)),
            },
        };
        let _ = std::fs::remove_file(&temp);
        outcome
    }
}

/// What [`Store::get_streamed`] found.
pub enum Streamed {
    /// A small entry, read whole (as `get` returns it), or none.
    Whole(Lookup),
    /// A large entry's structure, to be read into buffers by [`Store::fill_streamed`].
    Large(Box<LargeEntry>),
}

/// A large entry, opened, its structure read but not yet verified.
pub struct LargeEntry {
    namespace: String,
    key: String,
    path: PathBuf,
    file: File,
    plan: entry::Streamed,
}

impl LargeEntry {
    /// Bytes of the pickle stream.
    pub fn stream_len(&self) -> usize {
        self.plan.stream_len()
    }

    /// Bytes of each out-of-band buffer.
    pub fn buffer_lens(&self) -> Vec<usize> {
        self.plan.buffer_lens()
    }
}

/// What [`Store::fill_streamed`] found.
pub enum Filled {
    /// The buffers hold the value; the entry's MAC and header.
    Hit { mac: [u8; 32], header: Header },
    /// A miss (expired) or an unreadable entry, removed.
    Gone(Lookup),
}

impl Store {
    /// `get` for entries of any size: one of [`STREAMED_READ`] bytes or more comes back as its
    /// structure, for [`Store::fill_streamed`]; others (and misses) as `get` gives them.
    pub fn get_streamed(&self, namespace: &str, key: &str) -> Result<Streamed> {
        let path = self.entry_path(namespace, key)?;
        if !fs::metadata(&path).is_ok_and(|m| m.len() >= STREAMED_READ) {
            return Ok(Streamed::Whole(self.get(namespace, key)?));
        }
        // Read-write so the access counters can be updated in place; a read-only cache still reads.
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if is_read_only(&e) => File::open(&path).map_err(|e| Error::io("cannot open", &path, e))?,
            // Removed since: `get` counts the miss.
            Err(e) if is_absent(&e) => return Ok(Streamed::Whole(self.get(namespace, key)?)),
            Err(e) => return Err(Error::io("cannot open", &path, e)),
        };
        let len = file.metadata().map_err(|e| Error::io("cannot stat", &path, e))?.len();
        match entry::Streamed::plan(&file, len) {
            Ok(plan) => {
                let (namespace, key) = (namespace.to_string(), key.to_string());
                Ok(Streamed::Large(Box::new(LargeEntry { namespace, key, path, file, plan })))
            }
            Err(Error::CorruptEntry(reason)) => {
                self.keyring().stats.add(Counter::Misses, 1);
                Ok(Streamed::Whole(self.remove_unreadable(&path, &file, reason)))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a large entry into `stream` and `buffers` (sized by its `stream_len` and
    /// `buffer_lens`), verifies it, and counts the hit or miss like `get`.
    pub fn fill_streamed(&self, large: LargeEntry, stream: &mut [u8], buffers: &mut [&mut [u8]]) -> Result<Filled> {
        let LargeEntry { namespace, key, path, file, plan } = large;
        let mut verified = plan.read_into(&file, &self.keyring().mac_key, stream, buffers);
        if matches!(verified, Err(Error::CorruptEntry(_))) && self.refresh()? {
            // The directory was replaced since this store read its key: try the new key.
            verified = plan.read_into(&file, &self.keyring().mac_key, stream, buffers);
        }
        let filled = match verified {
            Ok(_) if plan.header.namespace != namespace || plan.header.key != key => {
                Filled::Gone(self.remove_unreadable(&path, &file, "its header names another key".into()))
            }
            Ok(_) if plan.header.expires.is_some_and(|e| e <= now()) => {
                if same_file(&path, &file) {
                    self.remove(&path);
                }
                Filled::Gone(Lookup::Miss)
            }
            Ok(mac) => {
                let counters = Counters { hits: plan.counters.hits + 1, last_access_ns: now_ns() };
                // Best effort: the counters only steer eviction.
                let _ = file.write_at(&counters.to_bytes(), entry::COUNTERS.start as u64);
                Filled::Hit { mac, header: plan.header }
            }
            Err(Error::CorruptEntry(reason)) => Filled::Gone(self.remove_unreadable(&path, &file, reason)),
            Err(e) => return Err(e),
        };
        let counter = if matches!(filled, Filled::Hit { .. }) { Counter::Hits } else { Counter::Misses };
        self.keyring().stats.add(counter, 1);
        Ok(filled)
    }
}
