"""Atomic outputs (write into a temporary sibling, then rename over the target), and reading JSON back.

An interrupted run leaves either the previous result or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exporter.errors import HeadpruneError


def refuse_existing(target: str | Path, overwrite: bool, resumable: bool = False) -> None:
    """Raises HeadpruneError when ``target`` exists and is not an empty folder, unless ``overwrite``.

    ``resumable`` outputs (a comparison's journal) are offered continuing before replacing."""
    target = Path(target)
    if overwrite or not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    options = "continue it (`resume`), or replace it and its measurements (`overwrite`)" if resumable else \
        "or allow replacing it (`overwrite`)"
    raise HeadpruneError(f"output '{target}' already exists and is not empty; nothing was written",
                         f"choose another output folder, {options}")


@contextmanager
def atomic_dir(target: str | Path, staging_parent: str | Path | None = None, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder that replaces ``target`` when the block succeeds.

    An existing non-empty ``target`` is refused (HeadpruneError) unless ``overwrite``.
    The temporary folder (and the replaced one, until deleted) live in
    ``staging_parent`` (default: beside ``target``), which must be on the same file system.
    """
    target = Path(target)
    refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    parent = Path(staging_parent) if staging_parent else target.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    staging.chmod(0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask_mode() -> int:
    # mkstemp creates files 0600; outputs should get the usual umask-based mode.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _publish(tmp: str | Path, path: str | Path) -> None:
    """Gives a finished temporary file the usual permissions and renames it over ``path``."""
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary file beside ``path`` (same suffix) to write; it replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file and a rename; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_copy(source: str | Path, path: str | Path) -> Path:
    """Copies ``source`` to ``path`` through a temporary file and a rename; returns the path."""
    with atomic_file(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


def read_json(path: str | Path, missing: str, fix: str):
    """Returns the JSON data in ``path``; raises HeadpruneError saying ``missing`` (or that the file is damaged),
    with ``fix``, when it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise HeadpruneError(missing, fix) from error
    except json.JSONDecodeError as error:
        raise HeadpruneError(f"'{path}' is damaged ({error.msg} at line {error.lineno})", fix) from error


def atomic_write_json(path: str | Path, data: object) -> Path:
    """Writes ``data`` as indented JSON atomically; returns the path."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
