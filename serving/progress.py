"""Progress bars for long work (rich), shared by the CLI commands: they implement ``exporter.progress``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from exporter.progress import Advance

console = Console(stderr=True)
stdout = Console()


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Advance]:
    """Yields ``advance(n)`` for a progress bar on stderr that closes when the block ends."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


class PhaseBars:
    """A ``Phases`` of rich bars: each phase opens its bar and closes the previous one; ``close`` ends the last."""

    def __init__(self):
        self._open = []

    def __call__(self, label: str, total: int) -> Advance:
        self.close()
        bar = progress_bar(label, total)
        self._open.append(bar)
        return bar.__enter__()

    def close(self) -> None:
        while self._open:
            self._open.pop().__exit__(None, None, None)
