"""The one progress type: long work reports through an ``Advance`` per phase.

A library function that does one long phase takes ``progress: Advance`` (called with
the amount of work just done); one that runs several phases takes ``phases: Phases``
(called with a label and a total, it returns that phase's ``Advance``). The CLI
passes progress bars; Python callers may pass nothing.
"""

from __future__ import annotations

from collections.abc import Callable

Advance = Callable[[int], None]
Phases = Callable[[str, int], Advance]


def no_progress(amount: int = 1) -> None:
    """An ``Advance`` that reports nothing."""


def no_phases(label: str, total: int) -> Advance:
    """A ``Phases`` that reports nothing."""
    return no_progress
