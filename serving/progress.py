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


@contextmanager
def training_bar(description: str, seconds: float) -> Iterator:
    """Yields ``update(status)`` for a wall-clock bar over ``seconds`` showing step, loss, tokens/s and the latest BLEU."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
               TextColumn("step {task.fields[step]}  loss {task.fields[loss]}  {task.fields[speed]} tok/s  "
                          "BLEU {task.fields[bleu]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=seconds, step=0, loss="-", speed="-", bleu="-")

        def update(status) -> None:
            bleu = "-" if status.bleu is None else f"{status.bleu:.1f}"
            progress.update(task, completed=min(status.seconds, seconds), step=status.step, loss=f"{status.loss:.3f}",
                            speed=f"{status.tokens_per_second:,.0f}", bleu=bleu)

        yield update
