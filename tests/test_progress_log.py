"""Progress where no bar can be drawn: output redirected to a file still gets a line per phase and at a steady
interval, with the elapsed time and the time left."""

from __future__ import annotations

import subprocess
import sys

from serving.progress import ProgressLog


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_at_the_start_every_interval_and_at_the_end():
    clock, lines = Clock(), []
    log = ProgressLog("fine-tuning", 100, interval=30, write=lines.append, clock=clock)
    for _ in range(10):
        clock.now += 10
        log.advance(5)  # 5 examples every 10 s: 50 of 100 after 100 s
    log.close()
    assert lines[0] == "fine-tuning: started (100 to do)"
    assert lines[1:4] == [
        "fine-tuning: 15/100, elapsed 0:00:30, ETA 0:02:50",
        "fine-tuning: 30/100, elapsed 0:01:00, ETA 0:02:20",
        "fine-tuning: 45/100, elapsed 0:01:30, ETA 0:01:50",
    ]
    assert lines[-1] == "fine-tuning: 50/100, elapsed 0:01:40, ETA 0:01:40 (finished)"
    assert len(lines) == 5


def test_training_status_lines_carry_its_figures():
    clock, lines = Clock(), []
    log = ProgressLog("training", 1200, write=lines.append, clock=clock, unit=" s")
    clock.now = 300
    log.update(300, "step 166, loss 5.210, 2,900 tok/s, BLEU 0.03")
    assert (
        lines[-1] == "training: 300/1200 s, elapsed 0:05:00, ETA 0:15:00, step 166, loss 5.210, 2,900 tok/s, BLEU 0.03"
    )
    # A training budget counts its own seconds: 30 s of setup before its clock started do not stretch the time left.
    clock, lines = Clock(), []
    log = ProgressLog("training", 1200, write=lines.append, clock=clock, unit=" s", wall_clock=True)
    clock.now = 45
    log.update(15)
    assert lines[-1] == "training: 15/1200 s, elapsed 0:00:45, ETA 0:19:45"


def test_a_redirected_command_logs_its_phases():
    probe = "from serving.progress import progress_bar\nwith progress_bar('scoring', 3) as advance:\n    advance(3)\n"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "scoring: started (3 to do)" in result.stderr and "scoring: 3/3" in result.stderr
