"""What a forked child must not inherit as it was: locks that another thread of the parent held
at the fork, which no thread of the child would ever release (`multiprocessing`'s fork pools
next to a thread pool of cached loaders hung on them), and the store's core, whose own locks
are Rust's."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol

__all__ = ["lock", "renew_after_fork"]


class _Renewed(Protocol):
    def after_fork(self) -> None: ...


_LOCKS: list[Any] = []  # module-level locks, released in the child
_RENEWED: weakref.WeakSet[Any] = weakref.WeakSet()


def lock() -> Any:
    """A module-level ``threading.Lock`` that a forked child finds released."""
    found = threading.Lock()
    _LOCKS.append(found)
    return found


def renew_after_fork(owner: _Renewed) -> None:
    """Calls ``owner.after_fork()`` in each forked child while ``owner`` lives."""
    _RENEWED.add(owner)


def _after_fork() -> None:
    for found in _LOCKS:
        found._at_fork_reinit()  # what the standard library's own modules do (logging)
    for owner in list(_RENEWED):
        owner.after_fork()


os.register_at_fork(after_in_child=_after_fork)
