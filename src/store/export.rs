//! Exporting an entry in pieces, for an upload that streams.
//!
//! The entry file is read once, in order: each piece feeds the MAC under this cache's key (to
//! check the file) and the MAC under the receiver's key (to seal the copy), so a large entry
//! leaves in bounded memory and one pass over its bytes. The copy is the file with the
//! receiver's MAC in place of the cache's; that last piece is handed out only once the file's
//! own MAC verified, so a damaged file never leaves whole.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::entry::{self, Mac, MAC_LEN, PREFIX_LEN};
use super::{fault, now, Store};
use crate::error::{Error, Result};

/// An entry being read out, sealed under another key.
pub struct Export {
    /// The entry file, or the pack holding the entry from byte `base` on.
    file: File,
    base: u64,
    /// Bytes handed out so far.
    at: u64,
    /// Where the file's MAC starts: the end of what both copies share.
    mac_at: u64,
    stored_mac: [u8; MAC_LEN],
    cache: Mac,
    receiver: Mac,
    /// The receiver's MAC, once the file's verified.
    sealed: Option<[u8; MAC_LEN]>,
}

impl Store {
    /// The entry of `(namespace, key)` opened for export under `receiver_key`; None if there is
    /// none or it has expired. The file stays open: an entry replaced or removed meanwhile is
    /// still read whole, as it was.
    pub fn open_export(&self, namespace: &str, key: &str, receiver_key: &[u8; 32]) -> Result<Option<Export>> {
        let Some(found) = self.locate_entry(namespace, key, false)? else { return Ok(None) };
        let (file, base, len) = (found.file, found.offset, found.len);
        let read = |at: u64, n: usize| -> Result<Vec<u8>> {
            let mut out = vec![0u8; n];
            file.read_exact_at(&mut out, base + at).map_err(|_| corrupt("it is shorter than its lengths say"))?;
            Ok(out)
        };
        if len < (PREFIX_LEN + MAC_LEN) as u64 {
            return Err(corrupt("shorter than the fixed prefix and MAC"));
        }
        let header_end = entry::header_extent(&read(0, PREFIX_LEN)?)?;
        // The header is not verified yet: it only decides whether to start (the MAC checks it).
        let (header, _) = entry::peek(&read(0, header_end)?)?;
        if header.namespace != namespace || header.key != key {
            return Err(corrupt("its header names another key"));
        }
        if header.expires.is_some_and(|expires| expires <= now()) {
            return Ok(None);
        }
        let mac_at = len - MAC_LEN as u64;
        let stored_mac = read(mac_at, MAC_LEN)?.try_into().expect("32 bytes");
        let (cache, receiver) = (Mac::new(&self.keyring().mac_key), Mac::new(receiver_key));
        Ok(Some(Export { file, base, at: 0, mac_at, stored_mac, cache, receiver, sealed: None }))
    }
}

impl Export {
    /// Bytes of the exported entry (as many as the file's).
    pub fn size(&self) -> u64 {
        self.mac_at + MAC_LEN as u64
    }

    /// How many bytes the next `fill` gives, at most `max`: 0 at the end. A piece never spans
    /// the end of the shared bytes, so the last piece is the MAC alone.
    pub fn next_len(&self, max: usize) -> usize {
        let end = if self.at < self.mac_at { self.mac_at } else { self.size() };
        (end - self.at).min(max as u64) as usize
    }

    /// Fills `out` (of `next_len` bytes) with the next piece. The piece holding the receiver's
    /// MAC comes only after the file's MAC verified; else `Error::CorruptEntry`.
    pub fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        if self.at < self.mac_at {
            self.file
                .read_exact_at(out, self.base + self.at)
                .map_err(|_| corrupt("it changed size while being read"))?;
            let (cache, receiver) = (&mut self.cache, &mut self.receiver);
            if self.sealed.is_some() {
                // Sealed as it was written (`open_export_sealed`): nothing to hash.
            } else if crate::parallel::available() {
                rayon::join(|| cache.update(out), || receiver.update(out));
            } else {
                cache.update(out);
                receiver.update(out);
            }
        } else {
            let sealed = match self.sealed {
                Some(sealed) => sealed,
                None => {
                    // Constant-time comparison through blake3's Hash equality.
                    if blake3::Hash::from(self.cache.finish()) != blake3::Hash::from(self.stored_mac) {
                        return Err(corrupt(
                            "the MAC does not match (the file was changed, truncated, or written with another key)",
                        ));
                    }
                    *self.sealed.insert(self.receiver.finish())
                }
            };
            let from = (self.at - self.mac_at) as usize;
            out.copy_from_slice(&sealed[from..from + out.len()]);
        }
        self.at += out.len() as u64;
        Ok(())
    }
}

/// A sealed export's bytes in place, for a client to send as one buffer: the file mapped
/// privately (copy-on-write: nothing is written to it) with the receiver's MAC over the file's.
/// Reading a large entry into fresh buffers cost this process twice the CPU (0.56 s against
/// 0.26 s a GiB here: new memory is the host's to fault in again); the page cache's pages are
/// mapped instead. A file truncated
/// while mapped faults into zeros (`fault.rs`), never kills the process, and `damaged` says so:
/// the copy sent then fails its MAC wherever it is read.
pub struct Mapped {
    /// Declared first, so dropped first: unregistered before the mapping goes.
    guard: fault::Guard,
    map: memmap2::MmapMut,
    file: File,
}

impl Mapped {
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Whether the file shrank under the mapping: `bytes` then holds zeros where it was read
    /// here, and a system call given them (a socket's `send`) fails with EFAULT.
    pub fn damaged(&self) -> bool {
        self.guard.detached() || self.file.metadata().map_or(true, |m| m.len() < self.map.len() as u64)
    }
}

impl Export {
    /// The whole export mapped (see [`Mapped`]), if it was opened sealed, holds a file of its own
    /// (not a pack's entry), nothing was read from it yet, and the mapping can be made and
    /// guarded; else None, and the pieces are read instead.
    pub fn mapped(&self) -> Option<Mapped> {
        let sealed = self.sealed?;
        if self.base != 0 || self.at != 0 {
            return None;
        }
        let len = usize::try_from(self.size()).ok()?;
        // SAFETY: private pages, never written through to the file; a file truncated under
        // them faults into the guard's zeros instead of killing the process.
        let mut map = unsafe { memmap2::MmapOptions::new().len(len).map_copy(&self.file) }.ok()?;
        let guard = fault::register(map.as_ptr(), map.len());
        if !guard.registered() {
            return None;
        }
        map[self.mac_at as usize..].copy_from_slice(&sealed);
        Some(Mapped { guard, map, file: self.file.try_clone().ok()? })
    }
}

impl Store {
    /// `open_export` of an entry this process just wrote with [`Store::put_sealing_for`], whose
    /// file has the MAC `mac` and whose MAC under the receiver's key is `receiver_mac`: read
    /// without hashing (both MACs were made from the bytes as they were written; a file damaged
    /// since goes up with a MAC that no longer matches it, and the receiver refuses it). None if
    /// the file now holds another write of the key, or none.
    pub fn open_export_sealed(
        &self,
        namespace: &str,
        key: &str,
        mac: &[u8; MAC_LEN],
        receiver_mac: [u8; MAC_LEN],
    ) -> Result<Option<Export>> {
        let Some(mut export) = self.open_export(namespace, key, &[0; 32])? else { return Ok(None) };
        if export.stored_mac != *mac {
            return Ok(None);
        }
        export.sealed = Some(receiver_mac);
        Ok(Some(export))
    }
}

fn corrupt(why: &str) -> Error {
    Error::CorruptEntry(why.to_string())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::{Compression, NewEntry, Policy, Trust};
    use super::*;

    const NAMESPACE: &str = "labels.triple_barrier";

    fn stored(name: &str) -> (std::path::PathBuf, Store, String) {
        let dir = std::env::temp_dir().join(format!("afml-export-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(&dir, 1 << 30, Policy::Lru, Trust::Owner).unwrap();
        let key = blake3::hash(name.as_bytes()).to_hex().to_string();
        let floats: Vec<u8> = (0..50_000u32).flat_map(|i| (f64::from(i) * 0.25).to_le_bytes()).collect();
        store
            .put(NewEntry {
                namespace: NAMESPACE,
                key: &key,
                stream: b"pickle stream",
                buffers: vec![(&floats, 8)],
                compression: Compression::Default,
                expires: None,
                compute_time: 1.0,
                protected: false,
                tags: vec![],
                time_range: None,
                metadata: "{}".into(),
            })
            .unwrap();
        (dir, store, key)
    }

    fn read_all(export: &mut Export, piece: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut next = vec![0u8; export.next_len(piece)];
            if next.is_empty() {
                return Ok(out);
            }
            export.fill(&mut next)?;
            out.extend_from_slice(&next);
        }
    }

    #[test]
    fn an_export_read_in_pieces_is_the_entry_resealed_whole() {
        let (dir, store, key) = stored("pieces");
        let receiver = [7u8; 32];
        let whole = store.export_entry(NAMESPACE, &key, &receiver).unwrap().unwrap();
        for piece in [1, 31, 4096, 1 << 20] {
            let mut export = store.open_export(NAMESPACE, &key, &receiver).unwrap().unwrap();
            assert_eq!(export.size(), whole.len() as u64);
            assert_eq!(read_all(&mut export, piece).unwrap(), whole, "pieces of {piece}");
        }
        assert!(store.open_export(NAMESPACE, &"0".repeat(64), &receiver).unwrap().is_none());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_file_never_gives_its_last_piece() {
        let (dir, store, key) = stored("damaged");
        let path = store.entry_path(NAMESPACE, &key).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut export = store.open_export(NAMESPACE, &key, &[7u8; 32]).unwrap().unwrap();
        let shared = export.size() as usize - MAC_LEN;
        let mut body = vec![0u8; export.next_len(usize::MAX)];
        assert_eq!(body.len(), shared); // the shared bytes come, unverified as yet...
        export.fill(&mut body).unwrap();
        let mut mac = vec![0u8; export.next_len(usize::MAX)];
        assert!(matches!(export.fill(&mut mac), Err(Error::CorruptEntry(_)))); // ...the MAC never
        let _ = fs::remove_dir_all(dir);
    }
}
