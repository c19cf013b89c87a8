"""The ``headprune`` command group and the option helpers its commands share.

The commands live in the sibling modules (one per stage) and register themselves on
``main``; ``serving.cli`` imports them all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from functools import wraps

import click
from rich.markup import escape

from exporter.data import ROLES
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


def friendly_errors(command):
    """Turns a HeadpruneError into a two-line message and exit code 2, without a traceback.

    Library messages name Python parameters in backticks; the message shows this command's options instead."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HeadpruneError as error:
            console.print(f"[red]error:[/red] {escape(as_flags(error.message))}", highlight=False, soft_wrap=True)
            if error.fix:
                console.print(f"[yellow]  fix:[/yellow] {escape(as_flags(error.fix))}", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper


def data_options(command):
    """Adds the data file options shared by every command that reads examples: column names and encoding."""
    command = click.option("--encoding", default="utf-8", show_default=True,
                           help="Text encoding of the data files (e.g. latin-1).")(command)
    for role in reversed(ROLES):
        option = role.replace("_", "-")
        command = click.option(f"--{option}-column", default=None, metavar="NAME",
                               help=f"Column holding the '{role}' role (default: {role}).")(command)
    return command


def data_source(kwargs: dict) -> dict:
    """Returns read_examples' ``columns`` and ``encoding`` arguments, taken out of the data options' values."""
    given = {role: kwargs.pop(f"{role}_column", None) for role in ROLES}
    columns = {role: name for role, name in given.items() if name}
    return {"columns": columns, "encoding": kwargs.pop("encoding", "utf-8")}


overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace an existing non-empty --out (refused otherwise; replaced atomically).")


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

