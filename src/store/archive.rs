//! Importing entries from an export archive or a remote prefix, in bounded memory and all or
//! nothing.
//!
//! An entry is read once, in pieces: its framing and its MAC under the archive's key are checked
//! as it streams into a temp file beside its entry's path, where it is re-sealed under this
//! cache's key. Nothing is visible until `commit`: an importer stages every member first and
//! commits only when all of them verified; a `Staged` entry dropped uncommitted removes its temp
//! file. A remote hit also decodes the value as it streams by ([`Store::stage_decoded`]), so the
//! entry is read once for both the local copy and the value.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::entry::{self, Header, Mac, MAC_LEN, PREFIX_LEN};
use super::Store;
use crate::codec;
use crate::error::{Error, Result};

/// Bytes read, checked and written at a time (at least one codec chunk).
const PIECE: usize = 4 << 20;

/// A staged entry at least this large is written past the page cache (`Direct`).
const DIRECT_FROM: u64 = 64 << 20;

/// Where [`Store::stage_decoded`] decodes the value: asked for the place of the pickle stream,
/// then of each buffer in order, as their lengths arrive.
pub trait Outputs<'o> {
    fn place(&mut self, len: usize) -> Result<&'o mut [u8]>;
}

/// An imported entry, verified and written beside its path, not yet in place.
#[derive(Debug)]
pub struct Staged {
    /// The entry's header (its namespace and key among the rest), as verified.
    pub header: Header,
    /// The MAC under this cache's key: the entry's once committed.
    pub mac: [u8; MAC_LEN],
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
    pub fn stage_import(&self, source: &mut (dyn Read + Send), archive_key: &[u8; 32]) -> Result<Staged> {
        self.stage(source, archive_key, None)
    }

    /// `stage_import` that also decodes the value into `outputs` as the bytes stream by. Until it
    /// returns `Ok` (the MAC of the whole entry verified), nothing written into the outputs may
    /// be trusted; on an error they hold garbage.
    pub fn stage_decoded(
        &self,
        source: &mut (dyn Read + Send),
        archive_key: &[u8; 32],
        outputs: &mut dyn Outputs<'_>,
    ) -> Result<Staged> {
        self.stage(source, archive_key, Some(outputs))
    }

    fn stage(
        &self,
        source: &mut (dyn Read + Send),
        archive_key: &[u8; 32],
        outputs: Option<&mut dyn Outputs<'_>>,
    ) -> Result<Staged> {
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
        let mut staged = Staged {
            header,
            mac: [0; MAC_LEN],
            temp,
            path,
            size: (header_end as u64).saturating_add(payload_len).saturating_add(MAC_LEN as u64),
            committed: false,
        };
        let direct = Direct::open(&file, staged.size);
        let sealing = Sealing { file, direct, archive: Mac::new(archive_key), cache: Mac::new(&ring.mac_key) };
        let mut pass = Passing { source, out: sealing, temp: &staged.temp, left: payload_len, window: Vec::new() };
        pass.out.write(&head, pass.temp)?;
        pass.payload(frames, outputs)?;
        let Passing { source, out, .. } = pass;
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
        staged.mac = out.cache.finish();
        let mut file = out.finish(&staged.temp)?;
        file.write_all(&staged.mac).map_err(|e| Error::io("cannot write", &staged.temp, e))?;
        Ok(staged)
    }

    /// Moves a staged entry into place (into its pack, if small) and counts it.
    pub fn commit_import(&self, mut staged: Staged) -> Result<()> {
        let ring = self.keyring();
        if staged.size < super::PACKED_BELOW as u64 {
            let sealed = fs::read(&staged.temp).map_err(|e| Error::io("cannot read", &staged.temp, e))?;
            self.put_packed(&ring, &staged.header.namespace, &staged.header.key, &sealed)?;
            // Best effort, as below.
            let _ = self.function_counters(&staged.header.namespace);
            return Ok(()); // dropping `staged` removes its temp file
        }
        let replaced = super::replace(&staged.temp, &staged.path)
            .map_err(|e| Error::io("cannot move into place", &staged.path, e))?;
        staged.committed = true;
        // Best effort: records the namespace's name beside its sizes, for `function_stats`.
        let _ = self.function_counters(&staged.header.namespace);
        self.count_installed(&ring, &staged.path, staged.size, replaced)
    }
}

/// The staged file, and the MACs of what passes through: under the archive's key (to check)
/// and under this cache's key (to seal).
struct Sealing {
    file: File,
    /// Set when a large entry goes to the file past the page cache.
    direct: Option<Direct>,
    archive: Mac,
    cache: Mac,
}

impl Sealing {
    fn write(&mut self, piece: &[u8], temp: &std::path::Path) -> Result<()> {
        let Self { file, direct, archive, cache } = self;
        let mut file_write = || match direct {
            Some(direct) => direct.write(piece),
            None => file.write_all(piece),
        };
        let written = if piece.len() >= PIECE / 2 && crate::parallel::available() {
            // Writing (into the page cache, or a large entry's direct buffer) overlaps hashing,
            // and the two MACs each other, so a spare core shortens the download.
            let macs = || rayon::join(|| archive.update(piece), || cache.update(piece));
            rayon::join(file_write, macs).0
        } else {
            archive.update(piece);
            cache.update(piece);
            file_write()
        };
        written.map_err(|e| Error::io("cannot write", temp, e))
    }

    /// The file, every byte passed through written to it.
    fn finish(self, temp: &std::path::Path) -> Result<File> {
        let Self { mut file, direct, .. } = self;
        if let Some(direct) = direct {
            direct.finish(&mut file).map_err(|e| Error::io("cannot write", temp, e))?;
        }
        Ok(file)
    }
}

/// Writes a large staged entry past the page cache (`O_DIRECT`), through a block-aligned
/// buffer: on a virtual machine that hands freed memory back to its host, filling fresh
/// page-cache pages with a copy of the entry cost more CPU than the download itself, while the
/// caller uses the value decoded alongside (a later hit reads the file, as it would once the
/// page cache let it go).
struct Direct {
    buffer: Aligned,
    filled: usize,
    /// Full buffers on their way to the writer thread, which blocks on each write (the stager's
    /// threads check and decode meanwhile), and empty ones back from it.
    full: Option<SyncSender<Aligned>>,
    empty: Receiver<Aligned>,
    /// The writer thread: it returns whether its writes still went past the page cache.
    writer: Option<std::thread::JoinHandle<std::io::Result<bool>>>,
}

/// Buffers a `Direct` writer fills and writes in turn.
const DIRECT_BUFFERS: usize = 3;

impl Direct {
    /// `O_DIRECT` set on `file` for an entry of `size` bytes, and a thread to write it, when
    /// it is large enough and the filesystem takes it (tmpfs does not); None leaves the file as
    /// it was.
    fn open(file: &File, size: u64) -> Option<Self> {
        if size < DIRECT_FROM {
            return None;
        }
        let mut buffers = (0..DIRECT_BUFFERS).map(|_| Aligned::new(PIECE)).collect::<Option<Vec<_>>>()?;
        let mut out = file.try_clone().ok()?;
        let (full, to_write) = sync_channel::<Aligned>(DIRECT_BUFFERS);
        let (written, empty) = sync_channel::<Aligned>(DIRECT_BUFFERS);
        let buffer = buffers.pop()?;
        for spare in buffers {
            written.send(spare).ok()?;
        }
        let writer = std::thread::Builder::new()
            .name("afml-cache-direct-writer".into())
            .spawn(move || {
                let mut direct = true;
                for block in to_write {
                    write_block(&mut out, block.as_slice(), &mut direct)?;
                    let _ = written.send(block); // the stager may have stopped meanwhile
                }
                Ok(direct)
            })
            .ok()?;
        // Dropping `full` on refusal ends the thread.
        set_direct(file, true).then_some(Self { buffer, filled: 0, full: Some(full), empty, writer: Some(writer) })
    }

    fn write(&mut self, mut piece: &[u8]) -> std::io::Result<()> {
        while !piece.is_empty() {
            let n = piece.len().min(PIECE - self.filled);
            self.buffer.as_mut()[self.filled..self.filled + n].copy_from_slice(&piece[..n]);
            self.filled += n;
            piece = &piece[n..];
            if self.filled == PIECE {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    /// Sends the full buffer to the writer and takes an empty one.
    fn hand_over(&mut self) -> std::io::Result<()> {
        if let Ok(next) = self.empty.recv() {
            let full = std::mem::replace(&mut self.buffer, next);
            if self.full.as_ref().is_some_and(|f| f.send(full).is_ok()) {
                self.filled = 0;
                return Ok(());
            }
        }
        // The writer stopped: its error says why.
        Err(self.stop().err().unwrap_or_else(|| std::io::Error::other("the entry's writer stopped")))
    }

    /// Waits for the writer's last write: whether it still went past the page cache.
    fn stop(&mut self) -> std::io::Result<bool> {
        self.full = None;
        match self.writer.take() {
            Some(writer) => writer.join().unwrap_or_else(|_| Err(std::io::Error::other("the entry's writer panicked"))),
            None => Ok(false),
        }
    }

    /// Writes what is left (less than a buffer, not a whole number of blocks) through the page
    /// cache, after everything before it.
    fn finish(mut self, file: &mut File) -> std::io::Result<()> {
        if self.stop()? && !set_direct(file, false) {
            return Err(std::io::Error::last_os_error());
        }
        write_block(file, &self.buffer.as_slice()[..self.filled], &mut false)
    }
}

/// Writes `block` whole; with `direct`, past the page cache until the filesystem refuses (then
/// `direct` is cleared and the rest goes through it).
fn write_block(file: &mut File, block: &[u8], direct: &mut bool) -> std::io::Result<()> {
    let mut at = 0;
    while at < block.len() {
        match file.write(&block[at..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Some filesystems take the flag and refuse the write (or a short write left the
            // rest unaligned): the page cache takes it instead.
            Err(e) if *direct && e.raw_os_error() == Some(libc::EINVAL) => {
                if !set_direct(file, false) {
                    return Err(e);
                }
                *direct = false;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets or clears `O_DIRECT` on `file`; false if the filesystem refuses.
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns, open for the duration of the call.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let wanted = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, wanted) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, on: bool) -> bool {
    !on
}

/// Zeroed memory aligned for `O_DIRECT` (to a page, a multiple of any block size).
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: `Aligned` owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for Aligned {}

impl Aligned {
    fn new(len: usize) -> Option<Self> {
        let layout = std::alloc::Layout::from_size_align(len, 4096).ok()?;
        // SAFETY: `len` is non-zero (a `PIECE`).
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Self { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `layout.size()` bytes allocated, initialised and owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `layout.size()` bytes allocated, initialised and owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The payload on its way from the source to the staged file, its framing checked as it goes:
/// a u64 length then that many bytes, once for the pickle stream and once per buffer frame,
/// ending exactly at the payload's end.
struct Passing<'a> {
    source: &'a mut (dyn Read + Send),
    out: Sealing,
    temp: &'a std::path::Path,
    /// Payload bytes not yet read.
    left: u64,
    window: Vec<u8>,
}

impl Passing<'_> {
    fn payload(&mut self, frames: u32, mut outputs: Option<&mut dyn Outputs<'_>>) -> Result<()> {
        let stream_len = self.length()?;
        match outputs.as_mut() {
            Some(outputs) => self.fill(outputs.place(stream_len)?, "its pickle stream")?,
            None => self.skip(stream_len)?,
        }
        for _ in 0..frames {
            let frame_len = self.length()?;
            if frame_len < codec::HEADER_LEN {
                return Err(corrupt("a buffer's frame is shorter than a frame header"));
            }
            let mut frame_head = vec![0u8; codec::HEADER_LEN];
            self.fill(&mut frame_head, "a frame header")?;
            let head_len = codec::head_len(&frame_head).map_err(bad_frame)?;
            if head_len > frame_len {
                return Err(corrupt("a frame's chunk table runs past the frame"));
            }
            // Grown as its bytes arrive: a forged length cannot make it allocate ahead of them.
            while frame_head.len() < head_len {
                let at = frame_head.len();
                frame_head.resize(head_len.min(at + PIECE), 0);
                self.fill(&mut frame_head[at..], "a frame's chunk table")?;
            }
            let layout = codec::layout(&frame_head, frame_len).map_err(bad_frame)?;
            match outputs.as_mut() {
                Some(outputs) => self.decode(&layout, outputs.place(layout.raw_len())?)?,
                None => self.skip(frame_len - head_len)?,
            }
        }
        if self.left > 0 {
            return Err(corrupt("the payload has bytes after its last buffer"));
        }
        Ok(())
    }

    /// Reads a u64 length and checks that the payload holds that many more bytes.
    fn length(&mut self) -> Result<usize> {
        let mut length = [0u8; 8];
        self.fill(&mut length, "a payload length")?;
        let length = u64::from_le_bytes(length);
        if length > self.left {
            return Err(corrupt("a payload length runs past the end"));
        }
        usize::try_from(length).map_err(|_| corrupt("a payload length does not fit this machine"))
    }

    /// Fills `into` with the next payload bytes, passing them on to the staged file.
    fn fill(&mut self, into: &mut [u8], what: &str) -> Result<()> {
        if into.len() as u64 > self.left {
            return Err(corrupt(&format!("{what} runs past the end of the payload")));
        }
        let Self { source, out, temp, .. } = self;
        let mut pieces = into.chunks_mut(PIECE);
        let mut current = pieces.next();
        if let Some(first) = current.as_deref_mut() {
            read_exact(*source, first, "its payload")?;
        }
        // Reading piece k + 1 (copying into fresh memory, which faults it in) overlaps checking
        // and writing piece k.
        while let Some(piece) = current {
            let mut next = pieces.next();
            match next.as_deref_mut() {
                Some(next) if crate::parallel::available() => {
                    let (written, read) =
                        rayon::join(|| out.write(piece, temp), || read_exact(*source, next, "its payload"));
                    written?;
                    read?;
                }
                Some(next) => {
                    out.write(piece, temp)?;
                    read_exact(*source, next, "its payload")?;
                }
                None => out.write(piece, temp)?,
            }
            current = next;
        }
        self.left -= into.len() as u64;
        Ok(())
    }

    /// Passes `len` payload bytes on without keeping them.
    fn skip(&mut self, mut len: usize) -> Result<()> {
        let mut window = std::mem::take(&mut self.window);
        while len > 0 {
            window.resize(len.min(PIECE), 0);
            self.fill(&mut window, "a payload part")?;
            len -= window.len();
        }
        self.window = window;
        Ok(())
    }

    /// Passes a frame's chunks on, decoding them into `out`: runs of raw chunks are read straight
    /// into their place, runs of compressed ones into a window and decoded from there.
    fn decode(&mut self, layout: &codec::Layout, out: &mut [u8]) -> Result<()> {
        let mut window = std::mem::take(&mut self.window);
        let mut first = 0;
        while first < layout.chunks() {
            let (raw, start) = (layout.is_raw(first), layout.stored_span(first).start);
            let mut end = first + 1;
            // A run of raw chunks goes whole to `fill` (no window holds it), which reads each
            // piece while the one before is checked and written.
            while end < layout.chunks()
                && layout.is_raw(end) == raw
                && (raw || layout.stored_span(end).end - start <= PIECE)
            {
                end += 1;
            }
            let place = &mut out[layout.raw_span(first).start..layout.raw_span(end - 1).end];
            if raw {
                self.fill(place, "a buffer's chunks")?;
            } else {
                window.resize(layout.stored_span(end - 1).end - start, 0);
                self.fill(&mut window, "a buffer's chunks")?;
                layout.decode_chunks(first..end, &window, place).map_err(bad_frame)?;
            }
            first = end;
        }
        self.window = window;
        Ok(())
    }
}

fn read_exact(source: &mut (dyn Read + Send), into: &mut [u8], what: &str) -> Result<()> {
    source.read_exact(into).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(&format!("it ends inside {what} (truncated)")),
        _ => Error::io("cannot read the archive member", PathBuf::new(), e),
    })
}

fn corrupt(why: &str) -> Error {
    Error::CorruptEntry(why.to_string())
}

/// A frame that does not decode: the entry is corrupt.
fn bad_frame(error: Error) -> Error {
    match error {
        Error::CorruptFrame(why) => corrupt(&format!("a buffer's frame is corrupt: {why}")),
        other => corrupt(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout;
    use super::super::tests::{key, Scratch, GB};
    use super::*;
    use crate::codec::{samples, Compression};

    const ARCHIVE: [u8; 32] = [3; 32];

    /// Hands out outputs sized in advance, checking that each is asked for at its length.
    struct Given<'o>(std::vec::IntoIter<&'o mut [u8]>);

    impl<'o> Outputs<'o> for Given<'o> {
        fn place(&mut self, len: usize) -> Result<&'o mut [u8]> {
            let out = self.0.next().expect("asked for more outputs than the value has");
            assert_eq!(out.len(), len);
            Ok(out)
        }
    }

    /// A source that returns at most `step` bytes per read, as a download's chunks may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// An entry sealed under the archive's key: a stream and three buffers, one mixing
    /// compressible and random chunks.
    fn exported(compression: Compression) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
        let mut mixed = samples::prices(3 * codec::CHUNK_SIZE / 8, 5);
        mixed[codec::CHUNK_SIZE..2 * codec::CHUNK_SIZE].copy_from_slice(&samples::random(codec::CHUNK_SIZE, 6));
        let buffers = vec![mixed, vec![], samples::random(PIECE + 3, 7)];
        let frames: Vec<Vec<u8>> = buffers.iter().map(|b| codec::encode(b, 8, compression)).collect();
        let header = Header {
            namespace: "labels".into(),
            key: key(1),
            compression: compression.name().into(),
            ..Header::default()
        };
        let stream = b"pickle stream".to_vec();
        let bytes = entry::seal(&ARCHIVE, &header, &stream, &frames, entry::Counters::default()).to_vec();
        (bytes, stream, buffers)
    }

    fn decoded(store: &Store, bytes: &[u8], step: usize, stream: &mut [u8], buffers: &mut [Vec<u8>]) -> Result<Staged> {
        let outs: Vec<&mut [u8]> = [stream].into_iter().chain(buffers.iter_mut().map(|b| b.as_mut_slice())).collect();
        store.stage_decoded(&mut Trickle(bytes, step), &ARCHIVE, &mut Given(outs.into_iter()))
    }

    #[test]
    fn a_staged_download_decodes_the_value_and_stages_the_entry_a_get_reads() {
        let scratch = Scratch::new("archive-decode");
        let store = scratch.store(GB);
        for compression in [Compression::None, Compression::Default, Compression::Max] {
            let (bytes, stream, buffers) = exported(compression);
            for step in [7, codec::CHUNK_SIZE + 1, usize::MAX] {
                let mut got_stream = vec![0; stream.len()];
                let mut got: Vec<Vec<u8>> = buffers.iter().map(|b| vec![0; b.len()]).collect();
                let staged = decoded(&store, &bytes, step, &mut got_stream, &mut got).unwrap();
                assert!(got_stream == stream && got == buffers, "{compression}, step {step}: value differs");
                let mac = staged.mac;
                store.commit_import(staged).unwrap();
                assert_eq!(store.current_mac("labels", &key(1)).unwrap(), Some(mac));
                assert!(matches!(store.get("labels", &key(1)).unwrap(), super::super::Lookup::Hit(_)));
            }
        }
    }

    #[test]
    fn a_staged_download_refuses_any_flipped_bit_and_leaves_nothing() {
        let scratch = Scratch::new("archive-flip");
        let store = scratch.store(GB);
        let (bytes, stream, buffers) = exported(Compression::Default);
        let mut got_stream = vec![0; stream.len()];
        let mut got: Vec<Vec<u8>> = buffers.iter().map(|b| vec![0; b.len()]).collect();
        let stride = bytes.len() / 97;
        for at in (0..bytes.len()).step_by(stride).chain([bytes.len() - 1]).filter(|at| !entry::COUNTERS.contains(at)) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let staged = decoded(&store, &bad, usize::MAX, &mut got_stream, &mut got);
            assert!(staged.is_err(), "flip at {at} accepted");
        }
        for len in [0, PREFIX_LEN + 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(decoded(&store, &bytes[..len], usize::MAX, &mut got_stream, &mut got).is_err(), "cut at {len}");
        }
        let longer = [&bytes[..], b"x"].concat();
        assert!(decoded(&store, &longer, usize::MAX, &mut got_stream, &mut got).is_err());
        assert!(matches!(store.get("labels", &key(1)).unwrap(), super::super::Lookup::Miss));
        let is_temp =
            |p: &PathBuf| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| layout::temp_writer(n).is_some());
        let left: Vec<_> = walk(&scratch.0).into_iter().filter(is_temp).collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    fn exported_whole(mut export: super::super::Export) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut next = vec![0u8; export.next_len(PIECE)];
            if next.is_empty() {
                return out;
            }
            export.fill(&mut next).unwrap();
            out.extend_from_slice(&next);
        }
    }

    #[test]
    fn a_large_value_sealed_for_a_receiver_as_written_exports_as_a_checked_export_does() {
        use super::super::tests::new_entry;
        use super::super::Stored;
        let scratch = Scratch::new("archive-sealing");
        let store = scratch.store(GB);
        // 40 MiB of prices and 30 MiB of random bytes: written in pieces, with raw chunks.
        let value = (samples::prices(5 << 20, 8), samples::random(30 << 20, 9));
        let (k, receiver, namespace) = (key(4), [9u8; 32], "labels.triple_barrier");
        let (stored, sealed) = store.put_sealing_for(new_entry(&k, b"stream", &value), Some(&receiver)).unwrap();
        let Stored::Written { mac, .. } = stored else { panic!("not written: {stored:?}") };
        let sealed = sealed.expect("a large value is sealed for the receiver as it is written");
        let checked = exported_whole(store.open_export(namespace, &k, &receiver).unwrap().unwrap());
        let unhashed = exported_whole(store.open_export_sealed(namespace, &k, &mac, sealed).unwrap().unwrap());
        assert!(checked == unhashed, "the unhashed export differs from the checked one");
        assert_eq!(checked[checked.len() - MAC_LEN..], sealed);
        let export = store.open_export_sealed(namespace, &k, &mac, sealed).unwrap().unwrap();
        let mapped = export.mapped().expect("a sealed entry of its own file maps");
        assert!(mapped.bytes() == checked && !mapped.damaged(), "the mapped export differs from the checked one");
        assert!(store.open_export(namespace, &k, &receiver).unwrap().unwrap().mapped().is_none(), "not sealed");
        // The file shrinks under the mapping (a restore, `: > file`): zeros, not a SIGBUS.
        let path = store.entry_path(namespace, &k).unwrap();
        File::options().write(true).open(&path).unwrap().set_len(4096).unwrap();
        std::hint::black_box(mapped.bytes().iter().map(|&b| u64::from(b)).sum::<u64>()); // reads every page
        assert!(mapped.damaged() && mapped.bytes() != checked, "a shrunk file must read as damaged");
        // Replaced by another write of the key since: not to be sent as the first was sealed.
        store.put(new_entry(&k, b"another stream", &value)).unwrap();
        assert!(store.open_export_sealed(namespace, &k, &mac, sealed).unwrap().is_none());
        // A small value is checked and sealed when it is read instead.
        let small = (samples::prices(1000, 3), Vec::new());
        assert!(store.put_sealing_for(new_entry(&key(5), b"s", &small), Some(&receiver)).unwrap().1.is_none());
    }

    #[test]
    fn a_large_staged_entry_goes_to_its_file_whole_past_the_page_cache() {
        let scratch = Scratch::new("archive-direct");
        let store = scratch.store(GB);
        // Over `DIRECT_FROM` and not a whole number of blocks: its tail goes through the page
        // cache; a trickle of odd pieces fills the aligned buffer across their edges.
        let buffer = samples::random(DIRECT_FROM as usize + 4099, 11);
        let header = Header { namespace: "labels".into(), key: key(2), ..Header::default() };
        let frames = vec![codec::encode(&buffer, 1, Compression::None)];
        let bytes = entry::seal(&ARCHIVE, &header, b"stream", &frames, entry::Counters::default()).to_vec();
        let (mut stream, mut got) = (vec![0; 6], vec![vec![0; buffer.len()]]);
        let staged = decoded(&store, &bytes, codec::CHUNK_SIZE + 1, &mut stream, &mut got).unwrap();
        assert!(stream == b"stream" && got[0] == buffer, "value differs");
        let written = fs::read(&staged.temp).unwrap();
        assert!(written == entry::reseal(&store.keyring().mac_key, &bytes), "staged file differs");
        store.commit_import(staged).unwrap();
        assert!(matches!(store.get("labels", &key(2)).unwrap(), super::super::Lookup::Hit(_)));
    }

    #[test]
    fn a_direct_write_refused_by_the_filesystem_goes_through_the_page_cache() {
        let scratch = Scratch::new("archive-direct-refused");
        fs::create_dir_all(&scratch.0).unwrap();
        let temp = scratch.0.join("entry");
        let mut file = File::create(&temp).unwrap();
        if !set_direct(&file, true) {
            return; // not on this filesystem at all
        }
        let (bytes, mut direct) = (samples::random(PIECE + 5, 12), true);
        let mut block = Aligned::new(PIECE).unwrap();
        block.as_mut().copy_from_slice(&bytes[..PIECE]);
        write_block(&mut file, block.as_slice(), &mut direct).unwrap();
        assert!(direct, "an aligned block went through the page cache");
        // Off a block's edge: refused, as some filesystems refuse every direct write.
        write_block(&mut file, &bytes[PIECE..], &mut direct).unwrap();
        assert!(!direct, "the refused write did not fall back to the page cache");
        assert!(fs::read(&temp).unwrap() == bytes);
    }

    #[test]
    fn an_import_checks_the_framing_of_every_buffer() {
        let scratch = Scratch::new("archive-framing");
        let store = scratch.store(GB);
        let (bytes, ..) = exported(Compression::Default);
        assert!(store.stage_import(&mut Trickle(&bytes, 5), &ARCHIVE).is_ok());
        // One buffer fewer than the prefix announces, the MAC made to match: refused all the same.
        let mut fewer = bytes.clone();
        fewer[28..32].copy_from_slice(&2u32.to_le_bytes());
        let resealed = entry::reseal(&ARCHIVE, &fewer);
        let refused = store.stage_import(&mut resealed.as_slice(), &ARCHIVE).unwrap_err();
        assert!(refused.to_string().contains("after its last buffer"), "{refused}");
    }
}
