"""Interrupted writes: SIGINT and SIGTERM at seeded random points of `export`, `prune`, `finetune` and `recover`,
and SIGKILL of `export`, which nothing can catch.

Each command runs as a subprocess over a previous output. Afterwards the previous output is intact byte for byte
or fully replaced by a complete new one, nothing half-written is left beside it, and while it runs the output (and
every version folder of a repository, which Triton loads) is only ever seen complete. tests/test_interrupts.py
asserts this on a few runs; the campaign here counts it over many.

Run from the repository root: .venv/bin/python -m benchmarks.faults [--repetitions 10] [--seed 0]
(writes benchmarks/results/faults.json; then .venv/bin/python -m benchmarks.operations_doc renders it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from click.testing import CliRunner

from exporter.pruning.checkpoint import load_model
from exporter.triton.config import read_config
from exporter.triton.description import DeploymentDescription
from exporter.triton.layout import CONFIG_FILE, MODEL_FILE, ModelRepository
from serving.cli import main as cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # two shared cores
INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
POLL_S = 0.002
PLANS = {"old": {"encoder": {"0": [1]}}, "new": {"encoder": {"1": [0, 2]}}}
CHECKPOINT_FILES = {"config.json", "model.safetensors", "tokenizer.json"}
VERSION_FILES = {MODEL_FILE, "deployment.json", "validation.json"}
STAGED, RANDOM = "as soon as its temporary folder appears", "at random points"


def headprune(*args) -> list[str]:
    """Returns the command line running headprune with ``args``."""
    return [sys.executable, "-m", "serving", *map(str, args)]


def invoke(*args) -> None:
    """Runs headprune in this process (fast: the libraries are imported already); fails if it fails."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def tree(folder: Path) -> dict[str, bytes | None]:
    """Returns every entry under ``folder``, hidden ones too: files with their bytes, folders as None."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def check_version(folder: Path) -> None:
    """Fails unless a version folder is complete: the classifier's ONNX graph and description, or a text front end."""
    if (folder / "model.py").exists():
        json.loads((folder / "tokenizer" / "tokenizer.json").read_text())
        return
    onnx.checker.check_model(onnx.load(str(folder / MODEL_FILE)))
    DeploymentDescription.read(folder)


def check_repository(root: Path) -> None:
    """Fails unless Triton would find only complete models in ``root``: no hidden or temporary folders, each model's
    config parses, and it holds nothing but its config and complete numeric versions."""
    for model in root.iterdir():
        assert model.is_dir() and not model.name.startswith("."), f"Triton would try to load {model}"
        read_config(model / CONFIG_FILE)
        for entry in model.iterdir():
            assert entry.name == CONFIG_FILE or entry.name.isdigit(), f"leftover {entry}"
            if entry.name.isdigit():
                check_version(entry)


def partial_versions(root: Path) -> list[str]:
    """Returns the version folders in ``root`` that lack a file (cheap enough to call every few milliseconds)."""
    partial = []
    for version in root.glob("*/[0-9]*"):
        needed = {"model.py", "tokenizer"} if version.parent.name.endswith("_text") else VERSION_FILES
        if not needed <= set(os.listdir(version)):
            partial.append(str(version))
    return partial


@dataclass
class Case:
    """One command over a previous output: how to run it, where it stages, and what a complete new output is."""

    args: list
    output: Path  # the folder compared byte for byte
    staging: Path  # where the command builds its output (its temporary folders appear there)
    prefix: str  # the name of its temporary folders starts so
    is_new: Callable[[], None]  # fails unless the output is a complete new one
    partial: Callable[[], list[str]]  # what of the output is visible but incomplete


def checkpoint_case(args: list, out: Path, check: Callable[[Path], None]) -> Case:
    """Returns the case of a command that writes a checkpoint folder ``out``."""

    def partial():
        try:
            return [] if CHECKPOINT_FILES <= set(os.listdir(out)) else [str(out)]
        except FileNotFoundError:  # not even for a moment
            return [str(out)]

    return Case(args, out, out.parent, f".{out.name}.tmp-", lambda: check(out), partial)


def prune_case(tmp_path: Path, bert_dir: Path, cls_data: Path) -> Case:
    """Returns the prune case: plan 'old' written before, plan 'new' replacing it."""
    plans = {}
    for name, plan in PLANS.items():
        plans[name] = tmp_path / f"{name}_plan.json"
        plans[name].write_text(json.dumps(plan))
    out = tmp_path / "out"
    invoke("prune", bert_dir, "--plan", plans["old"], "--out", out)

    def check(folder):
        load_model(folder)
        assert json.loads((folder / "head_plan.json").read_text())["plan"] == PLANS["new"]

    return checkpoint_case(["prune", bert_dir, "--plan", plans["new"], "--out", out, "--overwrite"], out, check)


def finetune_case(tmp_path: Path, bert_dir: Path, cls_data: Path) -> Case:
    """Returns the finetune case: seed 1 written before, seed 2 replacing it."""
    out = tmp_path / "out"
    invoke("finetune", bert_dir, "--data", cls_data, "--out", out, "--epochs", 1, "--seed", 1)

    def check(folder):
        load_model(folder)
        assert json.loads((folder / "finetune.json").read_text())["seed"] == 2

    return checkpoint_case(
        ["finetune", bert_dir, "--data", cls_data, "--out", out, "--epochs", 1, "--seed", 2, "--overwrite"], out, check
    )


def recover_case(tmp_path: Path, bert_dir: Path, cls_data: Path) -> Case:
    """Returns the recover case: a rescaled checkpoint written before, a distilled one replacing it."""
    plan, pruned, out = tmp_path / "plan.json", tmp_path / "pruned", tmp_path / "out"
    plan.write_text(json.dumps(PLANS["new"]))
    invoke("prune", bert_dir, "--plan", plan, "--out", pruned)
    invoke("recover", pruned, "--teacher", bert_dir, "--data", cls_data, "--out", out, "--method", "rescale")

    def check(folder):
        load_model(folder)
        assert json.loads((folder / "recovery.json").read_text())["method"] == "distill"

    return checkpoint_case(
        [
            "recover",
            pruned,
            "--teacher",
            bert_dir,
            "--data",
            cls_data,
            "--out",
            out,
            "--method",
            "distill",
            "--overwrite",
        ],
        out,
        check,
    )


def export_case(tmp_path: Path, bert_dir: Path, cls_data: Path) -> Case:
    """Returns the export case: version 1 written before, each run adding the next version."""
    repo = tmp_path / "repo"
    invoke("export", bert_dir, "--repo", repo, "--name", "m")
    return Case(
        ["export", bert_dir, "--repo", repo, "--name", "m"],
        repo,
        ModelRepository(repo).staging,
        "",
        lambda: check_repository(repo),
        lambda: partial_versions(repo),
    )


CASES = {"export": export_case, "prune": prune_case, "finetune": finetune_case, "recover": recover_case}


@dataclass
class Run:
    """What a subprocess did: exit code, stderr, and when its staging folder appeared (seconds after start)."""

    returncode: int
    stderr: str
    seconds: float
    staged_after: float | None
    partial: list[str]


def staged(case: Case) -> bool:
    """Returns whether a temporary folder of ``case`` exists."""
    return case.staging.is_dir() and any(p.startswith(case.prefix) for p in os.listdir(case.staging))


def run(case: Case, signals: list[int] = (), delay: float | None = None) -> Run:
    """Runs the case's command; sends ``signals`` (10 ms apart) ``delay`` seconds after the start, or, without a
    delay, as soon as its staging folder appears. Watches the output all along for anything incomplete; returns
    the Run."""
    started, staged_after, partial, sent = time.monotonic(), None, set(), not signals
    process = subprocess.Popen(
        headprune(*case.args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        while process.poll() is None:
            partial.update(case.partial())
            now = time.monotonic() - started
            if staged_after is None and staged(case):
                staged_after = now
            if not sent and (now >= delay if delay is not None else staged_after is not None):
                for number in signals:
                    process.send_signal(number)
                    time.sleep(0.01)
                sent = True
            time.sleep(POLL_S)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return Run(process.returncode, stderr, time.monotonic() - started, staged_after, sorted(partial))


def check_outcome(case: Case, before: dict, result: Run, signals: list[int]) -> None:
    """Fails unless the previous output is intact or fully replaced, nothing temporary is left, and an interruption
    was reported as one, without a traceback."""
    assert not result.partial, f"visible while incomplete: {result.partial}"
    if tree(case.output) != before:
        case.is_new()
    assert not staged(case), f"temporary folder left in {case.staging}: {os.listdir(case.staging)}"
    if result.returncode in INTERRUPTED.values():
        assert "interrupted" in result.stderr and "the previous one or the complete new one" in result.stderr, (
            result.stderr
        )
        assert "Traceback" not in result.stderr, result.stderr
    elif result.returncode != 0:  # the signal came before the command began (imports) or after it ended (shutdown)
        assert -result.returncode in signals or result.returncode == 1, result.stderr
        assert "error:" not in result.stderr, result.stderr


def check_interrupted(case: Case, before: dict, result: Run, signals: list[int], delay: float | None) -> None:
    """Fails unless check_outcome passes and, when the signals came as the output was being written (no delay),
    the run ended interrupted or complete."""
    check_outcome(case, before, result, signals)
    if delay is None:
        assert result.returncode in (0, *INTERRUPTED.values()), result.stderr


def measured_run(case: Case) -> Run:
    """Runs the case's command to completion and fails unless it replaced the output with a complete new one;
    returns the Run (its duration places the random signals)."""
    before = tree(case.output)
    full = run(case)
    assert full.returncode == 0, full.stderr
    assert tree(case.output) != before and full.staged_after is not None
    case.is_new()
    check_outcome(case, before, full, [])
    return full


def signal_plans(command: str, seconds: float, random_points: int, seed: int) -> list[tuple[list[int], float | None]]:
    """Returns (signals, delay) pairs: SIGTERM with SIGINT on its heels as soon as the output is being written
    (delay None), then ``random_points`` single SIGINTs or SIGTERMs at seeded random points of a ``seconds`` run."""
    rng = random.Random(f"interrupts-{command}-{seed}")
    plans = [([signal.SIGTERM, signal.SIGINT], None)]
    return plans + [([rng.choice(list(INTERRUPTED))], rng.uniform(0.4, 1.0) * seconds) for _ in range(random_points)]


def interrupted_runs(case: Case, plans: list) -> Iterator[tuple[list[int], float | None, dict, Run]]:
    """Yields (signals, delay, the output before, the Run) for each plan in turn; the next run starts only when
    asked for, so the caller checks each one on the output it left."""
    for signals, delay in plans:
        before = tree(case.output)
        yield signals, delay, before, run(case, signals, delay)


def failure(check: Callable, *args) -> str | None:
    """Returns what ``check(*args)`` found wrong, or None when it passed."""
    try:
        check(*args)
    except Exception as error:  # an AssertionError, or whatever reading an incomplete output raised
        return f"{type(error).__name__}: {error}"[:2000]
    return None


def outcome(case: Case, before: dict, result: Run, failed: str | None) -> dict:
    """Returns what one interrupted run did: its exit code, whether the previous output is intact or was replaced by
    a complete new one, whether anything partial was ever visible, and the failed check (None: every check passed)."""
    intact = tree(case.output) == before
    return {
        "returncode": result.returncode,
        "intact": intact,
        "replaced": not intact and failure(case.is_new) is None,
        "partial_visible": bool(result.partial),
        "failure": failed,
    }


def tally(outcomes: list[dict]) -> dict:
    """Returns the counts over ``outcomes``: times, previous output intact, replaced by a complete new one, partial
    ever visible, every check passed, the exit codes seen (code: times) and the failed checks."""
    return {
        "times": len(outcomes),
        "intact": sum(o["intact"] for o in outcomes),
        "replaced": sum(o["replaced"] for o in outcomes),
        "partial_visible": sum(o["partial_visible"] for o in outcomes),
        "passed": sum(o["failure"] is None for o in outcomes),
        "exit_codes": {str(code): n for code, n in sorted(Counter(o["returncode"] for o in outcomes).items())},
        "failures": [o["failure"] for o in outcomes if o["failure"]],
    }


def interrupt_campaign(command: str, root: Path, bert_dir: Path, data: Path, repetitions: int, seed: int) -> dict:
    """Runs ``command`` in ``root`` over a previous output once to completion, then interrupts it once as soon as
    its temporary folder appears and ``repetitions`` times at seeded random points. Returns the full run's seconds
    and the counts (see tally) for each of the two timings, STAGED and RANDOM."""
    case = CASES[command](root, bert_dir, data)
    full = measured_run(case)
    runs = interrupted_runs(case, signal_plans(command, full.seconds, repetitions, seed))
    timed = [
        (delay, outcome(case, before, result, failure(check_interrupted, case, before, result, signals, delay)))
        for signals, delay, before, result in runs
    ]
    return {
        "full_run_seconds": round(full.seconds, 1),
        STAGED: tally([o for delay, o in timed if delay is None]),
        RANDOM: tally([o for delay, o in timed if delay is not None]),
    }


def check_killed(case: Case, before: dict, result: Run) -> None:
    """Fails unless a SIGKILLed export left the repository as it was, and its staging folder outside it."""
    assert result.returncode == -signal.SIGKILL and not result.partial
    assert tree(case.output) == before
    check_repository(case.output)
    assert any(case.staging.iterdir()), "the kill came while the version was being built: its staging folder is left"


def rerun_after_kill(case: Case) -> tuple[list[Path], Run]:
    """Runs the export again over what a kill left in its staging folder; returns those leftovers and the Run."""
    left = list(case.staging.iterdir())
    for folder in left:  # as old as a real leftover usually is (a brand new one may not be locked yet)
        os.utime(folder, (time.time() - 60, time.time() - 60))
    return left, run(case)


def check_rerun(case: Case, left: list[Path], again: Run, versions: list[int]) -> None:
    """Fails unless the export after a kill succeeded, removed the leftovers and added one version to ``versions``."""
    assert again.returncode == 0, again.stderr
    assert not set(case.staging.iterdir()) & set(left)
    check_repository(case.output)
    assert ModelRepository(case.output).versions("m") == [*versions, versions[-1] + 1]


def kill_campaign(root: Path, bert_dir: Path, data: Path, repetitions: int) -> dict:
    """SIGKILLs an export in ``root`` ``repetitions`` times as its version is being built, each time followed by a
    clean export; returns the counts (see tally), where a failed check of the kill or of the next export counts."""
    case = export_case(root, bert_dir, data)
    outcomes = []
    for _ in range(repetitions):
        versions, before = ModelRepository(case.output).versions("m"), tree(case.output)
        result = run(case, [signal.SIGKILL])
        killed = outcome(case, before, result, failure(check_killed, case, before, result))
        left, again = rerun_after_kill(case)
        killed["failure"] = killed["failure"] or failure(check_rerun, case, left, again, versions)
        outcomes.append(killed)
    return tally(outcomes)


def row(fault: str, counts: dict) -> dict:
    """Returns the docs table row of ``counts`` (see tally)."""
    times = counts["times"]
    return {
        "fault": fault,
        "times": times,
        "intact": f"{counts['intact'] + counts['replaced']} of {times}",
        "partial_visible": f"{counts['partial_visible']} of {times}",
        "exit_codes": counts["exit_codes"],
        "passed": f"{counts['passed']} of {times}",
    }


def faults(campaigns: dict, killed: dict) -> dict[str, dict]:
    """Returns the counts (see tally) by fault: each command's random and staged interruptions, then the kills."""
    by_fault = {}
    for command, counts in campaigns.items():
        by_fault[f"`{command}`: SIGINT or SIGTERM at a random point of the run"] = counts[RANDOM]
        by_fault[f"`{command}`: SIGTERM, then SIGINT, {STAGED}"] = counts[STAGED]
    return {**by_fault, "`export`: SIGKILL as its version is being built, then a clean export": killed}


def _labelled(texts: list[str]) -> list[dict]:
    return [{"text": text, "label": ("negative", "positive")[i % 2]} for i, text in enumerate(texts)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=10, help="random interruptions per command, and kills")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from benchmarks.suite import save
    from tests.helpers import make_bert, random_sentences, write_jsonl

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="headprune-faults-") as folder:
        root = Path(folder)
        bert_dir = make_bert(root / "bert")
        data = write_jsonl(root / "cls.jsonl", _labelled(random_sentences(64, seed=1)))
        campaigns = {}
        for command in CASES:
            (root / command).mkdir()
            campaigns[command] = interrupt_campaign(
                command, root / command, bert_dir, data, args.repetitions, args.seed
            )
            print(command, json.dumps(campaigns[command]), flush=True)
        (root / "kill").mkdir()
        killed = kill_campaign(root / "kill", bert_dir, data, args.repetitions)
        print("kill", json.dumps(killed), flush=True)
    by_fault = faults(campaigns, killed)
    total = {
        "faults": sum(c["times"] for c in by_fault.values()),
        "survived": sum(c["passed"] for c in by_fault.values()),
    }
    path = save(
        "faults",
        {
            "repetitions": args.repetitions,
            "seed": args.seed,
            "total": total,
            "rows": [row(fault, counts) for fault, counts in by_fault.items()],
            "commands": campaigns,
            "export_killed": killed,
        },
        started,
    )
    print(f"{total['survived']} of {total['faults']} faults survived; wrote {path}")


if __name__ == "__main__":
    main()
