"""Atomic outputs (write into a temporary sibling, then rename over the target), and reading JSON back.

An interrupted run leaves either the previous result or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exporter.errors import HeadpruneError

# Linux renameat2: swap two paths in one step.
AT_FDCWD, RENAME_EXCHANGE = -100, 2
# A staging folder younger than this may not be locked by its creator yet.
FRESH_S = 2.0


def refuse_existing(target: str | Path, overwrite: bool, resumable: bool = False) -> None:
    """Raises HeadpruneError when ``target`` exists and is not an empty folder, unless ``overwrite``.

    ``resumable`` outputs (a comparison's journal) are offered continuing before replacing."""
    target = Path(target)
    if overwrite or not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    options = (
        "continue it (`resume`), or replace it and its measurements (`overwrite`)"
        if resumable
        else "or allow replacing it (`overwrite`)"
    )
    raise HeadpruneError(
        f"output '{target}' already exists and is not empty; nothing was written",
        f"choose another output folder, {options}",
    )


WRITE_PROBLEMS = {
    errno.ENOSPC: ("no space is left on its device", "free some space there, or write to another folder"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space within your quota, or write to another folder"),
    errno.EFBIG: (
        "a file exceeds the size limit (ulimit -f) or the file system's largest file",
        "raise the limit (ulimit -f unlimited), or write to another folder",
    ),
    errno.EROFS: ("it is on a read-only file system", "write to a writable folder, or remount it read-write"),
    errno.EACCES: ("permission denied", "write to a folder you may write to, or change its permissions"),
    errno.EPERM: ("operation not permitted", "write to a folder you may write to, or change its permissions"),
}


class WriteError(HeadpruneError):
    """An output could not be written because its disk is full or read-only, or permissions forbid it."""


def write_error(error: BaseException, path: str | Path | None) -> WriteError | None:
    """Returns a WriteError naming ``path`` when ``error`` is the disk's or the permissions' fault (full, read-only,
    not allowed), None for any other error."""
    code = _errno_of(error)
    if code is None:
        return None
    problem, fix = WRITE_PROBLEMS[code]
    where = f"'{path}'" if path is not None else "an output"
    return WriteError(f"cannot write {where}: {problem}; nothing half-written was left", fix)


def _errno_of(error: BaseException | None) -> int | None:
    """Returns the WRITE_PROBLEMS code behind ``error`` or its causes, None if there is none.

    Writers in other languages raise their own types (safetensors: "... (os error 28)"; C++ libraries quote strerror)."""
    while error is not None:
        if isinstance(error, OSError):
            return error.errno if error.errno in WRITE_PROBLEMS else None
        text = str(error)
        for code in WRITE_PROBLEMS:
            if f"(os error {code})" in text or os.strerror(code) in text:
                return code
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turns an error of a full, read-only or forbidden output (OSError, or a library's own error quoting one) into a
    WriteError naming ``path``; yields nothing. Nested, the outermost path is named: the output the caller asked
    for, not a temporary file inside it."""
    try:
        yield
    except WriteError as error:
        raise (write_error(error.__cause__, path) or error) from error.__cause__
    except HeadpruneError:
        raise
    except Exception as error:
        converted = write_error(error, path)
        if converted is None:
            raise
        raise converted from error


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds SIGINT and SIGTERM until the block ends, then acts on the first one received; yields nothing.

    For steps that must not be cut in half (renaming a finished output in, removing a staging
    folder). Only the main thread receives signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, object]] = []
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    previous = {number: handler for number, handler in previous.items() if handler is not None}
    for number in previous:
        signal.signal(number, lambda *caught: received.append(caught))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number, frame in received[:1]:
            _deliver(previous[number], number, frame)


def _deliver(handler, number: int, frame) -> None:
    """Does what ``handler`` does for signal ``number``: calls it, or for the default action raises the signal again."""
    if callable(handler):
        handler(number, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(number)


def remove_stale(parent: Path, prefix: str = "") -> None:
    """Removes the folders in ``parent`` starting with ``prefix`` that no running process holds: staging folders left
    by a run that was killed (SIGKILL, power loss), which no handler can clean up."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink() and _abandoned(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _abandoned(folder: Path) -> bool:
    """Returns whether no process holds ``folder``'s lock (and it is not brand new: its creator may not have locked it yet)."""
    try:
        if time.time() - folder.stat().st_mtime < FRESH_S:
            return False
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(handle)


@contextmanager
def staging_dir(parent: str | Path, prefix: str) -> Iterator[Path]:
    """Yields a new empty folder in ``parent``, locked against remove_stale while the block runs; afterwards whatever
    is left at its path (all of it after a failure, the replaced output after swap_in) is removed."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, prefix)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    lock = os.open(staging, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without locks: the folder is merely not protected
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        staging.chmod(0o755)
        yield staging
    finally:
        try:
            with signals_deferred():  # a signal held here is raised as the block ends: the lock still closes
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(lock)


def swap_in(staging: Path, target: Path) -> None:
    """Puts the finished folder ``staging`` at ``target``; the folder ``target`` held (if any) ends up at ``staging``
    (or is deleted where paths cannot be swapped in one step).

    Signals wait until it is done, so ``target`` always holds the old folder or the new one."""
    with signals_deferred():
        if not target.exists():
            staging.rename(target)
        elif not _exchange(staging, target):
            aside = staging.with_name(f"{staging.name}.old")
            target.rename(aside)
            staging.rename(target)
            shutil.rmtree(aside, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE); returns False where that is unsupported."""
    function = getattr(_libc(), "renameat2", None)
    if function is None:
        return False
    if function(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


@contextmanager
def atomic_dir(target: str | Path, staging_parent: str | Path | None = None, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder that replaces ``target`` when the block succeeds.

    An existing non-empty ``target`` is refused (HeadpruneError) unless ``overwrite``.
    The temporary folder (and the replaced one, until deleted) live in
    ``staging_parent`` (default: beside ``target``), which must be on the same file system.
    A full, read-only or forbidden output raises HeadpruneError naming ``target``.
    """
    target = Path(target)
    refuse_existing(target, overwrite)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with staging_dir(staging_parent or target.parent, f".{target.name}.tmp-") as staging:
            yield staging
            swap_in(staging, target)


@contextmanager
def atomic_files(folder: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder inside ``folder``; when the block succeeds, each file written into it replaces
    its namesake in ``folder``, one rename each with signals held; a failure or an interruption in the block replaces
    none of them (a rename failing half-way, e.g. on a folder of the same name, leaves the earlier ones replaced).

    For a set of files that describe each other (a report's JSON, Markdown and plots) in a folder holding more."""
    folder = Path(folder)
    with writing(folder):
        with staging_dir(folder, ".files.tmp-") as staging:
            yield staging
            with signals_deferred():
                for path in sorted(staging.iterdir()):
                    os.replace(path, folder / path.name)


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
    with writing(path):
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
