//! Walks a Python value and feeds its canonical encoding to an [`Encoder`].
//!
//! Builtin values and numpy arrays are read directly here: they sit on every cache lookup and
//! must cost microseconds. Everything else goes through the Python shim's rules
//! (`afml_cache.fingerprinting._canonicalize`), which name a value's kind and decompose it into
//! values this walker knows (pandas frames into column arrays, dataclasses into fields, …).

use std::collections::HashSet;

use arrow_array::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::ffi_stream::{ArrayStreamReader, FFI_ArrowArrayStream};
use arrow_array::ArrayReader;
use arrow_data::ArrayData;
use arrow_schema::Field;
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyCapsule, PyCapsuleMethods, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList,
    PySet, PySlice, PyString, PyTuple, PyType,
};

use super::error::{fingerprint_error, is_fingerprint_error};
use crate::fingerprint::array::{write_elements, write_masked, StridedBytes};
use crate::fingerprint::arrow::{write_arrow, write_arrow_field};
use crate::fingerprint::pieces::Pieces;
use crate::fingerprint::{Encoder, Tag, PARALLEL_THRESHOLD};

/// What a rule of the shim returns first: how to read the canonical form that follows.
/// Kept in step with `afml_cache/fingerprinting.py`.
mod kind {
    pub const VALUE: u8 = 0;
    pub const ARROW_STREAM: u8 = 1;
    pub const ARROW_ARRAY: u8 = 2;
    pub const MASKED: u8 = 3;
    pub const UNSUPPORTED: u8 = 4;
    pub const ARROW_SCHEMA: u8 = 5;
}

/// Stack kept free before recursing, and how much to add when less is left: a list nested
/// 100,000 deep is legal Python and must not overflow the thread's stack.
const RED_ZONE: usize = 128 * 1024;
const STACK_GROWTH: usize = 4 * 1024 * 1024;
/// Whether the caller runs on the main thread's own stack with more than [`RED_ZONE`] left,
/// where `stacker` is not needed. It would find out the same, but finding the main thread's stack
/// takes glibc a scan of /proc/self/maps, a kilobyte per read (milliseconds with numpy and pandas
/// loaded), which the first fingerprint of every process would pay. Other threads, and stacks
/// `stacker` made, go through `stacker`, which finds theirs cheaply.
#[cfg(target_os = "linux")]
fn on_main_stack_with_room() -> bool {
    let Some((top, usable)) = main_stack() else { return false };
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    sp <= top && top - sp + RED_ZONE <= usable
}

#[cfg(not(target_os = "linux"))]
fn on_main_stack_with_room() -> bool {
    false
}

/// The most of the main thread's stack counted on: Linux puts mappings (other threads' stacks
/// among them) at least 128 MiB below the stack, a gap set from RLIMIT_STACK at exec, which a
/// limit raised later does not widen.
#[cfg(target_os = "linux")]
const MAIN_STACK_CAP: usize = 64 * 1024 * 1024;

/// The main thread's stack: where it starts (`startstack` in /proc/self/stat) and the bytes below
/// that it may use, read once. Half of RLIMIT_STACK (the arguments and environment, above
/// `startstack`, take at most a quarter of it: the kernel's limit), at most [`MAIN_STACK_CAP`].
/// None if either is unknown or the limit is infinite; then `stacker` decides everywhere.
#[cfg(target_os = "linux")]
fn main_stack() -> Option<(usize, usize)> {
    static MAIN: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *MAIN.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) start at field 3; startstack is 28.
        let top: usize = stat.rsplit_once(')')?.1.split_whitespace().nth(25)?.parse().ok()?;
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes only the struct it is given.
        if top == 0 || unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        Some((top, (usize::try_from(limit.rlim_cur).ok()? / 2).min(MAIN_STACK_CAP)))
    })
}

/// Deeper values are refused: nothing real nests this deep, and it bounds the memory a runaway
/// rule (a `__cache_key__` returning a new object of its own type) can take.
const MAX_DEPTH: usize = 200_000;
/// Bytes of a large non-contiguous array copied to C order at a time.
const COPY_BLOCK: usize = 8 * 1024 * 1024;

/// Where the walker is inside the argument, for error messages only.
enum Step<'py> {
    Index(usize),
    Key(Bound<'py, PyAny>),
    Member,
    Rule(String),
}

pub struct Walker<'py> {
    py: Python<'py>,
    strict: bool,
    path: Vec<Step<'py>>,
    /// Addresses of the mutable containers and rule-described objects on the current path: seeing
    /// one again means the value contains itself.
    open: HashSet<usize>,
    /// Arrays whose buffers the encoder hashes later ([`Encoder::defer_pieces`]): they stay
    /// alive as long as the walker, which must outlive the encoder's settling.
    deferred: Vec<Bound<'py, PyAny>>,
    /// The `codehash.reading_classes` block opened at the first rule or class met: within one
    /// fingerprint, each user class's code and values are read once (a list of a class's
    /// registered instances would read the registry once per instance).
    classes: Option<Bound<'py, PyAny>>,
}

impl<'py> Walker<'py> {
    pub fn new(py: Python<'py>, strict: bool) -> Self {
        Self { py, strict, path: Vec::new(), open: HashSet::new(), deferred: Vec::new(), classes: None }
    }

    /// The digest of `obj`: walks it, then hashes the deferred buffers with the GIL released.
    pub fn hex(mut self, obj: &Bound<'py, PyAny>) -> PyResult<String> {
        let mut enc = Encoder::new();
        // Any other exception from a value's own code is a value without a fingerprint too.
        let walked = self.walk(obj, &mut enc).map_err(|e| self.raised(obj, e));
        if let Some(block) = self.classes.take() {
            let none = self.py.None();
            block.call_method1(intern!(self.py, "__exit__"), (&none, &none, &none))?;
        }
        walked?;
        Ok(self.py.detach(|| enc.hex()))
    }

    /// Opens the class memo (see [`Walker::classes`]) once per fingerprint, at the first value
    /// that may read a class's code: builtin values and arrays never pay for it.
    fn read_classes_once(&mut self) -> PyResult<()> {
        static READING_CLASSES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        if self.classes.is_none() {
            let block = READING_CLASSES.import(self.py, "afml_cache.codehash", "reading_classes")?.call0()?;
            block.call_method0(intern!(self.py, "__enter__"))?;
            self.classes = Some(block);
        }
        Ok(())
    }

    pub fn walk(&mut self, obj: &Bound<'py, PyAny>, enc: &mut Encoder) -> PyResult<()> {
        if on_main_stack_with_room() {
            self.walk_here(obj, enc)
        } else {
            stacker::maybe_grow(RED_ZONE, STACK_GROWTH, || self.walk_here(obj, enc))
        }
    }

    fn walk_here(&mut self, obj: &Bound<'py, PyAny>, enc: &mut Encoder) -> PyResult<()> {
        if obj.is_none() {
            enc.tag(Tag::None);
        } else if let Ok(b) = obj.cast_exact::<PyBool>() {
            enc.tag(Tag::Bool);
            enc.u8(u8::from(b.is_true()));
        } else if let Ok(i) = obj.cast_exact::<PyInt>() {
            self.int(i, enc)?;
        } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
            enc.tag(Tag::Float);
            enc.f64(f.value());
        } else if let Ok(s) = obj.cast_exact::<PyString>() {
            self.str(s, enc)?;
        } else if let Ok(t) = obj.cast_exact::<PyTuple>() {
            enc.tag(Tag::Tuple);
            enc.len(t.len());
            for (i, item) in t.iter().enumerate() {
                self.within(Step::Index(i), |w| w.walk(&item, enc))?;
            }
        } else if let Ok(l) = obj.cast_exact::<PyList>() {
            self.open(obj, |w| {
                enc.tag(Tag::List);
                enc.len(l.len());
                for (i, item) in l.iter().enumerate() {
                    w.within(Step::Index(i), |w| w.walk(&item, enc))?;
                }
                Ok(())
            })?;
        } else if let Ok(d) = obj.cast_exact::<PyDict>() {
            self.open(obj, |w| {
                enc.tag(Tag::Dict);
                enc.len(d.len());
                for (k, v) in d.iter() {
                    w.walk(&k, enc)?;
                    w.within(Step::Key(k), |w| w.walk(&v, enc))?;
                }
                Ok(())
            })?;
        } else if let Ok(b) = obj.cast_exact::<PyBytes>() {
            enc.tag(Tag::Bytes);
            enc.bytes(b.as_bytes());
        } else if let Ok(b) = obj.cast_exact::<PyByteArray>() {
            enc.tag(Tag::ByteArray);
            enc.bytes(&b.to_vec());
        } else if let Ok(s) = obj.cast_exact::<PySet>() {
            let members = self.members(s.iter())?;
            enc.unordered(Tag::Set, members);
        } else if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
            let members = self.members(s.iter())?;
            enc.unordered(Tag::FrozenSet, members);
        } else if let Ok(c) = obj.cast_exact::<PyComplex>() {
            enc.tag(Tag::Complex);
            enc.f64(c.real());
            enc.f64(c.imag());
        } else if unsafe { numpy::npyffi::PyArray_CheckExact(self.py, obj.as_ptr()) } != 0 {
            // SAFETY: the check above guarantees the object is an exact numpy ndarray.
            self.ndarray(unsafe { obj.cast_unchecked::<PyUntypedArray>() }, enc).map_err(|e| self.raised(obj, e))?;
        } else if let Ok(t) = obj.cast::<PyType>() {
            self.class(t, enc)?;
        } else {
            self.by_rule(obj, enc)?;
        }
        Ok(())
    }

    /// A class by its module and qualified name; a class of the user's own code also by its code
    /// (`codehash.type_code`), wherever it sits in the value (`{"sma": SmaCross}`, a library
    /// object holding it): an edited method must not find the old method's results.
    fn class(&mut self, t: &Bound<'py, PyType>, enc: &mut Encoder) -> PyResult<()> {
        static TYPE_CODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let (module, qualname) = (t.module()?, t.qualname()?);
        let (module, qualname) = (module.to_cow()?, qualname.to_cow()?);
        let code = if module == "builtins" {
            None
        } else {
            self.read_classes_once()?;
            let type_code = TYPE_CODE.import(self.py, "afml_cache.codehash", "type_code")?;
            type_code.call1((t,))?.extract::<Option<String>>()?
        };
        let Some(code) = code else {
            enc.tag(Tag::Type);
            enc.str(&module);
            enc.str(&qualname);
            return Ok(());
        };
        enc.tag(Tag::Canonical);
        enc.str("class");
        enc.tag(Tag::Tuple);
        enc.len(3);
        for part in [module.as_ref(), qualname.as_ref(), code.as_str()] {
            enc.tag(Tag::Str);
            enc.str(part);
        }
        Ok(())
    }

    /// Ints that fit in 64 bits are written as such; larger ones as their two's-complement
    /// little-endian bytes. Which form a value takes depends on the value alone.
    fn int(&mut self, i: &Bound<'py, PyInt>, enc: &mut Encoder) -> PyResult<()> {
        if let Ok(v) = i.extract::<i64>() {
            enc.tag(Tag::Int);
            enc.i64(v);
            return Ok(());
        }
        let bits: usize = i.call_method0(intern!(self.py, "bit_length"))?.extract()?;
        let kwargs = PyDict::new(self.py);
        kwargs.set_item(intern!(self.py, "signed"), true)?;
        let bytes =
            i.call_method(intern!(self.py, "to_bytes"), (bits / 8 + 1, intern!(self.py, "little")), Some(&kwargs))?;
        enc.tag(Tag::BigInt);
        enc.bytes(bytes.cast::<PyBytes>()?.as_bytes());
        Ok(())
    }

    fn str(&mut self, s: &Bound<'py, PyString>, enc: &mut Encoder) -> PyResult<()> {
        enc.tag(Tag::Str);
        match s.to_str() {
            Ok(text) => enc.str(text),
            Err(_) => {
                // Lone surrogates are legal in Python strings but not in UTF-8.
                let raw = s.call_method1(intern!(self.py, "encode"), ("utf-8", "surrogatepass"))?;
                enc.bytes(raw.cast::<PyBytes>()?.as_bytes());
            }
        }
        Ok(())
    }

    fn members(&mut self, items: impl Iterator<Item = Bound<'py, PyAny>>) -> PyResult<Vec<[u8; 32]>> {
        items
            .map(|item| {
                let mut member = Encoder::member();
                self.within(Step::Member, |w| w.walk(&item, &mut member))?;
                Ok(self.py.detach(|| member.digest()))
            })
            .collect()
    }

    fn ndarray(&mut self, arr: &Bound<'py, PyUntypedArray>, enc: &mut Encoder) -> PyResult<()> {
        let py = self.py;
        let dtype = arr.dtype();
        if dtype.is_native_byteorder() == Some(false) {
            // A byte-swapped array equals its native copy; structured and complex dtypes swap
            // per field, which numpy knows how to do.
            let native_dtype = dtype.call_method1(intern!(py, "newbyteorder"), ("=",))?;
            let native = arr.call_method1(intern!(py, "astype"), (native_dtype,))?;
            return self.ndarray(native.cast::<PyUntypedArray>()?, enc);
        }
        // Only these kinds store their values inline; others (objects, numpy 2 strings) store
        // pointers, whose bytes must never reach a key.
        let inline = matches!(dtype.kind(), b'b' | b'i' | b'u' | b'f' | b'c' | b'm' | b'M' | b'S' | b'U' | b'V')
            && !dtype.has_object();
        enc.tag(if inline { Tag::NdArray } else { Tag::NdArrayObjects });
        // What a dtype carries besides its layout (h5py's {'vlen': str}, align=True) counts
        // where it is there; a plain dtype's arrays keep their digests.
        let metadata = dtype.getattr(intern!(py, "metadata"))?;
        let aligned = dtype.getattr(intern!(py, "isalignedstruct"))?.is_truthy()?;
        if !metadata.is_none() || aligned {
            enc.u8(3);
            let metadata = if metadata.is_none() { metadata } else { py.get_type::<PyDict>().call1((metadata,))? };
            self.walk(&PyTuple::new(py, [metadata, PyBool::new(py, aligned).to_owned().into_any()])?.into_any(), enc)?;
        }
        if dtype.has_fields() {
            // np.record elements read their fields as attributes (`a[0].price`), void's do not.
            static VOID: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            let void = VOID.import(py, "numpy", "void")?;
            enc.u8(if dtype.getattr(intern!(py, "type"))?.is(void) { 1 } else { 2 });
            self.walk(&dtype.getattr(intern!(py, "descr"))?, enc)?;
        } else {
            enc.u8(0);
            enc.str(&dtype.getattr(intern!(py, "str"))?.cast::<PyString>()?.to_cow()?);
        }
        let shape = arr.shape();
        enc.len(shape.len());
        for &n in shape {
            enc.len(n);
        }
        if !inline {
            // An object array can hold itself, like a list.
            return self.open(arr.as_any(), |w| {
                let flat = arr.call_method0(intern!(py, "ravel"))?.call_method0(intern!(py, "tolist"))?;
                for (i, item) in flat.try_iter()?.enumerate() {
                    w.within(Step::Index(i), |w| w.walk(&item?, enc))?;
                }
                Ok(())
            });
        }
        let itemsize = dtype.itemsize();
        let count: usize = shape.iter().product();
        if count == 0 || itemsize == 0 {
            return Ok(());
        }
        if !arr.is_c_contiguous() && count * itemsize >= PARALLEL_THRESHOLD {
            return self.noncontiguous_in_blocks(arr, enc);
        }
        let strides = arr.strides();
        // The span of memory the elements occupy, from the lowest to the highest address.
        let (mut low, mut high) = (0isize, 0isize);
        for (&n, &s) in shape.iter().zip(strides) {
            let reach = (n as isize - 1) * s;
            if reach < 0 {
                low += reach
            } else {
                high += reach
            }
        }
        // SAFETY: numpy guarantees every element lies in [data + low, data + high + itemsize),
        // and `arr` stays alive (and referenced) for the whole call.
        let bytes = unsafe {
            let data = data_pointer(arr);
            std::slice::from_raw_parts(data.offset(low), (high - low) as usize + itemsize)
        };
        let view = StridedBytes { bytes, start: (-low) as usize, itemsize, shape, strides };
        if count * itemsize >= PARALLEL_THRESHOLD && arr.is_c_contiguous() {
            self.deferred.push(arr.as_any().clone());
            // SAFETY: `deferred` keeps the array, and so its buffer, alive until the walker is
            // dropped, after the encoder settles (`hex`, `members`).
            unsafe { enc.defer_pieces(&bytes[view.start..view.start + count * itemsize]) };
        } else if count * itemsize >= PARALLEL_THRESHOLD {
            py.detach(|| write_elements(enc, view));
        } else {
            write_elements(enc, view);
        }
        Ok(())
    }

    /// A large non-contiguous array (Fortran order, a strided view): numpy copies a block of
    /// rows at a time into C order (its strided copy is several times faster than an element
    /// gather), and each block is written as the next part of the pieces, so the digest is the
    /// C-order copy's while memory stays bounded by one block.
    fn noncontiguous_in_blocks(&mut self, arr: &Bound<'py, PyUntypedArray>, enc: &mut Encoder) -> PyResult<()> {
        static ASCONTIGUOUSARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let ascontiguousarray = ASCONTIGUOUSARRAY.import(self.py, "numpy", "ascontiguousarray")?;
        let row_bytes = arr.shape()[1..].iter().product::<usize>() * arr.dtype().itemsize();
        let rows_per_block = (COPY_BLOCK / row_bytes.max(1)).max(1);
        let rows = arr.shape()[0];
        let mut pieces = Pieces::new();
        for start in (0..rows).step_by(rows_per_block) {
            let stop = (start + rows_per_block).min(rows);
            let rows_slice = PySlice::new(self.py, start as isize, stop as isize, 1);
            let block = ascontiguousarray.call1((arr.get_item(rows_slice)?,))?;
            let block = block.cast::<PyUntypedArray>()?;
            // SAFETY: `block` is a fresh C-contiguous copy of `shape()[0]` rows, referenced until the
            // end of this iteration.
            let bytes = unsafe { std::slice::from_raw_parts(data_pointer(block), block.shape()[0] * row_bytes) };
            self.py.detach(|| pieces.write(enc, bytes));
        }
        pieces.finish(enc);
        Ok(())
    }

    fn by_rule(&mut self, obj: &Bound<'py, PyAny>, enc: &mut Encoder) -> PyResult<()> {
        static CANONICALIZE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        self.read_classes_once()?;
        let canonicalize = CANONICALIZE.import(self.py, "afml_cache.fingerprinting", "_canonicalize")?;
        let answer = canonicalize.call1((obj, self.strict)).map_err(|e| self.raised(obj, e))?;
        let (kind, rule, payload): (u8, String, Bound<'py, PyAny>) = answer.extract()?;
        if kind == kind::UNSUPPORTED {
            return Err(self.fail(&payload.str()?.to_cow()?));
        }
        enc.tag(Tag::Canonical);
        enc.str(&rule);
        self.open(obj, |w| {
            w.within(Step::Rule(rule), |w| match kind {
                kind::VALUE => w.walk(&payload, enc),
                kind::ARROW_STREAM => w.arrow_stream(&payload, enc),
                kind::ARROW_ARRAY => w.arrow_array(&payload, enc),
                kind::MASKED => w.masked(&payload, enc),
                kind::ARROW_SCHEMA => w.arrow_schema(&payload, enc),
                other => Err(w.fail(&format!("internal error: unknown rule kind {other}"))),
            })
        })
    }

    /// Reads an object exporting `__arrow_c_stream__` (tables, chunked arrays, polars frames).
    fn arrow_stream(&mut self, obj: &Bound<'py, PyAny>, enc: &mut Encoder) -> PyResult<()> {
        let capsule = obj.call_method0(intern!(self.py, "__arrow_c_stream__")).map_err(|e| self.raised(obj, e))?;
        let pointer = capsule.cast::<PyCapsule>()?.pointer_checked(Some(c"arrow_array_stream"))?;
        // SAFETY: the capsule holds an ArrowArrayStream per the Arrow PyCapsule protocol; from_raw
        // moves it out and leaves a released stream behind for the capsule's destructor.
        let stream = unsafe { FFI_ArrowArrayStream::from_raw(pointer.as_ptr().cast()) };
        let reader = ArrayStreamReader::try_new(stream).map_err(|e| self.fail(&e.to_string()))?;
        let field = reader.field().clone();
        let chunks = reader
            .map(|chunk| chunk.map(|a| a.to_data()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(&e.to_string()))?;
        self.hash_arrow(&field, &chunks, enc)
    }

    /// Reads an object exporting only `__arrow_c_array__` (one array or record batch).
    fn arrow_array(&mut self, obj: &Bound<'py, PyAny>, enc: &mut Encoder) -> PyResult<()> {
        let capsules = obj.call_method0(intern!(self.py, "__arrow_c_array__")).map_err(|e| self.raised(obj, e))?;
        let (schema, array): (Bound<'py, PyCapsule>, Bound<'py, PyCapsule>) = capsules.extract()?;
        let schema_ptr = schema.pointer_checked(Some(c"arrow_schema"))?;
        let array_ptr = array.pointer_checked(Some(c"arrow_array"))?;
        // SAFETY: per the protocol the capsules hold an ArrowSchema and an ArrowArray. The schema
        // stays owned by its capsule; the array is moved out, leaving a released one behind.
        let (field, data) = unsafe {
            let schema = &*(schema_ptr.as_ptr() as *const FFI_ArrowSchema);
            let array = FFI_ArrowArray::from_raw(array_ptr.as_ptr().cast());
            let field = Field::try_from(schema).map_err(|e| self.fail(&e.to_string()))?;
            (field, from_ffi(array, schema).map_err(|e| self.fail(&e.to_string()))?)
        };
        self.hash_arrow(&field, &[data], enc)
    }

    /// Reads an object exporting `__arrow_c_schema__` (a field, schema or type without data).
    fn arrow_schema(&mut self, obj: &Bound<'py, PyAny>, enc: &mut Encoder) -> PyResult<()> {
        let capsule = obj.call_method0(intern!(self.py, "__arrow_c_schema__"))?;
        let pointer = capsule.cast::<PyCapsule>()?.pointer_checked(Some(c"arrow_schema"))?;
        // SAFETY: per the protocol the capsule holds an ArrowSchema, which stays owned by it.
        let schema = unsafe { &*(pointer.as_ptr() as *const FFI_ArrowSchema) };
        let field = Field::try_from(schema).map_err(|e| self.fail(&e.to_string()))?;
        write_arrow_field(enc, &field).map_err(|e| self.fail(&e.to_string()))
    }

    fn hash_arrow(&mut self, field: &Field, chunks: &[ArrayData], enc: &mut Encoder) -> PyResult<()> {
        self.py.detach(|| write_arrow(enc, field, chunks)).map_err(|e| self.fail(&e.to_string()))
    }

    /// `(values, mask)`: two 1-d contiguous arrays of equal length, mask of dtype bool.
    fn masked(&mut self, payload: &Bound<'py, PyAny>, enc: &mut Encoder) -> PyResult<()> {
        let (values, mask): (Bound<'py, PyUntypedArray>, Bound<'py, PyUntypedArray>) = payload.extract()?;
        let (n, itemsize) = (values.len(), values.dtype().itemsize());
        let well_formed = values.ndim() == 1
            && values.is_c_contiguous()
            && mask.ndim() == 1
            && mask.is_c_contiguous()
            && mask.len() == n
            && mask.dtype().kind() == b'b'
            && values.dtype().is_native_byteorder() != Some(false)
            && !values.dtype().has_object();
        if !well_formed {
            return Err(self.fail("internal error: a masked rule returned arrays of the wrong form"));
        }
        enc.tag(Tag::Masked);
        enc.str(&values.dtype().getattr(intern!(self.py, "str"))?.cast::<PyString>()?.to_cow()?);
        enc.len(n);
        // SAFETY: both arrays are C-contiguous with `n` elements and stay referenced here.
        let (data, flags) = unsafe {
            (
                std::slice::from_raw_parts(data_pointer(&values), n * itemsize),
                std::slice::from_raw_parts(data_pointer(&mask), n),
            )
        };
        if n * itemsize >= PARALLEL_THRESHOLD {
            self.py.detach(|| write_masked(enc, data, itemsize, flags));
        } else {
            write_masked(enc, data, itemsize, flags);
        }
        Ok(())
    }

    fn within<T>(&mut self, step: Step<'py>, f: impl FnOnce(&mut Self) -> PyResult<T>) -> PyResult<T> {
        if self.path.len() >= MAX_DEPTH {
            return Err(self.fail(&format!(
                "the value is nested more than {MAX_DEPTH} levels deep (or a __cache_key__ or \
                 registered function keeps returning new objects of its own kind); flatten it"
            )));
        }
        self.path.push(step);
        let result = f(self);
        self.path.pop();
        result
    }

    /// Runs `f` with `obj` marked as open; meeting it again inside means a cycle.
    fn open<T>(&mut self, obj: &Bound<'py, PyAny>, f: impl FnOnce(&mut Self) -> PyResult<T>) -> PyResult<T> {
        let address = obj.as_ptr() as usize;
        if !self.open.insert(address) {
            let type_name = obj.get_type().qualname().map(|q| q.to_string()).unwrap_or_default();
            return Err(self.fail(&format!(
                "this {type_name} contains itself (a reference cycle), so it has no finite fingerprint; \
                 pass a value without the cycle or give its type a __cache_key__()"
            )));
        }
        let result = f(self);
        self.open.remove(&address);
        result
    }

    /// The `FingerprintError` for an exception the value's own code raised (a rule, an Arrow
    /// export of mixed objects), caused by it: the call then runs uncached, with a warning.
    fn raised(&self, obj: &Bound<'py, PyAny>, err: PyErr) -> PyErr {
        if !err.is_instance_of::<PyException>(self.py) || is_fingerprint_error(self.py, &err) {
            return err;
        }
        let type_name = obj.get_type().qualname().map(|q| q.to_string()).unwrap_or_default();
        let failure = self.fail(&format!("computing the fingerprint of a {type_name} raised {err}"));
        failure.set_cause(self.py, Some(err));
        failure
    }

    /// A `FingerprintError` whose message ends with where the walker is, e.g. `obj[1]['params'][3]`.
    fn fail(&self, message: &str) -> PyErr {
        let mut at = String::from("obj");
        for step in &self.path {
            match step {
                Step::Index(i) => at.push_str(&format!("[{i}]")),
                Step::Key(k) => {
                    at.push_str(&format!("[{}]", k.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into())))
                }
                Step::Member => at.push_str("{…}"),
                Step::Rule(rule) => at.push_str(&format!("<{rule}>")),
            }
        }
        fingerprint_error(self.py, format!("{message} (at {at})"))
    }
}

/// The address of an array's first element.
fn data_pointer(arr: &Bound<'_, PyUntypedArray>) -> *const u8 {
    // SAFETY: `as_array_ptr` points at the live PyArrayObject behind `arr`.
    unsafe { (*arr.as_array_ptr()).fields.data as *const u8 }
}
