"""Values to bytes and back: pickle protocol 5 with the large buffers (numpy arrays, DataFrame
columns, Arrow buffers) kept out of band, so the Rust store compresses them in parallel and
restores them into fresh writable buffers."""

from __future__ import annotations

import copyreg
import io
import pickle
import struct
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

# Buffers smaller than this stay inside the pickle stream: framing and compressing them separately
# costs more than it saves.
_IN_BAND_LIMIT = 64 * 1024
# Starts a stored stream whose buffers repeat (see serialize).
_REPEATS_MAGIC = b"AFMLREP1"
# Numbers cannot change in place: the memory tier may hand one object to every hit (strings
# and bytes would be held twice, unaccounted).
IMMUTABLE = frozenset({int, float, complex, bool, type(None)})


def copy_buffer(buffer: Any) -> np.ndarray:
    """A private, writable copy of a buffer. numpy allocates large arrays on huge pages, which
    here makes copying 40 MB take a fifth of the time a bytes copy does (page faults dominate)."""
    return np.frombuffer(buffer, dtype=np.uint8).copy()


class SpareCopies:
    """Memory for the copies a value written behind is written from, given back once it is
    written, for the next value's: a fresh copy lands in memory the allocator has just handed
    back to the kernel, which this VM's host faults in again (copying 8 MB took 1-14 ms there,
    0.3 ms into memory used before). Bounded in bytes; never blocks (a lock held at a fork
    would stay held in the child)."""

    def __init__(self, limit: int) -> None:
        self._spare: list[np.ndarray] = []
        self._limit = limit
        self._lock = threading.Lock()

    def copy(self, buffer: Any) -> np.ndarray:
        """A private copy of ``buffer``: a view into spare memory of at most twice its size, or
        a new array."""
        source = np.frombuffer(buffer, dtype=np.uint8)
        spare = None
        if self._lock.acquire(blocking=False):
            try:
                n = len(source)
                fits = [i for i, a in enumerate(self._spare) if n <= len(a) <= 2 * n]
                if fits:
                    spare = self._spare.pop(min(fits, key=lambda i: len(self._spare[i])))
            finally:
                self._lock.release()
        if spare is None:
            return source.copy()
        view = spare[: len(source)]
        np.copyto(view, source)
        return view

    def give_back(self, copies: list[np.ndarray]) -> None:
        """Keeps the memory of ``copies`` (made by ``copy``; the list is emptied) for later
        ones, each only if nothing else holds it: a lookup copying from it meanwhile, a hit
        that was handed it."""
        while copies:
            memory = copies.pop()
            if sys.getrefcount(memory) > 2:  # `memory` and the argument: held elsewhere too
                continue
            if memory.base is not None:  # a view into spare memory: the spare array itself
                memory = memory.base  # (the view, held by nothing else, is gone)
                if sys.getrefcount(memory) > 2:
                    continue
            if not (type(memory) is np.ndarray and memory.base is None and memory.flags.owndata):
                continue
            if not self._lock.acquire(blocking=False):
                continue
            try:
                if sum(len(a) for a in self._spare) + len(memory) <= self._limit:
                    self._spare.append(memory)
            finally:
                self._lock.release()


def serialize(value: Any) -> tuple[bytes, list[tuple[memoryview, int]]]:
    """The pickle stream and the large out-of-band buffers (bytes, item size) of ``value``.

    A buffer the value holds twice (pandas keeps a Series' index in two objects over one array)
    is stored once: the stream then starts with the order in which ``deserialize`` hands the
    stored buffers back to pickle.
    """
    buffers: list[tuple[memoryview, int]] = []
    order: list[int] = []
    seen: dict[tuple[int, int], int] = {}

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: leave it in the stream
            return True
        if raw.nbytes < _IN_BAND_LIMIT:
            return True
        where = (np.frombuffer(raw, dtype=np.uint8).ctypes.data, raw.nbytes)
        if where not in seen:
            seen[where] = len(buffers)
            buffers.append((raw, memoryview(buffer).itemsize))
        order.append(seen[where])
        return False

    stream = io.BytesIO()
    pickler = pickle.Pickler(stream, protocol=5, buffer_callback=out_of_band)
    pickler.dispatch_table = _DISPATCH  # type: ignore[assignment]  # typeshed: Mapping
    pickler.dump(value)
    if len(order) == len(buffers):
        return stream.getvalue(), buffers
    header = _REPEATS_MAGIC + struct.pack(f"<I{len(order)}I", len(order), *order)
    return header + stream.getvalue(), buffers


def deserialize(stream: bytes, buffers: Sequence[Any]) -> Any:
    """The value ``serialize`` gave ``stream`` and ``buffers`` for."""
    if not stream.startswith(_REPEATS_MAGIC):  # a pickle stream starts with b"\x80"
        return pickle.loads(stream, buffers=buffers)
    start = len(_REPEATS_MAGIC)
    (count,) = struct.unpack_from("<I", stream, start)
    order = struct.unpack_from(f"<{count}I", stream, start + 4)
    body = memoryview(stream)[start + 4 + 4 * count :]
    return pickle.loads(body, buffers=[buffers[i] for i in order])


def _reduce_ndarray(array: np.ndarray) -> Any:
    # numpy pickles datetime64 and timedelta64 arrays in-band, which copies every DatetimeIndex
    # into the stream; their int64 view goes out of band like any other array.
    contiguous = array.flags.c_contiguous or array.flags.f_contiguous
    if array.dtype.kind in "mM" and array.dtype.isnative and contiguous:
        return _datetime_array, (array.view(np.int64), array.dtype.str)
    return array.__reduce_ex__(5)


def _datetime_array(ints: np.ndarray, dtype: str) -> np.ndarray:
    return ints.view(dtype)


# Only exact ndarrays: subclasses (np.matrix, masked arrays) keep their own reductions.
_DISPATCH = {**copyreg.dispatch_table, np.ndarray: _reduce_ndarray}
