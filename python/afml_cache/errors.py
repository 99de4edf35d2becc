"""The exceptions afml-cache raises. All derive from `CacheError`; each also derives from the
builtin that fits, so `except TypeError` keeps working around a fingerprint failure."""

from __future__ import annotations

__all__ = ["CacheError", "FingerprintError", "StoreError"]


class CacheError(Exception):
    """Base class of every afml-cache error."""


class FingerprintError(CacheError, TypeError):
    """A value cannot be fingerprinted. The message names its type and its path inside the
    argument (for example ``obj[1]['params'][3]``) and what to do about it."""


class StoreError(CacheError, OSError):
    """The cache directory could not be read or written (disk full, permission denied, …).

    ``errno`` and ``filename`` say what failed where; entries already stored are unharmed.
    """
