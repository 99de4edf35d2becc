"""Fingerprint spec v3 (issue 15): bulk data (array elements, masks, Arrow values) is written as
the digests of fixed 1 MiB pieces, so large buffers hash on all threads and a buffer handed over
in parts (strided views, pandas blocks, Arrow chunks) hashes like the same bytes given whole.

The reference encodings here are written from docs/fingerprint.md with blake3-py, apart from the
Rust encoder, so a change to either shows."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import afml_cache

blake3 = pytest.importorskip("blake3")

PIECE = 1 << 20
CONTEXT = "afml-cache 2026-12-01 fingerprint spec v3"


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def text(s: str) -> bytes:
    return u64(len(s.encode())) + s.encode()


def pieces(data: bytes) -> bytes:
    return b"".join(blake3.blake3(data[i : i + PIECE]).digest() for i in range(0, len(data), PIECE))


def digest(encoding: bytes) -> str:
    return blake3.blake3(encoding, derive_key_context=CONTEXT).hexdigest()


def array_encoding(arr: np.ndarray) -> bytes:
    dims = b"".join(u64(n) for n in arr.shape)
    header = b"\x30\x00" + text(arr.dtype.str) + u64(arr.ndim) + dims
    return header + pieces(arr.tobytes(order="C"))


def test_the_spec_version_is_3():
    assert afml_cache.SPEC_VERSION == 3


@pytest.mark.parametrize(
    "n", [0, 1, PIECE // 8 - 1, PIECE // 8, PIECE // 8 + 1, 5 * PIECE // 8 + 3]
)
def test_an_array_is_its_header_then_the_digests_of_its_pieces(n: int):
    arr = np.arange(n, dtype=np.float64)
    assert afml_cache.fingerprint(arr) == digest(array_encoding(arr))


def test_small_writes_around_the_encoders_buffer_match_the_spec():
    # Tags and lengths are gathered in a buffer before they reach BLAKE3; values that straddle
    # its end, or exceed it, must encode exactly as written.
    value = ("a" * 1000, "b" * 30, b"x" * 5000, 7, -1.5)
    encoding = (
        b"\x10"
        + u64(5)
        + b"\x06"
        + text("a" * 1000)
        + b"\x06"
        + text("b" * 30)
        + b"\x07"
        + u64(5000)
        + b"x" * 5000
        + b"\x02"
        + struct.pack("<q", 7)
        + b"\x04"
        + struct.pack("<d", -1.5)
    )
    assert afml_cache.fingerprint(value) == digest(encoding)


def test_strided_views_hash_like_their_copies_across_piece_boundaries():
    # 3-byte elements: piece boundaries cut through elements, and gathered blocks end anywhere.
    raw = np.random.default_rng(0).bytes(3 * 1_500_000)
    base = np.frombuffer(raw, dtype="S3")
    views = [base[::2], base[::-3], base.reshape(1000, 1500).T, base.reshape(1500, 1000)[:, 1:999]]
    for view in views:
        copy = np.ascontiguousarray(view)
        assert afml_cache.fingerprint(view) == afml_cache.fingerprint(copy)
        assert afml_cache.fingerprint(copy) == digest(array_encoding(copy))


def test_a_frame_hashes_alike_in_any_block_layout_and_sees_its_last_cell():
    values = np.random.default_rng(1).standard_normal((300_000, 4))  # 3 pieces per column
    from_matrix = pd.DataFrame(values, columns=list("abcd"))  # one block, strided columns
    from_dict = pd.DataFrame({c: values[:, i].copy() for i, c in enumerate("abcd")})
    in_two_blocks = pd.concat([from_dict[["a", "b"]], from_dict[["c", "d"]] * 1.0], axis=1)
    digests = {afml_cache.fingerprint(f) for f in (from_matrix, from_dict, in_two_blocks)}
    assert len(digests) == 1
    changed = from_dict.copy()
    changed.iloc[-1, 3] = np.nextafter(changed.iloc[-1, 3], np.inf)
    assert afml_cache.fingerprint(changed) not in digests


def test_large_nullable_columns_hash_by_content_across_pieces():
    values = np.arange(700_000, dtype=np.int64)  # 5.6 MB of values, 0.7 MB of mask
    mask = values % 7 == 0
    garbage = values.copy()
    garbage[mask] = -12345  # what sits under the mask never counts
    a = pd.arrays.IntegerArray(values, mask)
    b = pd.arrays.IntegerArray(garbage, mask.copy())
    assert afml_cache.fingerprint(pd.Series(a)) == afml_cache.fingerprint(pd.Series(b))
    flipped = mask.copy()
    flipped[-1] = not flipped[-1]
    assert afml_cache.fingerprint(pd.Series(pd.arrays.IntegerArray(values, flipped))) != (
        afml_cache.fingerprint(pd.Series(a))
    )


SPLIT_VALUES = np.arange(330_000, dtype=np.int64)  # 2.6 MB: three pieces


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, len(SPLIT_VALUES)), max_size=6))
def test_a_column_split_into_any_arrow_chunks_hashes_like_the_whole(cuts: list[int]):
    pa = pytest.importorskip("pyarrow")
    bounds = [0, *sorted(cuts), len(SPLIT_VALUES)]
    chunks = [SPLIT_VALUES[a:b] for a, b in itertools.pairwise(bounds)]
    whole = afml_cache.fingerprint(pa.chunked_array([SPLIT_VALUES]))
    assert afml_cache.fingerprint(pa.chunked_array(chunks, type=pa.int64())) == whole


def test_arrow_chunks_split_anywhere_hash_alike():
    pa = pytest.importorskip("pyarrow")
    values = np.arange(400_000, dtype=np.int64)  # 3.2 MB: chunks end inside pieces
    whole = pa.chunked_array([values])
    split = pa.chunked_array([values[:123_457], values[123_457:300_001], values[300_001:]])
    assert afml_cache.fingerprint(whole) == afml_cache.fingerprint(split)
    strings = pa.array([f"s{i}" for i in range(300_000)])
    halves = pa.chunked_array([strings.slice(0, 150_001), strings.slice(150_001)])
    assert afml_cache.fingerprint(pa.chunked_array([strings])) == afml_cache.fingerprint(halves)


def test_cached_results_follow_a_change_in_a_large_frames_last_piece(cache_dir: Path) -> None:
    # The key rule end to end: the changed frame gets its own result, equal to the uncached one.
    calls: list[int] = []

    @afml_cache.robust_cacheable
    def total(frame: pd.DataFrame) -> float:
        calls.append(1)
        return float(frame.to_numpy().sum())

    frame = pd.DataFrame({"x": np.arange(300_000, dtype=np.float64)})
    changed = frame.copy()
    changed.iloc[-1, 0] += 1.0
    assert total(frame) == float(frame.to_numpy().sum())
    assert total(frame) == float(frame.to_numpy().sum())
    assert total(changed) == float(changed.to_numpy().sum())
    assert len(calls) == 2
