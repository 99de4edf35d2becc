"""A value that leaves a mark when, and only when, it is unpickled: tests store one and damage
the entry, then check that nothing was unpickled from the damaged bytes."""

from __future__ import annotations

from pathlib import Path

DETONATIONS: list[str] = []


def _detonate(marker: str) -> Detonator:
    """Runs when, and only when, a stored Detonator is unpickled."""
    DETONATIONS.append(marker)
    Path(marker).write_text("unpickled")
    return Detonator(marker)


class Detonator:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_detonate, (self.marker,))
