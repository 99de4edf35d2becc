"""The compiled core (Rust, PyO3). The public API re-exports these from `afml_cache`."""

from typing import Any

__all__ = ["SPEC_VERSION", "fingerprint"]

SPEC_VERSION: int

def fingerprint(obj: Any, *, strict: bool = False) -> str:
    """The 64-hex-digit BLAKE3 content fingerprint of `obj` (see docs/fingerprint.md)."""
