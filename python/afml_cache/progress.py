"""Progress of long work (export, import, maintenance): a bar on a terminal and a widget in
Jupyter, drawn by ``tqdm.auto`` (``pip install "afml-cache[progress]"``); nothing in logs and
pipes, and nothing at all without tqdm."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = ["SHOW_AFTER_SECONDS", "in_notebook", "progress", "progress_callback"]

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


def _bar(what: str, **options: Any) -> Any:
    """A tqdm bar for ``afml-cache {what}`` when a person watches (stderr is a terminal, or this
    runs in a notebook) and tqdm is installed; else None."""
    if not (sys.stderr.isatty() or in_notebook()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(
        desc=f"afml-cache {what}",
        unit=" entries",
        delay=SHOW_AFTER_SECONDS,
        file=sys.stderr,
        **options,
    )


def progress(items: Sequence[T], what: str) -> Iterable[T]:
    """``items``, shown as ``afml-cache {what}`` progressing while they are iterated."""
    bar = _bar(what, iterable=items)
    return items if bar is None else bar


def progress_callback(what: str) -> Callable[[int, int], None] | None:
    """A ``(done, total)`` callback showing ``afml-cache {what}`` progressing, for work counted
    in the Rust core (``check``); None when nobody watches."""
    bar = _bar(what, total=0)
    if bar is None:
        return None

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update
