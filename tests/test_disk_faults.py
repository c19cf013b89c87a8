"""A full or read-only output folder: `export`, `prune` and the report writers fail with a clear error naming the
folder and the problem (exit code 2, no traceback) and leave everything as it was, previous output included.

The folder is a small tmpfs, filled up or remounted read-only, where this process may mount one (as root, here and
on CI); elsewhere "full" is a file size limit on the command (EFBIG) and "read-only" a folder without write
permission (skipped as root, whom permissions do not stop). HEADPRUNE_TEST_NO_MOUNT=1 forces the fallbacks.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from benchmarks.faults import ENV, PLANS, check_repository, headprune, invoke, tree
from exporter.errors import HeadpruneError
from serving.report.report import write_report
from tests.test_report import make_report

HEADROOM_KB = 16  # less than any output written here
PROBLEMS = {"full": ("no space is left", "size limit"), "read-only": ("read-only file system", "permission denied")}


class Disk:
    """A folder whose free space or writability a test takes away."""

    def __init__(self, folder: Path):
        folder.mkdir()
        self.folder = folder
        self.file_limit: int | None = None
        self.mounted = not os.environ.get("HEADPRUNE_TEST_NO_MOUNT") and self._mount(
            "-t", "tmpfs", "-o", "size=8m", "tmpfs"
        )

    def _mount(self, *options: str) -> bool:
        return subprocess.run(["mount", *options, str(self.folder)], capture_output=True).returncode == 0

    def take_away(self, problem: str) -> None:
        """Fills the folder up (all but a few KB) or makes it read-only."""
        if problem == "full" and self.mounted:
            used_kb = -(-self._used() // 1024)
            assert self._mount("-o", f"remount,size={used_kb + HEADROOM_KB}k")
        elif problem == "full":
            self.file_limit = HEADROOM_KB * 1024
        elif self.mounted:
            assert self._mount("-o", "remount,ro")
        elif os.geteuid() == 0:
            pytest.skip("root ignores permissions, and mounting a read-only file system is not permitted here")
        else:
            self._chmod(0o555)

    def _used(self) -> int:
        stats = os.statvfs(self.folder)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def _chmod(self, mode: int) -> None:
        for folder in [self.folder, *(p for p in self.folder.rglob("*") if p.is_dir())]:
            folder.chmod(mode)

    @property
    def in_process(self) -> bool:
        """Whether this process meets the problem too (a file size limit applies to the command only)."""
        return self.file_limit is None

    def run(self, *args) -> subprocess.CompletedProcess:
        """Runs headprune with ``args`` under the problem; returns the finished process."""
        return subprocess.run(
            headprune(*args),
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
            preexec_fn=self._limit if self.file_limit else None,
        )

    def _limit(self) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_limit, self.file_limit))

    def close(self) -> None:
        """Gives the folder back as it was."""
        if self.mounted:
            subprocess.run(["umount", str(self.folder)], capture_output=True).returncode == 0 or subprocess.run(
                ["umount", "-l", str(self.folder)], check=True
            )
        else:
            self._chmod(0o755)


@pytest.fixture
def disk(tmp_path):
    disk = Disk(tmp_path / "disk")
    try:
        yield disk
    finally:
        disk.close()


def check_refused(result: subprocess.CompletedProcess, target: Path, problem: str, disk: Disk, before: dict) -> None:
    """Fails unless the command stopped with exit code 2 and a message naming ``target``, the problem and a fix,
    without a traceback, and left the disk as it was."""
    assert result.returncode == 2, result.stderr
    assert f"error: cannot write '{target}'" in result.stderr, result.stderr
    assert any(text in result.stderr for text in PROBLEMS[problem]) and "  fix: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert tree(disk.folder) == before


@pytest.mark.parametrize("problem", PROBLEMS)
def test_export_into_a_full_or_read_only_repository(problem, disk, bert_dir):
    repo = disk.folder / "repo"
    invoke("export", bert_dir, "--repo", repo, "--name", "m")
    before = tree(disk.folder)
    disk.take_away(problem)
    result = disk.run("export", bert_dir, "--repo", repo, "--name", "m")
    check_refused(result, repo / "m" / "2", problem, disk, before)
    check_repository(repo)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_prune_into_a_full_or_read_only_folder(problem, disk, bert_dir, tmp_path):
    plans = {name: tmp_path / f"{name}.json" for name in PLANS}
    for name, path in plans.items():
        path.write_text(json.dumps(PLANS[name]))
    out = disk.folder / "pruned"
    invoke("prune", bert_dir, "--plan", plans["old"], "--out", out)
    before = tree(disk.folder)
    disk.take_away(problem)
    result = disk.run("prune", bert_dir, "--plan", plans["new"], "--out", out, "--overwrite")
    check_refused(result, out, problem, disk, before)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_a_report_into_a_full_or_read_only_folder(problem, disk, tmp_path):
    """Re-rendering (`headprune report`) and writing a new report both leave the previous report as it was."""
    folder = disk.folder / "report"
    write_report(make_report(tmp_path, {"fast": 2.0}), folder)
    before = tree(disk.folder)
    disk.take_away(problem)
    check_refused(disk.run("report", folder), folder, problem, disk, before)
    if disk.in_process:
        with pytest.raises(HeadpruneError, match=re.escape(f"cannot write '{folder}'")):
            write_report(make_report(tmp_path, {"fast": 3.0}), folder)
        assert tree(disk.folder) == before
