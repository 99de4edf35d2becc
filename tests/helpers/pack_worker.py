"""Worker processes for the packed-entry tests, run as ``python pack_worker.py MODE ...``.

Every value is small (its sealed entry is packed) and describes itself: which key, which writer,
which round, so a reader can tell exactly which written value it got, or that nobody wrote it.
"""

from __future__ import annotations

import itertools
import sys

from afml_cache import Cache, fingerprint


def small_value(key: str, writer: int, round_: int) -> tuple[str, int, int, bytes]:
    """A few hundred bytes, different for each key, writer and round."""
    body = f"{key}/{writer}/{round_}/".encode()
    return (key, writer, round_, (body * (1 + 300 // len(body)))[:300])


def one_pack_keys(count: int) -> list[str]:
    """Keys whose entries share one pack (their digests start alike): it fills fast, so it is
    compacted now and then."""
    keys = (f"key-{i}" for i in itertools.count())
    return list(itertools.islice((k for k in keys if fingerprint(k)[:2] == "00"), count))


def run_sets_until_killed(directory: str, keys: int) -> None:
    """Sets ``keys`` keys of one pack round after round, forever (until killed)."""
    cache = Cache(directory)
    names = one_pack_keys(keys)
    print("ready", flush=True)
    for round_ in itertools.count():
        for key in names:
            cache.set(key, small_value(key, 0, round_))


def own_keys(writer: int, count: int) -> list[str]:
    return [f"writer-{writer}-{i}" for i in range(count)]


def shared_keys(count: int) -> list[str]:
    return [f"shared-{i}" for i in range(count)]


ROUNDS = 3  # each writer sets every shared key this many times


def run_concurrent_writer(directory: str, writer: int, own: int, shared: int) -> None:
    """Waits for "go" on stdin, then sets its own keys once and every shared key ``ROUNDS``
    times (rounds in order), the two kinds interleaved, and prints "done"."""
    cache = Cache(directory)
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    mine = own_keys(writer, own)
    theirs = [(key, r) for r in range(ROUNDS) for key in shared_keys(shared)]
    for i in range(max(len(mine), len(theirs))):
        if i < len(mine):
            cache.set(mine[i], small_value(mine[i], writer, 0))
        if i < len(theirs):
            key, round_ = theirs[i]
            cache.set(key, small_value(key, writer, round_))
    print("done", flush=True)


if __name__ == "__main__":
    mode, directory, *numbers = sys.argv[1:]
    args = [int(n) for n in numbers]
    if mode == "sets-until-killed":
        run_sets_until_killed(directory, *args)
    elif mode == "concurrent":
        run_concurrent_writer(directory, *args)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
