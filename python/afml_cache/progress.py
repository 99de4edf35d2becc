"""Progress of long work (export, import, maintenance): a bar on a terminal and a widget in
Jupyter, drawn by ``tqdm.auto`` (``pip install "afml-cache[progress]"``); nothing in logs and
pipes, and nothing at all without tqdm."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TypeVar

__all__ = ["SHOW_AFTER_SECONDS", "in_notebook", "progress"]

#: Work that ends sooner shows no bar at all.
SHOW_AFTER_SECONDS = 1.0

T = TypeVar("T")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython with a kernel attached), which can show HTML and
    widgets."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress(items: Sequence[T], what: str) -> Iterable[T]:
    """``items``, shown as ``afml-cache {what}`` progressing while they are iterated, when a
    person watches: stderr is a terminal, or this runs in a notebook."""
    if not (sys.stderr.isatty() or in_notebook()):
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(
        items,
        desc=f"afml-cache {what}",
        unit=" entries",
        delay=SHOW_AFTER_SECONDS,
        file=sys.stderr,
    )
