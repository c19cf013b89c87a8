"""A comparison end to end: measure through Triton, then write the report, also when interrupted."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from exporter.atomic import refuse_existing
from exporter.progress import Phases, no_phases
from serving.benchmark.compare import CompareSettings, Comparison
from serving.report.report import build_report, write_report


def run_comparison(
    settings: CompareSettings,
    *,
    resume: bool = False,
    overwrite: bool = False,
    phases: Phases = no_phases,
    command: list[str] | None = None,
    extend: Callable[[dict], None] | None = None,
) -> Path:
    """Measures every deployment of ``settings`` (continuing a journal with ``resume``), writes the report into
    ``settings.out`` and returns report.md's path. An existing non-empty ``settings.out`` is refused unless
    ``resume`` or ``overwrite`` (which starts over: its earlier measurements are deleted).

    An interruption (Ctrl-C) or a failure mid-run still writes the report of what was measured,
    marked incomplete, and is then raised again. ``extend`` may add top-level sections to the
    report before it is written: it receives the report's ``extra`` sections to set them on.
    """
    refuse_existing(settings.out, overwrite or resume, resumable=True)
    comparison = Comparison(settings, phases)
    comparison.prepare(resume)
    try:
        comparison.run()
    finally:
        report = build_report(
            settings, comparison.facts, comparison.journal.records(), comparison.environment(), command or sys.argv
        )
        if extend is not None:
            extend(report.extra)
        path = write_report(report, settings.out)
    return path
