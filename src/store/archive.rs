//! Importing entries from an export archive, in bounded memory and all or nothing.
//!
//! An archive member is read once, in chunks: its framing and its MAC under the archive's key
//! are checked as it streams into a temp file beside its entry's path, where it is re-sealed
//! under this cache's key. Nothing is visible until `commit`: an importer stages every member
//! first and commits only when all of them verified; a `Staged` entry dropped uncommitted
//! removes its temp file.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;

use super::entry::{self, Mac, MAC_LEN, PREFIX_LEN};
use super::Store;
use crate::error::{Error, Result};

/// Bytes read from the archive at a time.
const CHUNK: usize = 1 << 20;

/// An imported entry, verified and written beside its path, not yet in place.
#[derive(Debug)]
pub struct Staged {
    pub namespace: String,
    pub key: String,
    temp: PathBuf,
    path: PathBuf,
    size: u64,
    committed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl Store {
    /// Reads one exported entry from `source` (exactly its bytes), checks it against
    /// `archive_key` and stages it under this cache's key. A damaged or foreign entry is
    /// `Error::CorruptEntry`; a failure to read `source` is returned as it came.
    pub fn stage_import(&self, source: &mut dyn Read, archive_key: &[u8; 32]) -> Result<Staged> {
        let mut head = vec![0u8; PREFIX_LEN];
        read_exact(source, &mut head, "its fixed prefix")?;
        let header_end = entry::header_extent(&head)?;
        head.resize(header_end, 0);
        read_exact(source, &mut head[PREFIX_LEN..], "its header")?;
        let (header, _) = entry::peek(&head)?;
        let path = self.entry_path(&header.namespace, &header.key)?;
        let frames = u32::from_le_bytes(head[28..32].try_into().expect("4 bytes"));
        let payload_len = u64::from_le_bytes(head[32..40].try_into().expect("8 bytes"));
        let ring = self.keyring();
        let (temp, file) = self.new_temp(&path)?;
        let staged = Staged {
            namespace: header.namespace,
            key: header.key,
            temp,
            path,
            size: (header_end as u64).saturating_add(payload_len).saturating_add(MAC_LEN as u64),
            committed: false,
        };
        let mut out = Sealing { file, archive: Mac::new(archive_key), cache: Mac::new(&ring.mac_key) };
        out.write(&head, &staged.temp)?;
        let mut framing = Framing::new(frames);
        let mut chunk = vec![0u8; CHUNK.min(payload_len as usize)];
        let mut left = payload_len;
        while left > 0 {
            let piece = &mut chunk[..CHUNK.min(left as usize)];
            read_exact(source, piece, "its payload")?;
            framing.feed(piece)?;
            out.write(piece, &staged.temp)?;
            left -= piece.len() as u64;
        }
        framing.finish()?;
        let mut mac = [0u8; MAC_LEN];
        read_exact(source, &mut mac, "its MAC")?;
        match source.read(&mut [0u8; 1]) {
            Ok(0) => {}
            Ok(_) => return Err(corrupt("it has bytes after its MAC")),
            Err(e) => return Err(Error::io("cannot read the archive member", PathBuf::new(), e)),
        }
        // Constant-time comparison through blake3's Hash equality.
        if blake3::Hash::from(out.archive.finish()) != blake3::Hash::from(mac) {
            return Err(corrupt("the MAC does not match the archive's key (the entry was changed or damaged)"));
        }
        let sealed = out.cache.finish();
        out.file.write_all(&sealed).map_err(|e| Error::io("cannot write", &staged.temp, e))?;
        Ok(staged)
    }

    /// Moves a staged entry into place (into its pack, if small) and counts it.
    pub fn commit_import(&self, mut staged: Staged) -> Result<()> {
        let ring = self.keyring();
        if staged.size < super::PACKED_BELOW as u64 {
            let sealed = fs::read(&staged.temp).map_err(|e| Error::io("cannot read", &staged.temp, e))?;
            self.put_packed(&ring, &staged.namespace, &staged.key, &sealed)?;
            // Best effort, as below.
            let _ = self.function_counters(&staged.namespace);
            return Ok(()); // dropping `staged` removes its temp file
        }
        let replaced = super::replace(&staged.temp, &staged.path)
            .map_err(|e| Error::io("cannot move into place", &staged.path, e))?;
        staged.committed = true;
        // Best effort: records the namespace's name beside its sizes, for `function_stats`.
        let _ = self.function_counters(&staged.namespace);
        self.count_installed(&ring, &staged.path, staged.size, replaced)
    }
}

/// The staged file, and the MACs of what passes through: under the archive's key (to check)
/// and under this cache's key (to seal).
struct Sealing {
    file: File,
    archive: Mac,
    cache: Mac,
}

impl Sealing {
    fn write(&mut self, piece: &[u8], temp: &std::path::Path) -> Result<()> {
        self.archive.update(piece);
        self.cache.update(piece);
        self.file.write_all(piece).map_err(|e| Error::io("cannot write", temp, e))
    }
}

/// Checks a payload's framing as it streams by: a u64 length then that many bytes, once for the
/// pickle stream and once per buffer frame, ending exactly at the payload's end.
struct Framing {
    length: Vec<u8>,
    left_in_piece: u64,
    pieces_left: u64,
}

impl Framing {
    fn new(frames: u32) -> Self {
        Self { length: Vec::with_capacity(8), left_in_piece: 0, pieces_left: 1 + u64::from(frames) }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if self.left_in_piece > 0 {
                let take = self.left_in_piece.min(bytes.len() as u64);
                self.left_in_piece -= take;
                bytes = &bytes[take as usize..];
            } else if self.pieces_left == 0 {
                return Err(corrupt("the payload has bytes after its last buffer"));
            } else {
                let take = (8 - self.length.len()).min(bytes.len());
                self.length.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.length.len() == 8 {
                    self.left_in_piece = u64::from_le_bytes(self.length[..].try_into().expect("8 bytes"));
                    self.length.clear();
                    self.pieces_left -= 1;
                }
            }
        }
        Ok(())
    }

    fn finish(&self) -> Result<()> {
        if self.pieces_left > 0 || self.left_in_piece > 0 || !self.length.is_empty() {
            return Err(corrupt("a payload length runs past the end"));
        }
        Ok(())
    }
}

fn read_exact(source: &mut dyn Read, into: &mut [u8], what: &str) -> Result<()> {
    source.read_exact(into).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(&format!("it ends inside {what} (truncated)")),
        _ => Error::io("cannot read the archive member", PathBuf::new(), e),
    })
}

fn corrupt(why: &str) -> Error {
    Error::CorruptEntry(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(pieces: &[&[u8]]) -> Vec<u8> {
        pieces.iter().flat_map(|p| [&(p.len() as u64).to_le_bytes()[..], p].concat()).collect()
    }

    #[test]
    fn framing_accepts_exact_payloads_fed_in_any_cut() {
        let payload = framed(&[b"stream", b"", b"frame one"]);
        for cut in 0..=payload.len() {
            let mut framing = Framing::new(2);
            framing.feed(&payload[..cut]).unwrap();
            framing.feed(&payload[cut..]).unwrap();
            framing.finish().unwrap();
        }
    }

    #[test]
    fn framing_refuses_short_long_and_miscounted_payloads() {
        let payload = framed(&[b"stream", b"frame"]);
        let mut short = Framing::new(1);
        short.feed(&payload[..payload.len() - 1]).unwrap();
        assert!(short.finish().is_err());
        assert!(Framing::new(1).feed(&[&payload[..], b"x"].concat()).is_err());
        let mut fewer = Framing::new(2);
        fewer.feed(&payload).unwrap();
        assert!(fewer.finish().is_err());
    }
}
