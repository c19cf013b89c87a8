"""Interrupted writes: SIGINT and SIGTERM at seeded random points of `export`, `prune`, `finetune` and `recover`,
and SIGKILL, which nothing can catch (the campaign itself lives in benchmarks/faults.py, which counts it over many
runs for docs/operations.md).

Each command runs as a subprocess over a previous output. Afterwards the previous output is intact byte for byte
or fully replaced by a complete new one, nothing half-written is left beside it, and while it runs the output (and
every version folder of a repository, which Triton loads) is only ever seen complete.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.faults import (
    CASES,
    check_interrupted,
    check_killed,
    check_rerun,
    export_case,
    interrupted_runs,
    measured_run,
    rerun_after_kill,
    run,
    signal_plans,
    tree,
)
from exporter import atomic
from exporter.atomic import signals_deferred

REPETITIONS = 3  # interruptions per command: one as the output is being written, the rest at random points


@pytest.mark.slow
@pytest.mark.parametrize("command", CASES)
def test_interrupted_commands_keep_the_previous_output(command, bert_dir, cls_data, tmp_path):
    """One run to completion (it replaces the output and measures the run), one SIGTERM as the output is being
    written with a second signal on its heels, then SIGINT and SIGTERM at seeded random points of the run."""
    case = CASES[command](tmp_path, bert_dir, cls_data)
    full = measured_run(case)
    plans = signal_plans(command, full.seconds, REPETITIONS - 1, seed=0)
    for signals, delay, before, result in interrupted_runs(case, plans):
        check_interrupted(case, before, result, signals, delay)


@pytest.mark.slow
def test_a_killed_export_leaves_its_staging_outside_the_repository_and_the_next_run_removes_it(
    bert_dir, cls_data, tmp_path
):
    """SIGKILL cannot be caught: whatever it leaves must lie outside the repository, and the next export removes it."""
    case = export_case(tmp_path, bert_dir, cls_data)
    before = tree(case.output)
    result = run(case, [signal.SIGKILL])
    check_killed(case, before, result)
    left, again = rerun_after_kill(case)
    check_rerun(case, left, again, [1])


@pytest.fixture
def interruptible():
    """Python's own SIGINT handler, which a shell that starts the tests in the background leaves ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_signals_wait_until_a_deferred_block_ends(interruptible):
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            finished = True
    assert finished


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_swap_in_replaces_a_folder_and_leaves_the_old_one_at_the_staging_path(exchange, tmp_path, monkeypatch):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    with atomic.atomic_dir(tmp_path / "out") as staging:
        (staging / "a").write_text("old")
    with atomic.atomic_dir(tmp_path / "out", overwrite=True) as staging:
        (staging / "a").write_text("new")
    assert tree(tmp_path) == {"out": None, "out/a": b"new"}


def test_remove_stale_spares_folders_a_running_process_holds(tmp_path):
    with atomic.staging_dir(tmp_path, "s-") as held:
        abandoned = Path(tempfile.mkdtemp(prefix="s-", dir=tmp_path))
        for folder in (held, abandoned):
            os.utime(folder, (time.time() - 60, time.time() - 60))
        atomic.remove_stale(tmp_path)
        assert held.exists() and not abandoned.exists()
    assert not any(tmp_path.iterdir())
