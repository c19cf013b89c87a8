"""Progress bars for long work (rich), shared by the CLI commands: they implement ``exporter.progress``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from exporter.evaluation.metrics import format_points
from exporter.progress import Advance

console = Console(stderr=True)
stdout = Console()
LOG_INTERVAL_S = 30.0  # where no bar can be drawn (output to a file), a progress line this often


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLog:
    """Progress as plain lines for output that is not a terminal (a log file, CI): one when the work starts, one every
    ``interval`` seconds while it runs, one when it ends; each with the elapsed time and, where the total is known,
    the estimated time left."""

    def __init__(
        self,
        description: str,
        total: float | None,
        interval: float = LOG_INTERVAL_S,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "",
        wall_clock: bool = False,
    ):
        self.description, self.total, self.interval, self.clock, self.unit = description, total, interval, clock, unit
        # The work counts its own wall-clock seconds (a training budget): the time left is what is left of them.
        self.wall_clock = wall_clock
        self.write = write or (lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
        self.done = 0.0
        self.started = self.last = clock()
        self.write(f"{description}: started" + (f" ({total:.0f}{unit} to do)" if total else ""))

    def status(self, done: float, details: str = "") -> str:
        """Returns the progress line for ``done`` of the total."""
        elapsed = self.clock() - self.started
        parts = [
            f"{done:.0f}/{self.total:.0f}{self.unit}" if self.total else f"{done:.0f}{self.unit} done",
            f"elapsed {_clock(elapsed)}",
        ]
        if self.total and done:
            left = self.total - done if self.wall_clock else elapsed * (self.total - done) / done
            parts.append(f"ETA {_clock(max(left, 0))}")
        return f"{self.description}: " + ", ".join(parts + ([details] if details else []))

    def update(self, done: float, details: str = "") -> None:
        """Records progress; writes a line when the interval has passed."""
        self.done = done
        if self.clock() - self.last >= self.interval:
            self.last = self.clock()
            self.write(self.status(done, details))

    def advance(self, amount: float = 1) -> None:
        """Records ``amount`` more done."""
        self.update(self.done + amount)

    def close(self, details: str = "") -> None:
        """Writes the closing line."""
        self.write(self.status(self.done, details) + " (finished)")


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Advance]:
    """Yields ``advance(n)`` for a progress bar on stderr that closes when the block ends (on a terminal; elsewhere
    a ``ProgressLog`` of plain lines)."""
    if not console.is_terminal:
        log = ProgressLog(description, total)
        try:
            yield log.advance
        finally:
            log.close()
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
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
    """Yields ``update(status)`` for a wall-clock bar over ``seconds`` showing step, loss, tokens/s and the latest BLEU
    (on a terminal; elsewhere a ``ProgressLog`` line every 30 seconds with the same figures)."""
    if not console.is_terminal:
        log = ProgressLog(description, seconds, unit=" s", wall_clock=True)

        def update_log(status) -> None:
            bleu = "-" if status.bleu is None else format_points(status.bleu)
            log.update(
                min(status.seconds, seconds),
                f"step {status.step}, loss {status.loss:.3f}, {status.tokens_per_second:,.0f} tok/s, BLEU {bleu}",
            )

        try:
            yield update_log
        finally:
            log.close()
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn(
            "step {task.fields[step]}  loss {task.fields[loss]}  {task.fields[speed]} tok/s  BLEU {task.fields[bleu]}"
        ),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=seconds, step=0, loss="-", speed="-", bleu="-")

        def update(status) -> None:
            bleu = "-" if status.bleu is None else format_points(status.bleu)
            progress.update(
                task,
                completed=min(status.seconds, seconds),
                step=status.step,
                loss=f"{status.loss:.3f}",
                speed=f"{status.tokens_per_second:,.0f}",
                bleu=bleu,
            )

        yield update
