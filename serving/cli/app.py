"""The ``headprune`` command group and the option helpers its commands share.

The commands live in the sibling modules (one per stage) and register themselves on
``main``; ``serving.cli`` imports them all.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps

import click
from rich.markup import escape

from exporter.atomic import write_error
from exporter.data import HEADERLESS, ROLES
from exporter.errors import HeadpruneError
from serving.progress import console


def _quiet_libraries() -> None:
    # Read by transformers and huggingface_hub when (and if) a command imports them ...
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # ... and applied directly when a caller (a test, a notebook) imported them already.
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def as_flags(text: str) -> str:
    """Returns ``text`` with each `parameter` the library names replaced by the running command's option for it."""
    context = click.get_current_context(silent=True)
    if context is None:
        return text
    flags = {p.name: max(p.opts, key=len) for p in context.command.params if isinstance(p, click.Option)}
    return re.sub(r"`(\w+)`", lambda match: flags.get(match.group(1), match.group(0)), text)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every output being written is cleaned up the same way."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Makes SIGTERM raise Terminated during the block (Python's default would end the process without cleaning
    up); yields nothing. A command that handles signals itself (serve) replaces this for its own run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(*_):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show(error: HeadpruneError) -> None:
    console.print(f"[red]error:[/red] {escape(as_flags(error.message))}", highlight=False, soft_wrap=True)
    if error.fix:
        console.print(f"[yellow]  fix:[/yellow] {escape(as_flags(error.fix))}", highlight=False, soft_wrap=True)


def _ignore_interruptions() -> dict:
    """Ignores SIGINT and SIGTERM (main thread only); returns the handlers they had."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}


def _exit_interrupted(interrupt: KeyboardInterrupt) -> None:
    """Says the run was interrupted and exits with 130 (Ctrl-C) or 143 (SIGTERM). Outputs are cleaned up by then:
    further signals are ignored until the process ends, so that a second Ctrl-C does not end it with a traceback
    (an in-process caller, such as a test, gets its handlers back)."""
    terminated = isinstance(interrupt, Terminated)
    previous = _ignore_interruptions()
    atexit.register(_ignore_interruptions)
    try:
        console.print(
            f"[red]interrupted[/red] ({'SIGTERM' if terminated else 'Ctrl-C'}): outputs are replaced only "
            "once complete, so each is the previous one or the complete new one",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(143 if terminated else 130)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def friendly_errors(command):
    """Turns a HeadpruneError (or a full, read-only or forbidden output) into a two-line message and exit code 2,
    without a traceback; an interruption (Ctrl-C, SIGTERM) into one line and exit code 130 or 143.

    Library messages name Python parameters in backticks; the message shows this command's options instead."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_interrupts():
                return command(*args, **kwargs)
        except HeadpruneError as error:
            _show(error)
        except OSError as error:  # a write outside the atomic helpers
            converted = write_error(error, error.filename)
            if converted is None:
                raise
            _show(converted)
        except KeyboardInterrupt as interrupt:
            _exit_interrupted(interrupt)
        sys.exit(2)

    return wrapper


def data_options(command):
    """Adds the data file options shared by every command that reads examples: column names (or positions) and
    encoding."""
    command = click.option(
        "--encoding", default="utf-8", show_default=True, help="Text encoding of the data files (e.g. latin-1)."
    )(command)
    command = click.option(
        "--no-header",
        is_flag=True,
        help="CSV/TSV files without a header row: the column options give 0-based positions; "
        "roles not given take the other columns in order (text or source, then label or "
        "target).",
    )(command)
    for role in reversed(ROLES):
        option = role.replace("_", "-")
        command = click.option(
            f"--{option}-column",
            default=None,
            metavar="NAME",
            help=f"Column holding the '{role}' role (default: {role}; with --no-header its 0-based position).",
        )(command)
    return command


def data_source(kwargs: dict) -> dict:
    """Returns read_examples' ``columns`` and ``encoding`` arguments, taken out of the data options' values (with
    --no-header, columns are 0-based positions)."""
    given = {role: kwargs.pop(f"{role}_column", None) for role in ROLES}
    columns = {role: name for role, name in given.items() if name}
    if kwargs.pop("no_header", False):
        wrong = [f"--{role.replace('_', '-')}-column {name!r}" for role, name in columns.items() if not name.isdigit()]
        if wrong:
            raise HeadpruneError(
                f"{', '.join(wrong)}: with --no-header a column is a 0-based position",
                "give positions such as 0 or 1, or drop --no-header to name the header's columns",
            )
        columns = {HEADERLESS: True, **{role: int(name) for role, name in columns.items()}}
    return {"columns": columns, "encoding": kwargs.pop("encoding", "utf-8")}


overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace an existing non-empty --out (refused otherwise; replaced atomically)."
)


def default_of(cls, name: str):
    """Returns the default of dataclass field ``name`` of ``cls``: options read the library's defaults, written once."""
    field = cls.__dataclass_fields__[name]
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def int_list(text: str) -> list[int]:
    """Returns the integers of a comma-separated list such as '1,4,16'."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers, e.g. 1,4,16") from error


def emit(data: dict, as_json: bool, human: str) -> None:
    """Prints JSON on stdout with --json, otherwise the human text."""
    click.echo(json.dumps(data, indent=2) if as_json else human)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="headprune")
def main():
    """headprune: remove the attention heads a transformer does not need, export it
    to ONNX, serve it with Triton, and measure what it gained.

    \b
    Typical flow:
      headprune heads MODEL_DIR
      headprune score MODEL_DIR --data score.jsonl --out scores.json
      headprune prune MODEL_DIR --scores scores.json --fraction 0.3 --out pruned/
      headprune export pruned/ --repo model_repo --name pruned30
      headprune compare --repo model_repo --baseline base --candidate pruned30 --data eval.jsonl --out reports/x
    """
    _quiet_libraries()
    # Past `ulimit -f`, a write then fails with EFBIG (reported like a full disk) instead of SIGXFSZ ending the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
