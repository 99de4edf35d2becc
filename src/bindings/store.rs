//! The store, seen from Python: `afml_cache._core.Store`, used by `afml_cache.Cache`.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyIterator, PyList};

use crate::codec::{self, Compression};
use crate::store::{self, CallRecord, Lookup, NewEntry, Scanned, Stored};

/// A cache directory on disk (see src/store/mod.rs). Thread-safe; share one per directory.
#[pyclass(frozen, module = "afml_cache._core")]
pub struct Store {
    inner: store::Store,
}

/// `compression` as a level, or a ValueError naming the levels.
/// What `Store.put` returns: `(stored, size, mac, sealed)`.
type Written<'py> = (bool, u64, Option<Bound<'py, PyBytes>>, Option<Bound<'py, PyBytes>>);

fn parse_compression(compression: &str) -> PyResult<Compression> {
    compression.parse().map_err(|e: codec::UnknownCompression| PyValueError::new_err(e.to_string()))
}

/// The bytes of each C-contiguous buffer, beside its item size.
fn contiguous(buffers: &[(PyBuffer<u8>, usize)]) -> PyResult<Vec<(&[u8], usize)>> {
    let mut slices = Vec::with_capacity(buffers.len());
    for (buffer, itemsize) in buffers {
        if !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err("stored buffers must be C-contiguous"));
        }
        // SAFETY: the PyBuffer keeps the exporter's memory alive and in place until dropped,
        // after the caller is done with these slices.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) };
        slices.push((bytes, *itemsize));
    }
    Ok(slices)
}

/// One function's (namespace's) statistics, shared through the directory: calls, hits, misses,
/// seconds spent computing and saved, when it was last called (seconds since the epoch, or
/// None), the latency of whole calls that hit and missed (total seconds, and calls per bucket of
/// `LATENCY_BOUNDS`), and the bytes and number of its entries on disk.
#[pyclass(frozen, get_all, module = "afml_cache._core")]
pub struct FunctionTotals {
    namespace: String,
    calls: u64,
    hits: u64,
    misses: u64,
    compute_time: f64,
    time_saved: f64,
    last_accessed: Option<f64>,
    hit_latency_sum: f64,
    miss_latency_sum: f64,
    hit_latency: Vec<u64>,
    miss_latency: Vec<u64>,
    bytes: u64,
    entries: u64,
}

#[pymethods]
impl FunctionTotals {
    fn __repr__(&self) -> String {
        format!(
            "FunctionTotals(namespace={:?}, calls={}, hits={}, misses={}, bytes={}, entries={})",
            self.namespace, self.calls, self.hits, self.misses, self.bytes, self.entries
        )
    }
}

impl From<store::FunctionStats> for FunctionTotals {
    fn from(f: store::FunctionStats) -> Self {
        Self {
            calls: f.calls,
            hits: f.hits,
            misses: f.misses,
            compute_time: f.compute_ns as f64 / 1e9,
            time_saved: f.saved_ns as f64 / 1e9,
            last_accessed: (f.last_accessed_ns > 0).then(|| f.last_accessed_ns as f64 / 1e9),
            hit_latency_sum: f.hit_latency_ns as f64 / 1e9,
            miss_latency_sum: f.miss_latency_ns as f64 / 1e9,
            hit_latency: f.hit_latency,
            miss_latency: f.miss_latency,
            bytes: f.bytes,
            entries: f.entries,
            namespace: f.namespace,
        }
    }
}

/// One entry as the store records it, read without loading (or verifying) its value: its
/// namespace, digest, file path, size on disk, value_size (bytes before compression), created
/// and expires (seconds since the epoch), compute_time, protected, tags, time_range (ns since
/// the epoch), metadata (JSON text), compression, hits, and last_accessed (or None).
#[pyclass(frozen, get_all, module = "afml_cache._core")]
pub struct EntryInfo {
    namespace: String,
    digest: String,
    path: PathBuf,
    size: u64,
    value_size: u64,
    created: f64,
    expires: Option<f64>,
    compute_time: f64,
    protected: bool,
    tags: Vec<String>,
    time_range: Option<(i64, i64)>,
    metadata: String,
    compression: String,
    hits: u64,
    last_accessed: Option<f64>,
}

#[pymethods]
impl EntryInfo {
    fn __repr__(&self) -> String {
        format!("EntryInfo(namespace={:?}, digest={:?}, size={})", self.namespace, self.digest, self.size)
    }
}

impl From<Scanned> for EntryInfo {
    fn from(s: Scanned) -> Self {
        let h = s.header;
        Self {
            namespace: h.namespace,
            digest: h.key,
            path: s.path,
            size: s.bytes,
            value_size: h.value_size,
            created: h.created,
            expires: h.expires,
            compute_time: h.compute_time,
            protected: h.protected,
            tags: h.tags,
            time_range: h.time_range,
            metadata: h.metadata,
            compression: h.compression,
            hits: s.counters.hits,
            last_accessed: (s.counters.last_access_ns > 0).then(|| s.counters.last_access_ns as f64 / 1e9),
        }
    }
}

/// A held single-flight lock; released by `release()`, by leaving a `with` block, or when its
/// process dies.
#[pyclass(module = "afml_cache._core")]
pub struct KeyLock {
    held: Option<store::KeyLock>,
}

#[pymethods]
impl KeyLock {
    fn release(&mut self) {
        self.held = None;
    }

    #[getter]
    fn held(&self) -> bool {
        self.held.is_some()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&mut self, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) {
        self.release();
    }
}

#[pymethods]
impl Store {
    /// `trust_group`: accept a directory its group can write (a team cache), not only one that
    /// its owner alone can; a directory anyone else could write is refused (`CacheError`).
    #[new]
    #[pyo3(signature = (directory, size_limit, eviction_policy, *, trust_group = false))]
    fn new(
        py: Python<'_>,
        directory: PathBuf,
        size_limit: u64,
        eviction_policy: &str,
        trust_group: bool,
    ) -> PyResult<Self> {
        let policy = eviction_policy.parse()?;
        let trust = if trust_group { store::Trust::Group } else { store::Trust::Owner };
        let inner = py.detach(|| store::Store::open(&directory, size_limit, policy, trust))?;
        Ok(Self { inner })
    }

    #[getter]
    fn directory(&self) -> PathBuf {
        self.inner.root().to_path_buf()
    }

    #[getter]
    fn size_limit(&self) -> u64 {
        self.inner.size_limit()
    }

    #[getter]
    fn eviction_policy(&self) -> &'static str {
        self.inner.policy().name()
    }

    /// Stores a value; returns `(stored, size, mac, sealed)`: `stored` is False when the entry is
    /// larger than the whole size limit (then `mac` is None and nothing was written). `buffers`: a
    /// list of `(buffer, item size)`.
    /// `background`: a value written behind, compressed and written in the writer's own
    /// low-priority pool (`parallel::in_background`), not in the one the caller's fingerprints use.
    /// `seal_for`: the key of a remote tier the entry goes up to next; `sealed` is the entry's MAC
    /// under it when it was sealed as it was written (a large value), else None (see
    /// `export_reader`).
    #[pyo3(signature = (namespace, digest, stream, buffers, *, compression, expires, compute_time, protected, tags, time_range, metadata, background = false, seal_for = None))]
    #[allow(clippy::too_many_arguments)]
    fn put<'py>(
        &self,
        py: Python<'py>,
        namespace: &str,
        digest: &str,
        stream: &[u8],
        buffers: Vec<(PyBuffer<u8>, usize)>,
        compression: &str,
        expires: Option<f64>,
        compute_time: f64,
        protected: bool,
        tags: Vec<String>,
        time_range: Option<(i64, i64)>,
        metadata: String,
        background: bool,
        seal_for: Option<[u8; 32]>,
    ) -> PyResult<Written<'py>> {
        let compression = parse_compression(compression)?;
        let slices = contiguous(&buffers)?;
        let new = NewEntry {
            namespace,
            key: digest,
            stream,
            buffers: slices,
            compression,
            expires,
            compute_time,
            protected,
            tags,
            time_range,
            metadata,
        };
        let put = || self.inner.put_sealing_for(new, seal_for.as_ref());
        let (stored, sealed) = py.detach(|| if background { crate::parallel::in_background(put) } else { put() })?;
        let (stored, bytes, mac) = match stored {
            Stored::Written { bytes, mac } => (true, bytes, Some(PyBytes::new(py, &mac))),
            Stored::TooLarge { bytes, .. } => (false, bytes, None),
        };
        Ok((stored, bytes, mac, sealed.map(|mac| PyBytes::new(py, &mac))))
    }

    /// `(stream, buffers, mac, expires)` of a verified entry, or None (a miss). Buffers come back
    /// as fresh bytearrays, decompressed with the GIL released. Unreadable entries are removed and
    /// logged (logger "afml_cache"), and count as misses.
    fn get<'py>(&self, py: Python<'py>, namespace: &str, digest: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        match py.detach(|| self.inner.get_streamed(namespace, digest))? {
            store::Streamed::Whole(found) => self.loaded(py, found),
            store::Streamed::Large(large) => self.loaded_large(py, *large),
        }
    }

    /// Like `get` without counting a hit or miss or recording the access.
    fn peek<'py>(&self, py: Python<'py>, namespace: &str, digest: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let found = py.detach(|| self.inner.peek(namespace, digest))?;
        self.loaded(py, found)
    }

    fn contains(&self, py: Python<'_>, namespace: &str, digest: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.inner.contains(namespace, digest))?)
    }

    /// `(file, offset, length)` of the entry's sealed bytes (None if there is none): the file
    /// holding it, where they start and how many there are (for tests that damage entries).
    fn locate(&self, py: Python<'_>, namespace: &str, digest: &str) -> PyResult<Option<(PathBuf, u64, u64)>> {
        Ok(py.detach(|| self.inner.locate(namespace, digest))?)
    }

    /// The MAC of the entry stored now for `digest` (None if there is none).
    fn current_mac<'py>(
        &self,
        py: Python<'py>,
        namespace: &str,
        digest: &str,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(self.inner.current_mac(namespace, digest)?.map(|mac| PyBytes::new(py, &mac)))
    }

    /// Bumped by every change to any entry, by any process.
    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    /// Counts a hit served from a memory copy (the disk was not read).
    fn count_hit(&self) {
        self.inner.add_to_counter(store::Counter::Hits, 1);
    }

    /// Counts one call of a cached function: a hit (saving `saved` seconds) or a miss (computed in
    /// `compute` seconds). Shared by every process, kept across restarts.
    fn record_call(&self, namespace: &str, hit: bool, compute: f64, saved: f64, latency: f64) -> PyResult<()> {
        let ns = |seconds: f64| (seconds.max(0.0) * 1e9) as u64;
        let call = CallRecord { hit, compute_ns: ns(compute), saved_ns: ns(saved), latency_ns: ns(latency) };
        Ok(self.inner.record_call(namespace, call)?)
    }

    /// Every function's (namespace's) statistics and the sizes of its entries, by namespace:
    /// the namespaces that were called or have stored entries.
    fn function_stats(&self, py: Python<'_>) -> PyResult<Vec<FunctionTotals>> {
        let found = py.detach(|| self.inner.function_stats())?;
        Ok(found.into_iter().map(FunctionTotals::from).collect())
    }

    fn reset_function_stats(&self) -> PyResult<()> {
        Ok(self.inner.reset_function_stats()?)
    }

    /// Adds hits served from memory to an entry's own counters, which steer eviction.
    fn record_access(
        &self,
        py: Python<'_>,
        namespace: &str,
        digest: &str,
        hits: u64,
        last_accessed_ns: u64,
    ) -> PyResult<()> {
        Ok(py.detach(|| self.inner.record_access(namespace, digest, hits, last_accessed_ns))?)
    }

    fn delete(&self, py: Python<'_>, namespace: &str, digest: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.inner.delete(namespace, digest))?)
    }

    #[pyo3(signature = (namespace, digest, expires))]
    fn touch(&self, py: Python<'_>, namespace: &str, digest: &str, expires: Option<f64>) -> PyResult<bool> {
        Ok(py.detach(|| self.inner.touch(namespace, digest, expires))?)
    }

    /// Every entry's metadata (without loading values), as dicts; only the entries of
    /// `namespace` when given.
    #[pyo3(signature = (namespace = None))]
    fn scan(&self, py: Python<'_>, namespace: Option<&str>) -> PyResult<Vec<EntryInfo>> {
        let entries = py.detach(|| self.inner.scan(namespace))?;
        Ok(entries.into_iter().map(EntryInfo::from).collect())
    }

    fn expire(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(py.detach(|| self.inner.expire())?)
    }

    fn clear(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(py.detach(|| self.inner.clear())?)
    }

    fn evict(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(py.detach(|| self.inner.evict())?)
    }

    /// Problems found, as dicts with `path`, `problem`, `fixed`. `progress(done, total)` is
    /// called about a hundred times as files are verified; an error it raises is ignored.
    #[pyo3(signature = (fix = false, progress = None))]
    fn check<'py>(&self, py: Python<'py>, fix: bool, progress: Option<Py<PyAny>>) -> PyResult<Bound<'py, PyList>> {
        let report = |done: usize, total: usize| {
            if let Some(callback) = &progress {
                if done == total || done.is_multiple_of((total / 100).max(1)) {
                    Python::attach(|py| drop(callback.call1(py, (done, total))));
                }
            }
        };
        let problems = py.detach(|| self.inner.check_with_progress(fix, &report))?;
        let out = PyList::empty(py);
        for p in problems {
            let d = PyDict::new(py);
            d.set_item("path", p.path)?;
            d.set_item("problem", p.problem)?;
            d.set_item("fixed", p.fixed)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Shared counters: hits, misses, sets, deletes, evictions, bytes, count.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use store::Counter as C;
        let d = PyDict::new(py);
        for (name, c) in [
            ("hits", C::Hits),
            ("misses", C::Misses),
            ("sets", C::Sets),
            ("deletes", C::Deletes),
            ("evictions", C::Evictions),
            ("bytes", C::Bytes),
            ("count", C::Count),
        ] {
            d.set_item(name, self.inner.counter(c))?;
        }
        Ok(d)
    }

    /// Waits up to `timeout` seconds (GIL released) for the entry's single-flight lock; None if
    /// another holder still has it then.
    fn lock(&self, py: Python<'_>, namespace: &str, digest: &str, timeout: f64) -> PyResult<Option<KeyLock>> {
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
        let held = py.detach(|| self.inner.lock(namespace, digest, timeout))?;
        Ok(held.map(|held| KeyLock { held: Some(held) }))
    }

    fn export_entry<'py>(
        &self,
        py: Python<'py>,
        namespace: &str,
        digest: &str,
        archive_key: [u8; 32],
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let exported = py.detach(|| self.inner.export_entry(namespace, digest, &archive_key))?;
        Ok(exported.map(|bytes| PyBytes::new(py, &bytes)))
    }

    /// The entry of `(namespace, digest)` opened for export under `archive_key`, to read in
    /// pieces (`EntryExport.read`); None if there is none or it has expired. `sealed`: the
    /// `(mac, mac under archive_key)` a `put(seal_for=archive_key)` gave: the file is read
    /// without hashing it, or None if it now holds another write.
    #[pyo3(signature = (namespace, digest, archive_key, sealed = None))]
    fn export_reader(
        &self,
        py: Python<'_>,
        namespace: &str,
        digest: &str,
        archive_key: [u8; 32],
        sealed: Option<([u8; 32], [u8; 32])>,
    ) -> PyResult<Option<EntryExport>> {
        let opened = py.detach(|| match sealed {
            Some((mac, receiver_mac)) => self.inner.open_export_sealed(namespace, digest, &mac, receiver_mac),
            None => self.inner.open_export(namespace, digest, &archive_key),
        })?;
        Ok(opened.map(|inner| EntryExport { inner }))
    }

    /// Reads one exported entry from `source` (a binary file object holding exactly its bytes,
    /// read in chunks, GIL released between them), verifies it against `archive_key` and stages
    /// it: nothing is visible until `commit()`.
    fn stage_import(slf: Py<Self>, py: Python<'_>, source: Py<PyAny>, archive_key: [u8; 32]) -> PyResult<StagedImport> {
        let mut reader = PyReader { source, error: None };
        let staged = py.detach(|| slf.get().inner.stage_import(&mut reader, &archive_key));
        match (staged, reader.error) {
            (_, Some(error)) => Err(error), // the file object's own exception, as it came
            (staged, None) => Ok(StagedImport { store: slf, staged: Some(staged?) }),
        }
    }

    /// `stage_import` from `chunks`, an iterable of buffers (a download's pieces, taken one at a
    /// time, each processed with the GIL released). With `decode`, the value is decoded as the
    /// bytes pass, into fresh buffers, and returned beside the staged entry as `get` returns it
    /// (`(stream, buffers, mac, expires, compute_time)`, `mac` the staged entry's): only once
    /// the whole entry verified. Without it, the second item is None.
    fn stage_download<'py>(
        slf: Py<Self>,
        py: Python<'py>,
        chunks: &Bound<'py, PyAny>,
        archive_key: [u8; 32],
        decode: bool,
    ) -> PyResult<(StagedImport, Option<Bound<'py, PyAny>>)> {
        let mut reader = PyChunks { chunks: chunks.try_iter()?.unbind(), current: None, at: 0, error: None };
        let mut outputs = PyOutputs { arrays: Vec::new(), place: std::marker::PhantomData };
        let store = slf.get();
        let staged = py.detach(|| match decode {
            true => store.inner.stage_decoded(&mut reader, &archive_key, &mut outputs),
            false => store.inner.stage_import(&mut reader, &archive_key),
        });
        drop(reader.current.take()); // released with the GIL held
        if let Some(error) = reader.error {
            return Err(error); // the iterator's own exception, as it came
        }
        let staged = staged?;
        let value = match outputs.arrays.split_first() {
            Some((stream, buffers)) if decode => {
                let buffers = PyList::new(py, buffers.iter().map(|b| b.bind(py)))?;
                let header = &staged.header;
                let found =
                    (stream.bind(py), buffers, PyBytes::new(py, &staged.mac), header.expires, header.compute_time);
                Some(found.into_pyobject(py)?.into_any())
            }
            _ => None,
        };
        Ok((StagedImport { store: slf, staged: Some(staged) }, value))
    }
}

/// An entry read out in pieces, sealed under another key, by `Store.export_reader`: one pass
/// over its file, in bounded memory. The last piece comes only once the file verified; a
/// damaged one raises instead.
#[pyclass(module = "afml_cache._core")]
pub struct EntryExport {
    inner: store::Export,
}

#[pymethods]
impl EntryExport {
    /// Bytes of the exported entry.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size()
    }

    /// The next piece, at most `size` bytes (read and checked with the GIL released); empty at
    /// the end. A bytearray, not bytes: its memory is not zero-filled before the read fills it.
    fn read<'py>(&mut self, py: Python<'py>, size: usize) -> PyResult<Bound<'py, PyByteArray>> {
        let export = &mut self.inner;
        let (piece, out) = new_bytearray(py, export.next_len(size))?;
        py.detach(|| export.fill(out))?;
        Ok(piece)
    }

    /// The whole export in place, as one read-only buffer (see `store::Mapped`), if it was
    /// opened sealed and is a file of its own; else None, and `read` gives its pieces.
    fn mapped(&self) -> Option<MappedEntry> {
        self.inner.mapped().map(|inner| MappedEntry { inner })
    }
}

/// A sealed entry's bytes mapped in place (`EntryExport.mapped`): a read-only buffer for a
/// client to send whole, with no copy. `damaged` turns true if the file shrank under it; the
/// bytes sent are then zeros that fail their MAC.
#[pyclass(frozen, module = "afml_cache._core")]
pub struct MappedEntry {
    inner: store::Mapped,
}

#[pymethods]
impl MappedEntry {
    #[getter]
    fn damaged(&self) -> bool {
        self.inner.damaged()
    }

    fn __len__(&self) -> usize {
        self.inner.bytes().len()
    }

    /// # Safety
    /// `view` is the interpreter's: filled here, over memory that lives as long as this object,
    /// which the view holds (a frozen object: the mapping never moves or changes).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let bytes = slf.get().inner.bytes();
        // SAFETY: read-only (a writable request is refused with BufferError); `view.obj` holds
        // a reference to `slf`, so the memory outlives every view.
        let filled = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut std::os::raw::c_void,
                bytes.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if filled == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}

/// An archive's entry, verified and written beside its place by `Store.stage_import`.
/// `commit()` moves it into place; discarded or dropped uncommitted, it leaves nothing behind.
#[pyclass(module = "afml_cache._core")]
pub struct StagedImport {
    store: Py<Store>,
    staged: Option<store::Staged>,
}

#[pymethods]
impl StagedImport {
    #[getter]
    fn namespace(&self) -> Option<&str> {
        self.staged.as_ref().map(|s| s.header.namespace.as_str())
    }

    #[getter]
    fn key(&self) -> Option<&str> {
        self.staged.as_ref().map(|s| s.header.key.as_str())
    }

    fn commit(&mut self, py: Python<'_>) -> PyResult<()> {
        if let Some(staged) = self.staged.take() {
            let store = self.store.get();
            py.detach(|| store.inner.commit_import(staged))?;
        }
        Ok(())
    }

    fn discard(&mut self) {
        self.staged = None;
    }
}

/// A Python binary file object as a `Read`; its exception is kept to be raised as it came.
struct PyReader {
    source: Py<PyAny>,
    error: Option<PyErr>,
}

impl std::io::Read for PyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Python::attach(|py| {
            let read = self.source.bind(py).call_method1("read", (buf.len(),));
            match read.and_then(|data| data.cast_into::<PyBytes>().map_err(PyErr::from)) {
                Ok(data) => {
                    let data = data.as_bytes();
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    Ok(n)
                }
                Err(error) => {
                    let message = error.to_string();
                    self.error = Some(error);
                    Err(std::io::Error::other(message))
                }
            }
        })
    }
}

/// An iterable of Python buffers as a `Read`, copying straight from each buffer; the iterator's
/// exception is kept to be raised as it came.
struct PyChunks {
    chunks: Py<PyIterator>,
    current: Option<PyBuffer<u8>>,
    at: usize,
    error: Option<PyErr>,
}

impl std::io::Read for PyChunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(chunk) = &self.current {
                let left = chunk.len_bytes() - self.at;
                if left > 0 {
                    // SAFETY: the PyBuffer keeps the exporter's memory alive and in place until
                    // dropped; it was checked C-contiguous when taken.
                    let bytes = unsafe { std::slice::from_raw_parts(chunk.buf_ptr() as *const u8, chunk.len_bytes()) };
                    let n = left.min(buf.len());
                    buf[..n].copy_from_slice(&bytes[self.at..self.at + n]);
                    self.at += n;
                    return Ok(n);
                }
            }
            let next = Python::attach(|py| -> PyResult<Option<PyBuffer<u8>>> {
                self.current = None;
                let Some(chunk) = self.chunks.bind(py).clone().next().transpose()? else { return Ok(None) };
                let chunk = PyBuffer::<u8>::get(&chunk)?;
                if !chunk.is_c_contiguous() {
                    return Err(PyValueError::new_err("downloaded chunks must be C-contiguous"));
                }
                Ok(Some(chunk))
            });
            match next {
                Ok(None) => return Ok(0),
                Ok(chunk) => (self.current, self.at) = (chunk, 0),
                Err(error) => {
                    let message = error.to_string();
                    self.error = Some(error);
                    return Err(std::io::Error::other(message));
                }
            }
        }
    }
}

/// Fresh bytearrays for a value decoded as it downloads, kept here so the places handed out
/// stay alive; an allocation's exception is kept to be raised as it came.
struct PyOutputs<'o> {
    arrays: Vec<Py<PyByteArray>>,
    place: std::marker::PhantomData<&'o mut [u8]>,
}

impl<'o> store::Outputs<'o> for PyOutputs<'o> {
    fn place(&mut self, len: usize) -> crate::error::Result<&'o mut [u8]> {
        // Without huge pages: the download fills the page cache as it goes, and faulting huge
        // pages in meanwhile stalls in compaction (it cost more time and CPU than small pages).
        Python::attach(|py| match new_bytearray(py, len) {
            Ok((array, place)) => {
                self.arrays.push(array.unbind());
                // SAFETY: the bytearray is held in `arrays`, never resized, for as long as these
                // outputs live, which outlives the staging that fills it.
                Ok(unsafe { std::slice::from_raw_parts_mut(place.as_mut_ptr(), len) })
            }
            // The length comes from bytes whose MAC is not checked yet: one no memory can hold is
            // damage (a miss, the object replaced), not the caller's MemoryError.
            Err(_) => Err(crate::error::Error::CorruptEntry(format!("it claims a buffer of {len} bytes"))),
        })
    }
}

impl Store {
    fn loaded<'py>(&self, py: Python<'py>, found: Lookup) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(loaded) = self.loaded_status(py, found)? else { return Ok(None) };
        let stream = &loaded.bytes[loaded.opened.stream.clone()];
        let frames: Vec<&[u8]> = loaded.opened.frames.iter().map(|r| &loaded.bytes[r.clone()]).collect();
        let (stream_array, stream_target) = fresh_bytearray(py, stream.len())?;
        let buffers = PyList::empty(py);
        let mut targets = Vec::with_capacity(frames.len());
        for frame in &frames {
            let (array, target) = fresh_bytearray(py, codec::decoded_len(frame)?)?;
            targets.push(target);
            buffers.append(array)?;
        }
        py.detach(|| {
            stream_target.copy_from_slice(stream);
            frames.iter().zip(targets).try_for_each(|(frame, out)| codec::decode_into(frame, out))
        })?;
        let mac = PyBytes::new(py, &loaded.mac());
        let header = &loaded.opened.header;
        let found = (stream_array, buffers, mac, header.expires, header.compute_time);
        Ok(Some(found.into_pyobject(py)?.into_any()))
    }

    /// `loaded` for a large entry: its buffers are allocated first and decoded into in place,
    /// with the GIL released, so no copy of the file or of the value is ever held.
    fn loaded_large<'py>(&self, py: Python<'py>, large: store::LargeEntry) -> PyResult<Option<Bound<'py, PyAny>>> {
        let (stream_array, stream_target) = fresh_bytearray(py, large.stream_len())?;
        let buffers = PyList::empty(py);
        let mut targets = Vec::new();
        for len in large.buffer_lens() {
            let (array, target) = fresh_bytearray(py, len)?;
            targets.push(target);
            buffers.append(array)?;
        }
        match py.detach(|| self.inner.fill_streamed(large, stream_target, &mut targets))? {
            store::Filled::Hit { mac, header } => {
                let found = (stream_array, buffers, PyBytes::new(py, &mac), header.expires, header.compute_time);
                Ok(Some(found.into_pyobject(py)?.into_any()))
            }
            store::Filled::Gone(found) => self.loaded_status(py, found).map(|_| None),
        }
    }

    fn loaded_status(&self, py: Python<'_>, found: Lookup) -> PyResult<Option<Box<store::Loaded>>> {
        match found {
            Lookup::Hit(loaded) => Ok(Some(loaded)),
            Lookup::Miss => Ok(None),
            Lookup::Removed { path, reason } => {
                let logger = py.import("logging")?.call_method1("getLogger", ("afml_cache",))?;
                logger.call_method1(
                    "warning",
                    ("removed unreadable cache entry %s (%s); it counts as a miss", path.display().to_string(), reason),
                )?;
                Ok(None)
            }
        }
    }
}

/// A new bytearray of `len` bytes, not zero-filled (it is about to be overwritten whole), with
/// huge pages advised, and a slice to fill it through.
fn fresh_bytearray<'py>(py: Python<'py>, len: usize) -> PyResult<(Bound<'py, PyByteArray>, &'py mut [u8])> {
    let (array, data) = new_bytearray(py, len)?;
    crate::memory::advise_huge_pages(data.as_mut_ptr(), len);
    Ok((array, data))
}

/// A new bytearray of `len` bytes, not zero-filled (it is about to be overwritten whole), and a
/// slice to fill it through.
fn new_bytearray<'py>(py: Python<'py>, len: usize) -> PyResult<(Bound<'py, PyByteArray>, &'py mut [u8])> {
    // SAFETY: PyByteArray_FromStringAndSize(NULL, n) returns a new bytearray of n uninitialized
    // bytes (or NULL with an exception set); nothing reads them before the caller writes them all.
    unsafe {
        let raw = pyo3::ffi::PyByteArray_FromStringAndSize(std::ptr::null(), len as pyo3::ffi::Py_ssize_t);
        let array = Bound::from_owned_ptr_or_err(py, raw)?.cast_into_unchecked::<PyByteArray>();
        let data = pyo3::ffi::PyByteArray_AsString(array.as_ptr()) as *mut u8;
        // The bytearray is new, owned here and not resized while the slice is in use.
        Ok((array, std::slice::from_raw_parts_mut(data, len)))
    }
}
