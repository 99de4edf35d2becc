"""The shared tier on S3-compatible object storage: entries of many machines under one prefix.

An entry travels as an export does (`archive`): its bytes re-sealed under the prefix's MAC key,
uploaded once with a conditional PUT and, on the way back, streamed into a local temp file while
its framing and MAC are checked, before it moves into the local directory; a remote hit decodes
the value in that same pass, and hands it on only once the whole entry verified. An entry that
fails the check is never unpickled: it is removed from the prefix and the lookup is a miss. A lease
object per key makes a key computed once across machines. The client is `obstore` (the
``afml-cache[s3]`` extra); it releases the GIL while bytes travel.

Layout under the prefix::

    mac.key                                  32 random bytes, created once (see docs/store.md)
    keys/<check>                             empty: a keyed digest of a key entries are sealed with
    entries/<namespace>/<k0k1>/<digest>.afc  entries, as `Store.export_entry` seals them
    leases/<namespace>/<digest>.lease        {"holder": ..., "expires": unix time}, while computed
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import math
import os
import queue
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from afml_cache.errors import CacheError, CacheWarning, StoreError

if TYPE_CHECKING:
    from afml_cache._core import MappedEntry
    from afml_cache._store import Store

__all__ = [
    "Lease",
    "Remote",
    "RemoteEntry",
    "RemoteTier",
    "TieredLock",
    "brief",
    "client_errors",
    "is_remote",
    "open_remote",
]

_log = logging.getLogger("afml_cache")
# An entry comes back in pieces of this size, checked and written as they arrive (obstore joins
# the network's pieces into them: larger ones cost a fresh allocation each, and were slower).
_STREAM_CHUNK = 1024 * 1024
# Bytes fetched ahead of the piece being checked (the memory a download holds beyond it), by an
# entry larger than this.
_AHEAD = 8 * 1024 * 1024
# Entries up to this size go up in one conditional PUT; larger ones in parts (a single request
# that long would outlast the client's request timeout on a slow link).
_ONE_PUT_LIMIT = 64 * 1024 * 1024
_PART = 16 * 1024 * 1024
_PARTS_AT_ONCE = 8
# Larger entries come down in ranges of `_PART` bytes (`_Ranges`), this many at once.
_ONE_GET_LIMIT = 64 * 1024 * 1024
_RANGES_AT_ONCE = 4
# Waiting for another machine's lease: the first poll, the factor, the longest pause.
_FIRST_POLL = 0.05
_POLL_GROWTH = 1.5
_LONGEST_POLL = 1.0
_SAFE = re.compile(r"[A-Za-z0-9_.-]")
# A store that does not answer must cost a lookup seconds, not obstore's default minutes.
# (Client options are left alone: given at all, they replace those read from the environment.)
_CLIENT_DEFAULTS: dict[str, Any] = {
    "retry_config": {"max_retries": 3, "retry_timeout": timedelta(seconds=30)},
}
# S3 signs each request's body with its SHA-256 unless told not to: a pass over every byte sent,
# here and again at the store, which our entries do not need (each carries its MAC, checked on
# every read). An explicit AWS_UNSIGNED_PAYLOAD or option decides instead.
_S3_SCHEMES = ("s3://", "s3a://")
_UNSIGNED = ("unsigned_payload", "aws_unsigned_payload")
# After a failure the tier leaves the prefix alone for this long (seconds): each attempt at an
# unreachable store would cost every lookup its timeouts.
_PAUSE_AFTER_FAILURE = 30.0
_LONGEST_PAUSE = 600.0
# No lease is renewed further ahead than this (a day): one that claims to is taken over.
_LONGEST_LEASE = 86_400.0
# A wait for another machine's lease this long that ends without its entry is said.
_WARN_AFTER_WAITING = 60.0


def is_remote(location: str | os.PathLike[str]) -> bool:
    """True when ``location`` names an object store (``s3://bucket/prefix``, ``gs://``, ...)
    rather than a directory."""
    return re.match(r"^[a-z][a-z0-9+.-]*://", str(location)) is not None


# The obstore module of this process, and the process it belongs to.
_CLIENT: tuple[int, Any] | None = None


def _client_module() -> Any:
    """obstore's compiled module, usable in this process.

    obstore runs its transfers on a tokio runtime whose threads do not survive ``fork``: a child
    of a process that used it would wait forever on its first request. A forked child therefore
    loads a private copy of the module (a fresh runtime), once.
    """
    global _CLIENT
    pid = os.getpid()
    if _CLIENT is None or _CLIENT[0] != pid:
        try:
            from obstore import _obstore
        except ImportError:
            raise CacheError(
                "a remote cache needs the obstore client: pip install 'afml-cache[s3]'"
            ) from None
        _CLIENT = (pid, _obstore if _CLIENT is None else _private_copy(_obstore.__file__))
    return _CLIENT[1]


def _private_copy(library: str) -> Any:
    """A second instance of an extension module: the dynamic loader shares a library by its
    file, so the copy gets its own statics (here, obstore's runtime)."""
    with tempfile.TemporaryDirectory(prefix="afml-cache-obstore-") as scratch:
        copy = os.path.join(scratch, os.path.basename(library))
        shutil.copyfile(library, copy)
        loader = importlib.machinery.ExtensionFileLoader("obstore._obstore", copy)
        spec = importlib.util.spec_from_file_location("obstore._obstore", copy, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    return module


def open_remote(remote: str | Remote | None) -> Remote | None:
    """The remote tier ``remote`` names: a `Remote`, a URL, ``""`` for none, or None for
    ``$AFML_CACHE_REMOTE`` (none when unset)."""
    if remote is None:
        url = os.environ.get("AFML_CACHE_REMOTE", "").strip()
        try:
            return Remote(url) if url else None
        except ValueError as exc:
            raise ValueError(f"AFML_CACHE_REMOTE={url!r}: {exc}") from None
    if isinstance(remote, Remote) or not remote:
        return remote or None
    return Remote(remote)


def brief(error: BaseException) -> str:
    """An error in one line (obstore appends the whole chain of causes to its messages), and
    what to check for the common ones."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    said = f"{type(error).__name__}: {first}"
    advice = next((tip for clue, tip in _ADVICE if clue(type(error).__name__, text)), None)
    return f"{said}; {advice}" if advice else said


# What the common failures of a store ask the user to check: (does it apply, what to say).
_ADVICE: tuple[tuple[Any, str], ...] = (
    (
        lambda name, text: "builder error" in text and "http://" in _endpoint(),
        "an http:// endpoint needs AWS_ALLOW_HTTP=true",
    ),
    (
        lambda name, text: "as boolean" in text,
        "an option set to an empty or unknown value (AWS_ALLOW_HTTP=true, not empty)",
    ),
    (
        lambda name, text: name in ("PermissionDeniedError", "UnauthenticatedError"),
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and what they may do in the bucket",
    ),
    (
        # obstore found no credentials in the environment and asked the instance metadata
        # service, which only a cloud machine has.
        lambda name, text: "169.254.169.254" in text,
        "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
    ),
    (
        lambda name, text: "error sending request" in text or "onnection refused" in text,
        "is the endpoint reachable? (AWS_ENDPOINT_URL, AWS_REGION)",
    ),
    (
        lambda name, text: "bucket" in text.lower() and "not found" in text.lower(),
        "is the bucket named in the URL there?",
    ),
)


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL", "") or os.environ.get("AWS_ENDPOINT", "")


def _refusals() -> tuple[type[Exception], ...]:
    """What the store raises for a request the credentials may not make."""
    exceptions = _client_module().exceptions
    return (exceptions.PermissionDeniedError, exceptions.UnauthenticatedError)


def client_errors() -> tuple[type[Exception], ...]:
    """What the remote tier raises when the store cannot be reached, refuses a request or holds
    an unusable key (`CacheError`; a `StoreError` among them is the local directory's)."""
    return (OSError, CacheError, _client_module().exceptions.BaseError)


@dataclass(frozen=True)
class RemoteEntry:
    """An entry object under the prefix, as listed (without reading it)."""

    path: str
    namespace: str
    digest: str
    size: int
    written: float  # unix time of the write (object stores keep no access time)


class Remote:
    """A prefix of an object store shared by every machine of a team or cluster.

    ``url`` is ``s3://bucket/prefix`` (or any URL obstore opens). Credentials, region and
    endpoint come from the standard environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP=true``
    for a test server) or from ``options`` (obstore's config keys). ``lease_seconds`` is how
    long a lease lasts without renewal: a holder renews its lease while it computes, so another
    machine takes a key over only after its holder died and this much time passed.
    """

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = 60.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        if not is_remote(url):
            raise ValueError(f"remote={url!r} is not a URL; write it like s3://bucket/prefix")
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be a positive number, got {lease_seconds!r}")
        self.url = str(url).rstrip("/")
        self.lease_seconds = float(lease_seconds)
        self._options = {**_CLIENT_DEFAULTS, **(options or {})}
        if (
            self.url.lower().startswith(_S3_SCHEMES)
            and "AWS_UNSIGNED_PAYLOAD" not in os.environ
            and not any(name.lower() in _UNSIGNED for name in self._options)
        ):
            self._options["unsigned_payload"] = True
        _client_module()  # fails now, with what to install, if obstore is missing
        self._client_of: tuple[Any, Any] | None = None
        self._key: bytes | None = _key_from_environment()
        self._noted = False  # whether this process left its key check (`note_key`)
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # What travels to a worker: where, and how; the client is opened where it lands.
        return _open_remote, (self.url, self.lease_seconds, self._options)

    def __eq__(self, other: object) -> bool:
        # The same prefix, reached the same way: a copy that travelled is the one it came from.
        if not isinstance(other, Remote):
            return NotImplemented
        return (self.url, self.lease_seconds, self._options) == (
            other.url,
            other.lease_seconds,
            other._options,
        )

    def __hash__(self) -> int:
        return hash((self.url, self.lease_seconds))

    # --- the client and the key ---------------------------------------------------------------

    @property
    def _obstore(self) -> Any:
        return _client_module()

    @property
    def _missing(self) -> tuple[type[BaseException], ...]:
        # obstore raises the builtin FileNotFoundError for a missing object on some calls.
        return (FileNotFoundError, self._obstore.exceptions.NotFoundError)

    @property
    def client(self) -> Any:
        """The object store client of this process: a forked child opens its own."""
        module = _client_module()
        if self._client_of is None or self._client_of[0] is not module:
            # obstore's compiled submodule of store classes (named `_store` there too).
            stores = module.__dict__["_store"]
            self._client_of = (module, stores.from_url(self.url, **self._options))
        return self._client_of[1]

    def mac_key(self) -> bytes:
        """The key that seals entries under this prefix: ``AFML_CACHE_KEY`` (64 hex digits,
        shared out of band), else ``mac.key`` in the prefix, created once by the first user."""
        if self._key is not None:
            return self._key
        obs = self._obstore
        try:  # read first: credentials that may only read the prefix still read its entries
            key = bytes(obs.get(self.client, "mac.key").bytes())
        except self._missing:
            # Of several machines starting at once, one creates the key and everyone uses it.
            with contextlib.suppress(obs.exceptions.AlreadyExistsError):
                obs.put(self.client, "mac.key", os.urandom(32), mode="create")
            key = bytes(obs.get(self.client, "mac.key").bytes())
        if len(key) != 32:
            raise CacheError(
                f"{self.url}/mac.key holds {len(key)} bytes, not a 32-byte key; remove it only "
                "if the prefix holds no entries you want to keep (they become unreadable)"
            )
        self._key = key
        return key

    def _key_check(self, key: bytes) -> str:
        """The object that says entries under the prefix are sealed with ``key`` (a keyed digest
        of a constant: it shows which keys are in use, never a key)."""
        check = hashlib.blake2b(b"afml-cache key check", key=key, digest_size=16).hexdigest()
        return f"keys/{check}"

    def note_key(self) -> None:
        """Leaves this process's key check in the prefix, once (see `_other_keys`)."""
        if self._noted:
            return
        obs = self._obstore
        with contextlib.suppress(obs.exceptions.AlreadyExistsError, *_refusals()):
            obs.put(self.client, self._key_check(self.mac_key()), b"", mode="create")
        self._noted = True

    def _other_keys(self) -> bool:
        """Whether entries under the prefix are sealed with another key than this process's (an
        ``AFML_CACHE_KEY`` set on some machines only, or set to another secret): then an entry
        that fails its check may be a sound one of theirs, and is not removed."""
        key = self.mac_key()
        own, obs = self._key_check(key), self._obstore
        with contextlib.suppress(obs.exceptions.BaseError, *self._missing):
            for batch in obs.list(self.client, prefix="keys/"):
                if any(meta["path"] != own for meta in batch):
                    return True
            # A key of our own beside the prefix's (machines that had no AFML_CACHE_KEY).
            if _key_from_environment() is not None:
                return bytes(obs.get(self.client, "mac.key").bytes()) != key
        return False

    # --- entries ------------------------------------------------------------------------------

    def entry_path(self, namespace: str, digest: str) -> str:
        return f"entries/{_namespace_dir(namespace)}/{digest[:2]}/{digest}.afc"

    def lease_path(self, namespace: str, digest: str) -> str:
        return f"leases/{_namespace_dir(namespace)}/{digest}.lease"

    def download(self, store: Store, namespace: str, digest: str) -> bool:
        """Copies the entry of ``(namespace, digest)`` into ``store``; False if the prefix has
        none, or only one that fails its check (then it is removed, so it gets replaced)."""
        found = self._checked(store, namespace, digest, decode=False)
        if found is None:
            return False
        found[0].commit()
        return True

    def fetch(self, store: Store, namespace: str, digest: str) -> Any:
        """The value of ``(namespace, digest)`` as ``store.get`` returns it, decoded in the one
        pass over the entry that also keeps its local copy in ``store``; None if the prefix has
        none, or only one that fails its check or whose time to live has passed (then it is
        removed, so it gets replaced)."""
        found = self._checked(store, namespace, digest, decode=True)
        if found is None:
            return None
        staged, loaded = found
        expires = loaded[3]
        if expires is not None and expires <= time.time():
            # Useless to every machine, and while it is there the fresh value could not be
            # created in its place.
            staged.discard()
            self.delete(namespace, digest)
            return None
        staged.commit()
        return loaded

    def _checked(
        self, store: Store, namespace: str, digest: str, *, decode: bool
    ) -> tuple[Any, Any] | None:
        """`_stage`, a damaged entry removed from the prefix (and None returned)."""
        path = self.entry_path(namespace, digest)
        try:
            return self._stage(store, path, namespace, digest, decode=decode)
        except _Damaged as exc:
            self._remove_bad(path, str(exc))
            return None

    def verify(self, store: Store, entry: RemoteEntry) -> str | None:
        """What is wrong with a listed entry (read and checked through ``store``, left out of
        it), or None if it is sound or gone."""
        try:
            found = self._stage(store, entry.path, entry.namespace, entry.digest, decode=False)
        except _Damaged as exc:
            return str(exc)
        if found is not None:
            found[0].discard()
        return None

    def _stage(
        self, store: Store, path: str, namespace: str, digest: str, *, decode: bool
    ) -> tuple[Any, Any] | None:
        """The entry object at ``path`` streamed into a temp file of ``store`` as it is checked
        against the prefix's key (`StagedImport`) and, with ``decode``, decoded into the value
        as ``store.get`` returns it (else None beside it); None if there is none. Raises
        `_Damaged` when it fails the check: nothing of it was unpickled or kept."""
        obs = self._obstore
        # Before the entry: a prefix whose key is unusable (a damaged mac.key) fails as the
        # prefix, which the caller reports; read as the entry's damage, every sound entry a
        # reader looked up was removed.
        key = self.mac_key()
        try:
            found = obs.get(self.client, path)
        except self._missing:
            return None
        size = int(found.meta["size"])
        chunks: Iterator[Any]
        if size > _ONE_GET_LIMIT:
            # In ranges, each its own request: one GET of a large entry on a slow link outlasts
            # the client's request timeout, every time. This response's body is left unread.
            chunks = _Ranges(self, path, size, found.meta["e_tag"])
        else:
            chunks = iter(found.stream(min_chunk_size=_STREAM_CHUNK))
            # Fetching ahead pays only when there is much to overlap with.
            if size > _AHEAD:
                chunks = _FetchedAhead(chunks)
        del found
        try:
            staged, loaded = store.stage_download(chunks, key, decode)
        except StoreError:
            raise  # the local disk failed, not the entry
        except CacheError as exc:
            raise _Damaged(str(exc)) from None
        except obs.exceptions.PreconditionError:
            return None  # replaced as it was read: the next lookup reads the new one
        finally:
            if isinstance(chunks, _FetchedAhead | _Ranges):
                chunks.close()
        if (staged.namespace, staged.key) != (namespace, digest):
            staged.discard()
            raise _Damaged(f"it holds the entry of {staged.namespace!r} {staged.key}")
        return staged, loaded

    def upload(
        self,
        store: Store,
        namespace: str,
        digest: str,
        sealed: tuple[bytes, bytes] | None = None,
        replace: bool = False,
    ) -> bool:
        """Puts the local entry of ``(namespace, digest)`` under the prefix, unless one is there
        already (entries are created once: whoever wrote first wrote an equal value), or over
        it with ``replace`` (a value set, not computed; an object store replaces an object
        whole). False if the local entry is gone. ``sealed``: its ``(mac, mac under the
        prefix's key)`` as the write that just made it gave them (``put(seal_for=)``)."""
        # A file sealed for the prefix as it was written goes up as it is, mapped in place: its
        # MAC there was made from the bytes written, so a file damaged since arrives unusable,
        # never resealed. Any other (or one replaced since) is read in one pass that checks each
        # piece against the local key and seals it under the prefix's; the last piece, the new
        # MAC, comes only if the file verified (else the read raises and the upload never
        # completes).
        export = None
        if sealed is not None:
            export = store.export_reader(namespace, digest, self.mac_key(), sealed)
        if export is None:
            export = store.export_reader(namespace, digest, self.mac_key())
        if export is None:
            return False
        self.note_key()  # before any entry sealed with it is there to be read
        mapped = export.mapped()
        if mapped is not None:
            return self._upload_mapped(store, namespace, digest, mapped, replace)
        obs = self._obstore
        path = self.entry_path(namespace, digest)
        damaged: list[CacheError] = []

        def pieces() -> Iterator[bytearray]:
            while True:
                try:
                    piece = export.read(_PART)
                except StoreError:
                    raise  # the local disk failed, not the entry
                except CacheError as exc:
                    damaged.append(exc)
                    raise
                if not piece:
                    return
                yield piece

        try:
            if export.size <= _ONE_PUT_LIMIT:
                with contextlib.suppress(obs.exceptions.AlreadyExistsError):
                    mode = "overwrite" if replace else "create"
                    obs.put(self.client, path, b"".join(pieces()), mode=mode)
            elif replace or not self.contains(namespace, digest):
                # Parts in parallel, streamed from the file; the object appears whole when the
                # upload completes. A machine that passed the check at the same moment writes
                # an equal value, as whole.
                obs.put(
                    self.client, path, pieces(), chunk_size=_PART, max_concurrency=_PARTS_AT_ONCE
                )
        except Exception:
            if not damaged:
                raise
            # obstore may wrap the error: what counts is that the local file failed its check.
            _log.warning(
                "afml_cache: removed the local entry %s %s: %s; it was not uploaded",
                namespace,
                digest,
                damaged[0],
            )
            store.delete(namespace, digest)
            return False
        return True

    def _upload_mapped(
        self, store: Store, namespace: str, digest: str, mapped: MappedEntry, replace: bool
    ) -> bool:
        """``upload`` of a sealed entry's file mapped in place: sent from the page cache with no
        copy (reading it into fresh buffers took twice this process's CPU). A file that shrank
        meanwhile (whose bytes the client then could not read, or read as zeros that fail their
        MAC) is removed, here and there."""
        obs = self._obstore
        path = self.entry_path(namespace, digest)
        if not replace and self.contains(namespace, digest):
            return True
        try:
            # A machine that passed the check at the same moment writes an equal value, whole.
            obs.put(
                self.client,
                path,
                memoryview(mapped),
                chunk_size=_PART,
                max_concurrency=_PARTS_AT_ONCE,
            )
        except Exception:
            if not mapped.damaged:
                raise  # the remote's failure, not the file's
        if not mapped.damaged:
            return True
        with contextlib.suppress(obs.exceptions.BaseError):
            obs.delete(self.client, path)
        store.delete(namespace, digest)
        _log.warning(
            "afml_cache: removed the entry %s %s: its local file shrank while it was uploaded",
            namespace,
            digest,
        )
        return False

    def contains(self, namespace: str, digest: str) -> bool:
        obs = self._obstore
        try:
            obs.head(self.client, self.entry_path(namespace, digest))
        except self._missing:
            return False
        return True

    def delete(self, namespace: str, digest: str) -> bool:
        """Removes the entry of ``(namespace, digest)``; False if there was none."""
        if not self.contains(namespace, digest):
            return False
        self._obstore.delete(self.client, self.entry_path(namespace, digest))
        return True

    def _remove_bad(self, path: str, why: str) -> None:
        if self._other_keys():
            self.warn_once(
                "other key",
                f"afml_cache: the entry {self.url}/{path} fails its check ({why}), and entries "
                "under this prefix are sealed with more than one key: AFML_CACHE_KEY differs "
                "between the machines writing it (set the same one everywhere, or none). It was "
                "not unpickled and is left in place; this process computes such keys itself. "
                f"`afml-cache health --fix --dir {self.url}` removes the entries this key "
                "cannot read",
            )
            return
        with contextlib.suppress(self._obstore.exceptions.BaseError):
            self._obstore.delete(self.client, path)
        self.warn_once(
            "bad entry",
            f"afml_cache: removed the entry {self.url}/{path}: {why}; it was not unpickled, "
            "and it is computed again",
        )

    def warn_once(self, what: str, message: str) -> None:
        """Logs ``message``; warns the first time this process meets a failure of this kind."""
        _log.warning("%s", message)
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, CacheWarning, stacklevel=3)

    # --- many entries -------------------------------------------------------------------------

    def scan(self, namespace: str | None = None) -> list[RemoteEntry]:
        """Every entry under the prefix (of ``namespace`` when given), without reading them."""
        prefix = "entries/" if namespace is None else f"entries/{_namespace_dir(namespace)}/"
        found = []
        for batch in self._obstore.list(self.client, prefix=prefix):
            for meta in batch:
                entry = _entry_of(meta)
                if entry is not None:
                    found.append(entry)
        return found

    def remove(self, entries: list[RemoteEntry]) -> int:
        """Removes the listed entries; returns how many."""
        paths = [e.path for e in entries]
        for start in range(0, len(paths), 1000):  # S3 deletes at most 1,000 objects a request
            self._obstore.delete(self.client, paths[start : start + 1000])
        return len(paths)

    def clear(self) -> int:
        """Removes every entry under the prefix; returns how many. The MAC key stays, and so do
        the leases of computations under way (they end or expire by themselves)."""
        return self.remove(self.scan())

    def prune(
        self, max_size: int | None, max_age: float | None = None, *, dry_run: bool = False
    ) -> tuple[list[RemoteEntry], int]:
        """Removes the entries written more than ``max_age`` seconds ago, then more, oldest write
        first (object stores keep no access times), until the rest take at most ``max_size``
        bytes; returns what was removed (would be, with ``dry_run``) and the bytes left."""
        entries = sorted(self.scan(), key=lambda e: (e.written, e.path))
        cutoff = time.time() - max_age if max_age is not None else -math.inf
        doomed = [e for e in entries if e.written < cutoff]
        left = sum(e.size for e in entries) - sum(e.size for e in doomed)
        for entry in entries[len(doomed) :]:  # the old ones are a prefix of the sorted list
            if max_size is None or left <= max_size:
                break
            doomed.append(entry)
            left -= entry.size
        if not dry_run:
            self.remove(doomed)
        return doomed, left

    def pull(self, store: Store, entries: list[RemoteEntry]) -> int:
        """Copies the listed entries into ``store``; returns how many passed their check (the
        others are removed from the prefix)."""
        return sum(self.download(store, e.namespace, e.digest) for e in entries)

    def push(self, store: Store) -> int:
        """Puts every entry of ``store`` under the prefix; returns how many."""
        return sum(self.upload(store, e.namespace, e.digest) for e in store.scan(None))

    # --- single flight across machines -------------------------------------------------------

    def lease(self, namespace: str, digest: str, timeout: float) -> Lease | None:
        """Waits up to ``timeout`` seconds for the right to compute ``(namespace, digest)``.

        Returns a held `Lease` (compute, store, then ``release()``), an unheld one when the
        entry appeared meanwhile (read it), or None when another machine still holds the lease
        after ``timeout`` (compute anyway: a duplicate computation is never a wrong hit)."""
        obs = self._obstore
        path = self.lease_path(namespace, digest)
        deadline = time.monotonic() + timeout
        pause = _FIRST_POLL
        while True:
            try:
                put = obs.put(self.client, path, self._lease_body(), mode="create")
                return Lease(self, path, put["e_tag"])
            except obs.exceptions.AlreadyExistsError:
                pass
            if self.contains(namespace, digest):
                return Lease(self, path, None)
            taken = self._take_expired(path)
            if taken is not None:
                return taken
            if time.monotonic() >= deadline:
                if timeout < _WARN_AFTER_WAITING:
                    return None  # a caller that hardly waits expects to find it held
                self.warn_once(
                    "lease",
                    f"afml_cache: waited {timeout:.0f} s for another machine computing "
                    f"{namespace} {digest} ({self.url}/{path}) and computes it too; if no "
                    "machine is computing it, its holder may have died with a long lease "
                    "(lease_seconds) or a clock far ahead",
                )
                return None
            # Jitter keeps many waiters from polling in step.
            time.sleep(min(pause * random.uniform(0.8, 1.2), max(0.0, deadline - time.monotonic())))
            pause = min(pause * _POLL_GROWTH, _LONGEST_POLL)

    def _take_expired(self, path: str) -> Lease | None:
        """Takes over a lease whose holder stopped renewing it (If-Match on its ETag: of several
        machines trying, one wins)."""
        obs = self._obstore
        try:
            found = obs.get(self.client, path)
            body = bytes(found.bytes())
        except self._missing:
            return None  # released meanwhile: the next create may win
        try:
            expires = float(json.loads(body)["expires"])
        except Exception:  # not JSON, nested past the recursion limit, no expiry: unreadable
            expires = 0.0  # nobody can be holding it
        if not math.isfinite(expires) or expires > time.time() + _LONGEST_LEASE:
            expires = 0.0  # no holder renews that far ahead: a clock far off, or garbage
        if expires > time.time():
            return None
        try:
            put = obs.put(
                self.client, path, self._lease_body(), mode={"e_tag": found.meta["e_tag"]}
            )
        except (obs.exceptions.PreconditionError, *self._missing):
            return None  # another machine took it over first
        _log.info("afml_cache: took over the expired lease %s/%s", self.url, path)
        return Lease(self, path, put["e_tag"])

    def _lease_body(self) -> bytes:
        holder = f"{socket.gethostname()}:{os.getpid()}"
        return json.dumps({"holder": holder, "expires": time.time() + self.lease_seconds}).encode()


class Lease:
    """The right to compute one key across machines, renewed while held."""

    def __init__(self, remote: Remote, path: str, e_tag: str | None) -> None:
        self._remote = remote
        self._path = path
        self._e_tag = e_tag
        self._stop = threading.Event()
        if e_tag is not None:
            threading.Thread(target=self._renew, name="afml-cache lease", daemon=True).start()

    @property
    def held(self) -> bool:
        return self._e_tag is not None and not self._stop.is_set()

    def _renew(self) -> None:
        obs = self._remote._obstore
        while not self._stop.wait(self._remote.lease_seconds / 3):
            try:
                put = obs.put(
                    self._remote.client,
                    self._path,
                    self._remote._lease_body(),
                    mode={"e_tag": self._e_tag},
                )
                self._e_tag = put["e_tag"]
            except obs.exceptions.BaseError as exc:
                # Lost (taken over after a pause longer than the lease) or unreachable: another
                # machine may compute too, which costs time but is never a wrong hit.
                _log.info(
                    "afml_cache: stopped renewing %s/%s: %s", self._remote.url, self._path, exc
                )
                return

    def release(self) -> None:
        if self._e_tag is None or self._stop.is_set():
            return
        self._stop.set()
        obs = self._remote._obstore
        try:
            current = obs.head(self._remote.client, self._path)
            if current["e_tag"] == self._e_tag:  # still ours: not taken over meanwhile
                obs.delete(self._remote.client, self._path)
        except obs.exceptions.BaseError:
            pass  # gone already, or unreachable: it expires by itself

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class _Damaged(Exception):
    """An entry object that fails its check: why."""


class RemoteTier:
    """A local store with a remote prefix behind it: what `Store` calls instead of its core's
    methods when it has a remote.

    A lookup reads the local directory, then the prefix (keeping a local copy); a write goes to
    both; the single-flight lock is the local lock and then the prefix's lease. A failure of
    the prefix (unreachable, refused) is logged, warned once, and leaves the local tier working.
    """

    def __init__(self, core: Any, remote: Remote) -> None:
        self._core = core
        self.remote = remote
        self._paused_until = 0.0
        self._failures = 0  # in a row: each makes the next pause longer
        # Whether the prefix refused a write (read-only credentials): reads go on without them.
        self._read_only = False

    def get(self, namespace: str, key: str) -> Any:
        loaded = self._core.get(namespace, key)
        if loaded is None:
            loaded = self._reach(None, self.remote.fetch, self._core, namespace, key)
            if loaded is not None:
                # Counted as the local lookup of the copy would have counted it.
                self._core.count_hit()
                self._core.record_access(namespace, key, 1, time.time_ns())
        return loaded

    def put(self, namespace: str, key: str, *args: Any, **kwargs: Any) -> Any:
        """Writes a computed value to both tiers: the prefix keeps the first machine's (any
        other computed an equal one)."""
        return self._put(namespace, key, False, *args, **kwargs)

    def put_replacing(self, namespace: str, key: str, *args: Any, **kwargs: Any) -> Any:
        """Writes a value that replaces what the key holds (`Cache.set`, `precache`) to both
        tiers: the prefix's copy too, which a create-once upload would keep."""
        return self._put(namespace, key, True, *args, **kwargs)

    def _put(self, namespace: str, key: str, replace: bool, *args: Any, **kwargs: Any) -> Any:
        # Written sealed under the prefix's key too, so that the upload need not hash the file.
        receiver = None if self._read_only else self._reach(None, self.remote.mac_key)
        if receiver is None:  # the prefix is out of reach: the local tier goes on alone
            return self._core.put(namespace, key, *args, **kwargs)
        written = self._core.put(namespace, key, *args, seal_for=receiver, **kwargs)
        stored, _, mac, sealed = written
        if stored:
            both = (mac, sealed) if sealed is not None else None
            self._write(False, self.remote.upload, self._core, namespace, key, both, replace)
        return written

    def touch(self, namespace: str, key: str, expires: float | None) -> bool:
        """A new expiry, in the local entry and the prefix's copy (else another machine, or
        this one once its copy is evicted, reads the old one)."""
        touched = self._core.touch(namespace, key, expires)
        if touched:
            self._write(False, self.remote.upload, self._core, namespace, key, None, True)
        return bool(touched)

    def contains(self, namespace: str, key: str) -> bool:
        return bool(
            self._core.contains(namespace, key)
            or self._reach(False, self.remote.contains, namespace, key)
        )

    def delete(self, namespace: str, key: str) -> bool:
        local = self._core.delete(namespace, key)
        return bool(self._write(False, self.remote.delete, namespace, key) or local)

    def clear(self) -> int:
        local = self._core.clear()
        return max(local, int(self._write(0, self.remote.clear)))

    def lock(self, namespace: str, key: str, timeout: float) -> TieredLock | None:
        started = time.monotonic()
        local = self._core.lock(namespace, key, timeout)
        if local is None:
            return None
        left = max(0.0, timeout - (time.monotonic() - started))
        try:
            lease = self._write(None, self.remote.lease, namespace, key, left)
        except BaseException:
            local.release()  # not kept by a failure (or Ctrl-C) on the way to the lease
            raise
        return TieredLock(local, lease)

    def _write(self, failed: Any, action: Any, *args: Any) -> Any:
        """`_reach` for an action that writes to the prefix (an entry, a lease, a removal): none
        once the prefix refused one, which leaves its reads going on (read-only credentials
        still read what the team computed)."""
        if self._read_only:
            return failed
        return self._reach(failed, action, *args, writes=True)

    def _reach(self, failed: Any, action: Any, *args: Any, writes: bool = False) -> Any:
        """``action(*args)``, or ``failed`` when the prefix cannot be reached or refuses (then,
        for a while, without trying: longer after each failure in a row, up to
        `_LONGEST_PAUSE`, so an endpoint that never answers costs a long run few timeouts)."""
        if time.monotonic() < self._paused_until:
            return failed
        try:
            done = action(*args)
        except StoreError:
            raise  # the local directory failed: the caller reports it as for any local store
        except client_errors() as exc:
            if writes and isinstance(exc, _refusals()):
                self._read_only = True
                self.remote.warn_once(
                    "read only",
                    f"afml_cache: the remote cache {self.remote.url} refused a write "
                    f"({brief(exc)}); this process reads its entries but writes none and takes "
                    "no leases (the credentials may only read the prefix)",
                )
                return failed
            pause = min(_PAUSE_AFTER_FAILURE * 2**self._failures, _LONGEST_PAUSE)
            self._failures += 1
            self._paused_until = time.monotonic() + pause
            self.remote.warn_once(
                "unreachable",
                f"afml_cache: the remote cache {self.remote.url} failed ({brief(exc)}); this "
                f"process goes on with its local directory (trying the remote again in "
                f"{pause:.0f} s, then less often while it keeps failing)",
            )
            return failed
        self._failures = 0
        return done


class TieredLock:
    """The local single-flight lock and, when one was had, the prefix's lease."""

    def __init__(self, local: Any, lease: Lease | None) -> None:
        self._local = local
        self._lease = lease

    @property
    def held(self) -> bool:
        return bool(self._local.held)

    def release(self) -> None:
        try:
            if self._lease is not None:
                self._lease.release()
        finally:
            self._local.release()

    def __enter__(self) -> TieredLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class _FetchedAhead:
    """A download's chunks, the next ones fetched by a thread while the current one is checked
    and written, so that the transfer and the work on the bytes overlap instead of taking
    turns (at most `_AHEAD` bytes held beyond it)."""

    def __init__(self, chunks: Iterator[Any]) -> None:
        self._chunks = chunks
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=_AHEAD // _STREAM_CHUNK)
        self._stop = threading.Event()
        threading.Thread(target=self._fetch, name="afml-cache download", daemon=True).start()

    def _fetch(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._hand_over(chunk):
                    return
        except BaseException as exc:  # raised where the chunks are taken, as it came
            self._hand_over(exc)
            return
        self._hand_over(None)

    def _hand_over(self, item: Any) -> bool:
        """Queues ``item``; False once closed (nobody will take it)."""
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _FetchedAhead:
        return self

    def __next__(self) -> Any:
        if self._stop.is_set():
            raise StopIteration
        item = self._ready.get()
        if item is None or isinstance(item, BaseException):
            self._stop.set()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()  # the fetcher stops at its next chunk


class _Ranges:
    """A large entry's bytes as ranges of `_PART` bytes, `_RANGES_AT_ONCE` of them fetched at
    once and handed on in order, so that the transfers overlap each other and the work on the
    bytes; each of the one version of the object its ETag names (If-Match: an entry replaced
    meanwhile fails the read, never mixes two)."""

    def __init__(self, remote: Remote, path: str, size: int, e_tag: str | None) -> None:
        self._fetch = functools.partial(self._range, remote, path, size, e_tag)
        self._starts = iter(range(0, size, _PART))
        self._pool = ThreadPoolExecutor(_RANGES_AT_ONCE, thread_name_prefix="afml-cache download")
        self._pending: collections.deque[Future[Any]] = collections.deque()
        for _ in range(_RANGES_AT_ONCE):
            self._ask()

    @staticmethod
    def _range(remote: Remote, path: str, size: int, e_tag: str | None, start: int) -> Any:
        options: dict[str, Any] = {"range": (start, min(start + _PART, size))}
        if e_tag is not None:
            options["if_match"] = e_tag
        return remote._obstore.get(remote.client, path, options=options).bytes()

    def _ask(self) -> None:
        start = next(self._starts, None)
        if start is not None:
            self._pending.append(self._pool.submit(self._fetch, start))

    def __iter__(self) -> _Ranges:
        return self

    def __next__(self) -> Any:
        if not self._pending:
            raise StopIteration
        piece = self._pending.popleft().result()
        self._ask()
        return piece

    def close(self) -> None:
        for pending in self._pending:
            pending.cancel()
        self._pool.shutdown(wait=False)


def _open_remote(url: str, lease_seconds: float, options: dict[str, Any]) -> Remote:
    return Remote(url, lease_seconds=lease_seconds, options=options)


def _key_from_environment() -> bytes | None:
    secret = os.environ.get("AFML_CACHE_KEY", "").strip()
    if not secret:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{64}", secret) is None:
        raise ValueError(
            "AFML_CACHE_KEY must be 64 hex digits (32 bytes), e.g. from "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return bytes.fromhex(secret)


def _namespace_dir(namespace: str) -> str:
    """A namespace as one path segment: safe characters kept, others escaped as ``=XX``, long
    names shortened with a digest so that distinct namespaces never share a segment."""
    out = "".join(
        c if _SAFE.fullmatch(c) else "".join(f"={b:02X}" for b in c.encode()) for c in namespace
    )
    out = out or "=00"
    if out.startswith("."):
        out = "=2E" + out[1:]
    if len(out) > 120:
        out = out[:100] + "~" + hashlib.blake2b(namespace.encode(), digest_size=8).hexdigest()
    return out


def _namespace_of(segment: str) -> str:
    if "~" in segment:
        return segment  # shortened: the listing shows it as it is stored
    return re.sub(
        r"(?:=[0-9A-F]{2})+",
        lambda m: bytes.fromhex(m.group(0).replace("=", "")).decode(errors="replace"),
        segment,
    )


def _entry_of(meta: dict[str, Any]) -> RemoteEntry | None:
    parts = meta["path"].split("/")
    if len(parts) != 4 or not parts[3].endswith(".afc"):
        return None  # not an entry: leave it alone
    return RemoteEntry(
        path=meta["path"],
        namespace=_namespace_of(parts[1]),
        digest=parts[3][: -len(".afc")],
        size=int(meta["size"]),
        written=meta["last_modified"].timestamp(),
    )
