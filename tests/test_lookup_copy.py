"""``Entries.lookup(digest, copy=False)``: the memory tier's buffers without a copy, for callers
that only read a value into a fresh one (range loaders, incremental features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from afml_cache import Cache

DIGEST = "ab" * 32


def _columns(frame: pd.DataFrame) -> list[np.ndarray]:
    return [frame[c].to_numpy() for c in frame.columns]


@pytest.mark.parametrize("first_read", ["disk", "memory"])
def test_lookups_without_copy_share_one_object_over_the_memory_tier_and_others_get_copies(
    tmp_path: Path, first_read: str
) -> None:
    entries = Cache(tmp_path / "cache").by_digest
    frame = pd.DataFrame({"close": np.arange(50_000.0), "volume": np.arange(50_000)})
    entries.put(DIGEST, frame)
    entries.memory.clear()
    if first_read == "memory":
        entries.lookup(DIGEST)  # remembered from disk, as a private copy
    found, shared, _ = entries.lookup(DIGEST, copy=False)
    assert found
    pd.testing.assert_frame_equal(shared, frame)
    found, again, _ = entries.lookup(DIGEST, copy=False)
    pd.testing.assert_frame_equal(again, frame)
    assert all(
        np.shares_memory(a, b) for a, b in zip(_columns(shared), _columns(again), strict=True)
    )
    # Remembered, it is one object for every lookup without copy (none unpickles it again).
    assert entries.lookup(DIGEST, copy=False)[1] is again
    found, private, _ = entries.lookup(DIGEST)
    pd.testing.assert_frame_equal(private, frame)
    assert not any(
        np.shares_memory(a, b) for a, b in zip(_columns(shared), _columns(private), strict=True)
    )
    private.iloc[0, 0] = -1.0
    pd.testing.assert_frame_equal(entries.lookup(DIGEST)[1], frame)


def test_a_lookup_without_copy_of_a_missing_entry_is_a_miss(tmp_path: Path) -> None:
    assert Cache(tmp_path / "cache").by_digest.lookup(DIGEST, copy=False) == (False, None, 0.0)


def test_a_value_holding_objects_is_unpickled_afresh_for_each_lookup_without_copy(
    tmp_path: Path,
) -> None:
    # A list in a cell could be changed in place by whoever gets a copy of the frame.
    entries = Cache(tmp_path / "cache").by_digest
    frame = pd.DataFrame({"close": np.arange(50_000.0), "tags": [["bar"]] * 50_000})
    entries.put(DIGEST, frame)
    first = entries.lookup(DIGEST, copy=False)[1]
    second = entries.lookup(DIGEST, copy=False)[1]
    assert first is not second
    assert first["tags"].iloc[0] is not second["tags"].iloc[0]
