"""The files a call's ``pathlib.Path`` arguments name count by their content.

``load_bars(Path("data/ES.parquet"))`` reads a file that a morning job rewrites: a key made of
the path alone would return yesterday's bars. A ``Path`` argument (alone, or in a list or tuple
of paths) that names a regular file counts by the digest of its bytes, and one that names a
directory by the relative names and digests of every file under it (a partitioned Parquet
dataset). A path that names nothing counts by the path alone (an output the call will write),
and so does a directory of more than `DIRECTORY_FILES` files, with a warning.

A digest is computed once per version of a file: it is remembered by the file's identity and
state (device, inode, size, modification and change times), which a rewrite, an append or a
replacement by rename changes. So a hit costs a ``stat`` per file, and the key is the same on
every machine that holds the same bytes (a shared remote store serves them all). A file larger
than `CONTENT_LIMIT` counts by that state itself: a rewrite is still a miss, but another copy of
the same bytes (another machine's) is too.

Paths held in a list, tuple or dict beside other values (``load({"bars": path})``), or in a
config object (a dataclass, an attrs or pydantic model, a named tuple or namespace), count too,
among the first `HELD_ITEMS` items looked at. A plain string is a string:
``load_bars("data/ES.parquet")`` counts the path only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pathlib
import stat
import sys
import types
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from afml_cache._core import fingerprint
from afml_cache.errors import CacheWarning, caller_stacklevel

# Digests of file contents by (path, device, inode, size, mtime, ctime); forgotten all at once
# beyond this many (a few times the largest directory counted, so it never thrashes).
_REMEMBERED = 50_000
_digests: dict[tuple[Any, ...], str] = {}
# Argument types that are neither paths nor sequences that may hold paths: skipped at once.
_NOT_PATHS: set[type] = set()
# How many items of an argument's (`_items`) are looked at for paths in all.
HELD_ITEMS = 1_000
# A directory's files are listed at each call: beyond this many, it counts by its path only
# (a data root the function picks one file from), with one warning per directory.
DIRECTORY_FILES = 10_000
_warned: set[pathlib.Path] = set()
# A file is hashed a block at a time: the blocks' digests make its digest.
_BLOCK = 16 * 1024 * 1024
# A larger file counts by its state instead (inode, size, times): hashing 20 GB of ticks at a
# process's first call, when the function reads a day of them, would cost more than the call.
CONTENT_LIMIT = 1024 * 1024 * 1024


def file_contents(arguments: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """``(argument name, content)`` for each argument that is a ``pathlib.Path`` or a list or
    tuple of them, where content is a digest per path (None for a path that names nothing),
    or a list, tuple or dict holding paths among other things (`_held_paths`); empty when there
    are none, as for nearly every call."""
    if _NOT_PATHS.issuperset(map(type, arguments.values())):
        return ()
    found = []
    for name, value in arguments.items():
        cls = type(value)
        if cls in _NOT_PATHS:
            continue
        if isinstance(value, pathlib.Path):
            found.append((name, content_digest(value)))
        elif cls in (list, tuple) and value and all(isinstance(i, pathlib.Path) for i in value):
            found.append((name, tuple(map(content_digest, value))))
        elif _items(value) is not None:
            if held := _held_paths(value):
                found.append((name, ("held", held)))
        else:
            _NOT_PATHS.add(cls)
    return tuple(found)


def _items(value: Any) -> Iterable[tuple[Any, Any]] | None:
    """``(key or position, item)`` of a value that may hold paths: a list, tuple or dict, or a
    config object (a dataclass, a named tuple, a namespace: ``Config(bars=Path(...))``); None
    for any other."""
    if isinstance(value, dict):
        return value.items()
    if isinstance(value, (list, tuple)):
        return enumerate(value)
    cls = type(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ((f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value))
    argparse = sys.modules.get("argparse")  # its Namespace exists only once it is imported
    if isinstance(value, types.SimpleNamespace) or (
        argparse is not None and isinstance(value, argparse.Namespace)
    ):
        return vars(value).items()
    attr = sys.modules.get("attr")  # attrs classes, slotted ones too
    if attr is not None and attr.has(cls):
        return ((f.name, getattr(value, f.name, None)) for f in attr.fields(cls))
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return ((name, getattr(value, name, None)) for name in type(value).model_fields)
    # Not an instance of any other class: a research object's `self.root = Path(...)` would
    # list a data directory at every hit of its methods.
    return None


def _held_paths(value: Any) -> tuple[Any, ...]:
    """``(where, digest)`` of each path inside ``value`` (``load({"bars": path})``,
    ``[path, None]``), where is the keys and positions leading to it; looking at no more than
    `HELD_ITEMS` items, so a long list of numbers costs microseconds, not a scan of it."""
    found = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    budget = HELD_ITEMS
    while stack and budget > 0:
        where, item = stack.pop()
        cls = type(item)
        if isinstance(item, pathlib.Path):
            found.append((where, content_digest(item)))
        elif cls not in _NOT_PATHS:
            items = _items(item)
            if items is None:  # a number, a string: never looked into again
                _NOT_PATHS.add(cls)
                continue
            inside = [((*where, k), v) for k, v in itertools.islice(items, budget)]
            budget -= len(inside)
            stack.extend(reversed(inside))
    return tuple(found)


def content_digest(path: pathlib.Path) -> str | None:
    """The digest of what ``path`` names: a file's bytes, a directory's files by relative name
    (symbolic links followed); None if it names nothing this user can see, or something that
    cannot be read without consuming it (a pipe, a socket)."""
    try:
        found = path.stat()
    except OSError:  # missing, or behind a folder this user cannot enter: the path alone
        return None
    if stat.S_ISDIR(found.st_mode):
        files = tuple(itertools.islice(_directory(path), DIRECTORY_FILES + 1))
        if len(files) > DIRECTORY_FILES:  # listed, not yet read
            _too_large(path)
            return None
        digests = tuple((name, _file_digest(file, found)) for name, file, found in files)
        return fingerprint(("afml-cache directory", digests))
    return _file_digest(os.fspath(path), found)


def _too_large(path: pathlib.Path) -> None:
    if path not in _warned:
        _warned.add(path)
        warnings.warn(
            f"afml_cache: the directory {os.fspath(path)!r}, a Path argument, holds more than "
            f"{DIRECTORY_FILES:,} files, too many to check at each call, so it counts by its "
            "path only and a change to its files is not seen; pass the files or the folder the "
            "function reads",
            CacheWarning,
            stacklevel=caller_stacklevel(),
        )


def _directory(root: pathlib.Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(relative name, path, stat)`` of every file under ``root``, and of every empty folder
    (a partition made and not yet filled, which a listing of it shows), in a fixed order."""
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders.sort()  # os.walk descends in this order
        if not subfolders and not names and folder != os.fspath(root):
            with contextlib.suppress(OSError):  # removed meanwhile
                relative = os.path.relpath(folder, root).replace(os.sep, "/")
                yield f"{relative}/", folder, os.stat(folder)
        for name in sorted(names):
            path = os.path.join(folder, name)
            try:
                found = os.stat(path)
            except OSError:  # a dangling link, or removed meanwhile
                continue
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            yield relative, path, found


def _file_digest(path: str, found: os.stat_result) -> str | None:
    if not stat.S_ISREG(found.st_mode):
        return None
    identity = _identity(path, found)
    if found.st_size > CONTENT_LIMIT:  # its state, which a rewrite changes, stands for its bytes
        return fingerprint(("afml-cache file state", identity[1:]))
    digest = _digests.get(identity)
    if digest is not None:
        return digest
    try:
        digest = _hash_file(path)
        unchanged = _identity(path, os.stat(path)) == identity
    except OSError:  # unreadable: its state, which a rewrite changes, stands for its bytes
        return fingerprint(("afml-cache unreadable file", identity))
    if unchanged:  # else rewritten while being read: hash it again at the next call
        if len(_digests) >= _REMEMBERED:
            _digests.clear()
        _digests[identity] = digest
    return digest


def _identity(path: str, found: os.stat_result) -> tuple[Any, ...]:
    return (path, found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def _hash_file(path: str) -> str:
    """The digest of a file's bytes, read a block at a time into one buffer (a mapping would
    crash the process if another one truncated the file meanwhile)."""
    block = np.empty(_BLOCK, dtype=np.uint8)
    view = memoryview(block)
    digests = []
    with open(path, "rb", buffering=0) as file:
        filled = _BLOCK
        while filled == _BLOCK:  # a short block is the last
            filled = 0
            while filled < _BLOCK and (read := file.readinto(view[filled:])):
                filled += read  # a read may return less than asked before the end
            if filled:
                digests.append(fingerprint(block[:filled]))
    return fingerprint(("afml-cache file", tuple(digests)))
