"""The exceptions afml-cache raises and the warning it issues. Every error derives from
`CacheError` and also from the builtin that fits, so `except TypeError` keeps working around a
fingerprint failure; every warning is a `CacheWarning`, so users filter them by class."""

from __future__ import annotations

import sys

__all__ = ["CacheError", "CacheWarning", "FingerprintError", "StoreError"]


class CacheError(Exception):
    """Base class of every afml-cache error."""


class FingerprintError(CacheError, TypeError):
    """A value cannot be fingerprinted. The message names its type and its path inside the
    argument (for example ``obj[1]['params'][3]``) and what to do about it."""


class StoreError(CacheError, OSError):
    """The cache directory could not be read or written (disk full, permission denied, …).

    ``errno`` and ``filename`` say what failed where; entries already stored are unharmed.
    """


class CacheWarning(UserWarning):
    """Something the user must see once: a cache failure that degraded to computing again, an
    argument fingerprinted through its pickle reduction, a setting that was not understood.

    ``warnings.filterwarnings("ignore", category=afml_cache.CacheWarning)`` silences them all."""


def caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside afml_cache: the
    user's call of the decorated function (for the integrations' warnings too)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("afml_cache"):
        frame, level = frame.f_back, level + 1
    return level
