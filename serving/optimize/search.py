"""The search: candidates made from the levers, each measured against the unpruned model on the dev split, through
Triton; the fastest whose quality is non-inferior on dev is chosen.

Speed grows with the share of heads pruned, so the full recipe (every lever that applies) is bisected over the
pruning levels: a level whose candidate keeps the quality moves the search up, one that loses it moves it down.
Every measured candidate is a line of ``search.jsonl``; a rerun with the same settings skips what it holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from exporter.atomic import atomic_write_json, read_json
from exporter.errors import HeadpruneError
from exporter.progress import Phases, no_phases
from exporter.triton.layout import (
    ModelRepository,
    generate_model_name,
    image_model_name,
    text_model_name,
    translate_model_name,
)
from serving.benchmark.compare import CompareSettings, Comparison
from serving.benchmark.journal import Journal
from serving.benchmark.latency import Speedup, paired_speedup
from serving.optimize.levers import DISTILL, INT8, applies
from serving.optimize.report import unit_of
from serving.server.process import TritonServer, free_port

OBJECTIVES = ("throughput", "latency")


@dataclass
class OptimizeSettings:
    """Everything that defines an optimization; the fields that change its numbers form its signature."""

    model: Path
    train: Path
    dev: Path
    test: Path
    repo: Path
    name: str
    out: Path
    max_drop: float = 1.0
    objective: str = "throughput"  # throughput at batch_size, or p50 latency at batch 1
    batch_size: int = 16
    budget_minutes: float = 30.0
    step: float = 0.1  # the searched pruning levels: step, 2 * step, ... up to max_level
    max_level: float = 0.9
    search_trials: int = 3
    test_trials: int = 10
    seq_len: int = 128
    score_examples: int = 1000
    rescore_examples: int = 500
    distill_epochs: int = 1
    min_int8_agreement: float = 0.99  # share of training texts whose class INT8 must leave unchanged
    min_speedup: float = 1.0  # the choice must measure faster than this many times the unpruned model on dev
    columns: dict[str, str] = field(default_factory=dict)
    encoding: str = "utf-8"
    seed: int = 0

    @property
    def measured_batch(self) -> int:
        """Returns the batch size the objective is measured at."""
        return self.batch_size if self.objective == "throughput" else 1

    @property
    def levels(self) -> list[float]:
        """Returns the searched shares of heads pruned, in ascending order."""
        count = int(math.floor(self.max_level / self.step + 1e-9))
        return [round(self.step * i, 6) for i in range(1, count + 1)]

    def signature(self) -> dict:
        """Returns the settings that change what is measured (compared on a rerun)."""
        data = asdict(self)
        # Where the results go, how long to search and what the choice demands do not change a measurement.
        for key in ("repo", "name", "out", "budget_minutes", "test_trials", "min_speedup"):
            data.pop(key)
        return {key: str(value) if isinstance(value, Path) else value for key, value in data.items()}

    def check(self) -> None:
        """Raises HeadpruneError for settings that cannot work."""
        if self.objective not in OBJECTIVES:
            raise HeadpruneError(f"objective '{self.objective}' is unknown", f"use one of {', '.join(OBJECTIVES)}")
        if self.max_drop < 0:
            raise HeadpruneError(
                f"`max_drop` is {self.max_drop}: a drop budget cannot be negative",
                "give the largest quality drop you accept, e.g. 1",
            )
        if not 0 < self.step <= self.max_level < 1:
            raise HeadpruneError(
                f"levels from `step` {self.step} up to `max_level` {self.max_level} are not shares of heads in (0, 1)",
                "use e.g. a step of 0.1 up to 0.9",
            )
        if self.search_trials < 2 or self.test_trials < 2:
            raise HeadpruneError(
                "paired speed intervals need at least 2 trials on each split",
                "give `search_trials` and `test_trials` of 2 or more (10 for a headline figure)",
            )
        if self.batch_size < 1 or self.budget_minutes <= 0:
            raise HeadpruneError("`batch_size` and `budget_minutes` must be positive", "give positive values")
        if len({Path(p).resolve() for p in (self.dev, self.test)}) < 2:
            raise HeadpruneError(
                "the dev and test files are the same file: the choice would be proven on the data it was made on",
                "hold out a test split the search never sees",
            )


@dataclass(frozen=True)
class Candidate:
    """A deployment the search may choose: a pruning level, whether it is distilled, its precision."""

    level: float
    distill: bool = False
    precision: str = "fp32"

    @property
    def name(self) -> str:
        """Returns its model name in the work repository (no name is another's prefix followed by '_')."""
        return f"{self.precision}_{'distilled' if self.distill else 'plain'}_p{round(100 * self.level)}"

    @property
    def label(self) -> str:
        """Returns e.g. '80 % pruned, distilled, INT8' or 'unpruned, FP32'."""
        parts = [f"{round(100 * self.level)} % pruned" if self.level else "unpruned"]
        return ", ".join(parts + (["distilled"] if self.distill else []) + [self.precision.upper()])

    @property
    def steps(self) -> list["Candidate"]:
        """Returns the waterfall from the unpruned FP32 model to this candidate, one lever at a time."""
        steps = [BASELINE]
        if self.level:
            steps.append(Candidate(self.level))
            if self.distill:
                steps.append(Candidate(self.level, True))
        if self.precision != "fp32":
            steps.append(self)
        return steps

    @classmethod
    def from_dict(cls, data: dict) -> "Candidate":
        """Returns the candidate stored by ``to_dict``."""
        return cls(data["level"], data["distill"], data["precision"])

    def to_dict(self) -> dict:
        """Returns JSON-ready data with its name and label."""
        return {**asdict(self), "name": self.name, "label": self.label}


BASELINE = Candidate(0.0)


def recipe(task: str, level: float) -> Candidate:
    """Returns the candidate pulling every lever that applies to ``task`` at pruning ``level``."""
    return Candidate(level, applies(DISTILL, task) and level > 0, "int8" if applies(INT8, task) else "fp32")


def served_models(repo: Path, names: list[str]) -> list[str]:
    """Returns the models of ``repo`` serving the deployments ``names``: each one and its front ends."""
    repository = ModelRepository(repo)
    served = []
    for name in names:
        for model in (
            name,
            text_model_name(name),
            image_model_name(name),
            generate_model_name(name),
            translate_model_name(name),
        ):
            if repository.config_path(model).exists():
                served.append(model)
    return served


@contextmanager
def serving(repo: Path, names: list[str], log_file: Path, protocol: str = "http") -> Iterator[str]:
    """Yields the URL of a Triton serving only the deployments ``names`` of ``repo`` (loopback, no client model
    control)."""
    models = served_models(repo, names)
    server = TritonServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=log_file,
        model_args=("--model-control-mode=explicit", *(f"--load-model={m}" for m in models)),
    )
    with server:
        yield server.url(protocol)


def trial_speedup(records: list[dict], baseline: str, candidate: str, batch: int, objective: str) -> Speedup:
    """Returns the candidate's speedup over the baseline paired by trial: throughput ratio, or for the latency
    objective the baseline's p50 over the candidate's (above 1 is faster either way)."""
    import numpy as np

    def cells(name: str, value: Callable[[dict], float]) -> dict[int, tuple[float, int]]:
        return {
            r["trial"]: (value(r), len(r["latencies_ms"]))
            for r in records
            if r.get("record") == "latency" and r["deployment"] == name and r["batch_size"] == batch
        }

    # A latency speedup is the throughput-like ratio of inverse p50s: baseline p50 / candidate p50.
    value = (
        (lambda r: r["throughput"])
        if objective == "throughput"
        else (lambda r: 1 / float(np.median(r["latencies_ms"])))
    )
    return paired_speedup(cells(baseline, value), cells(candidate, value))


def quality_change(records: list[dict], baseline: str, candidate: str, seed: int) -> dict:
    """Returns the candidate's quality next to the baseline's and the 95 % paired interval of its gain, in points
    (negative is worse), from a comparison's quality records."""
    from exporter.evaluation.metrics import gain
    from exporter.evaluation.significance import paired_gain_interval, paired_p_value

    quality = {r["deployment"]: r for r in records if r.get("record") == "quality"}
    base, cand = quality[baseline], quality[candidate]
    low, high = paired_gain_interval(base["metric"], base["per_example"], cand["per_example"], seed=seed)
    return {
        "metric": cand["metric"],
        "value": cand["value"],
        "baseline_value": base["value"],
        "examples": cand["examples"],
        "gain": gain(cand["metric"], base["value"], cand["value"]),
        "gain_low": low,
        "gain_high": high,
        "p_value": paired_p_value(cand["metric"], base["per_example"], cand["per_example"]),
    }


def non_inferior(change: dict, max_drop: float) -> bool:
    """Returns whether the lower bound of the gain's 95 % interval lies above -``max_drop``."""
    return change["gain_low"] > -max_drop


class Search:
    """Makes, exports and measures candidates on the dev split; each measured one is a trial in the journal.

    ``make(candidate)`` builds the candidate's checkpoint and exports it into the work repository (see
    workshop.Workshop); the search only decides which to make and measures them.
    """

    def __init__(
        self,
        settings: OptimizeSettings,
        task: str,
        make: Callable[[Candidate], None],
        phases: Phases = no_phases,
        say: Callable[[str], None] = lambda _: None,
        spent_before: float = 0.0,
    ):
        self.settings, self.task, self.make, self.phases, self.say = settings, task, make, phases, say
        self.journal = Journal(settings.out / "search.jsonl")
        self.spent_before = spent_before  # seconds of the budget already used (finding the plans)

    def start(self, resume: bool) -> None:
        """Opens the journal: keeps its trials when ``resume`` and the settings match, else starts it afresh."""
        records = self.journal.records()
        signature = self.settings.signature()
        if resume and records and records[0].get("signature") != signature:
            raise HeadpruneError(
                f"'{self.journal.path}' was searched with other settings",
                "rerun with the same settings, or without `resume` to start over",
            )
        if not (resume and records):
            self.journal.reset()
            self.journal.append({"record": "start", "signature": signature, "started": time.time()})

    def trials(self) -> list[dict]:
        """Returns the measured trials, in the order they were made."""
        return [r for r in self.journal.records() if r.get("record") == "trial"]

    def _spent(self) -> float:
        return self.spent_before + sum(t["seconds"] for t in self.trials())

    def _affordable(self) -> bool:
        """Returns whether another candidate fits the budget, judged by the longest one so far."""
        longest = max((t["seconds"] for t in self.trials()), default=0.0)
        return self._spent() + longest <= 60 * self.settings.budget_minutes

    def measure(self, candidate: Candidate) -> dict:
        """Returns the candidate's trial (made, exported and measured against the baseline on dev unless the journal
        has it)."""
        known = next((t for t in self.trials() if t["candidate"]["name"] == candidate.name), None)
        if known:
            return known
        began = time.monotonic()
        self.say(f"trying {candidate.label}")
        try:
            self.make(candidate)
        except HeadpruneError as error:  # e.g. INT8 changing too many decisions: this candidate is out, not the run
            trial = {
                "record": "trial",
                "candidate": candidate.to_dict(),
                "failed": error.message,
                "quality": None,
                "eligible": False,
                "speedup": None,
                "seconds": round(time.monotonic() - began, 1),
            }
            self.journal.append(trial)
            self.say(f"  {candidate.label}: could not be made ({error.message})")
            return trial
        settings = self.settings
        folder = settings.out / "dev" / candidate.name
        compare = CompareSettings(
            repo=settings.out / "repo",
            baseline=BASELINE.name,
            candidates=[candidate.name],
            data=settings.dev,
            out=folder,
            batch_sizes=[settings.measured_batch],
            concurrency=[1],
            seq_len=settings.seq_len,
            trials=settings.search_trials,
            warmup=1,
            requests=6,
            examples=8 * settings.measured_batch,
            max_windows=1,
            columns=settings.columns,
            encoding=settings.encoding,
            seed=settings.seed,
        )
        with serving(compare.repo, compare.deployments, folder / "triton.log") as url:
            compare.url = url
            records = Comparison(compare, self.phases).run(resume=True)
        change = quality_change(records, BASELINE.name, candidate.name, settings.seed)
        speedup = trial_speedup(records, BASELINE.name, candidate.name, settings.measured_batch, settings.objective)
        trial = {
            "record": "trial",
            "candidate": candidate.to_dict(),
            "quality": change,
            "eligible": non_inferior(change, settings.max_drop),
            "speedup": speedup.to_dict(),
            "seconds": round(time.monotonic() - began, 1),
        }
        self.journal.append(trial)
        verdict = "keeps" if trial["eligible"] else "loses"
        self.say(
            f"  {candidate.label}: {verdict} the quality on dev (gain {change['gain']:+.2f} "
            f"{unit_of(change['metric'])}, 95 % [{change['gain_low']:+.2f}, {change['gain_high']:+.2f}]), "
            f"{speedup.format()} {settings.objective}"
        )
        return trial

    def run(self) -> tuple[list[dict], bool]:
        """Runs the search; returns (its trials, whether the budget stopped it before it was done)."""
        levels = self.settings.levels
        full = [recipe(self.task, level) for level in levels]
        if full[0].precision != "fp32":
            self.measure(Candidate(0.0, False, full[0].precision))  # the precision lever alone
        low, high = -1, len(levels)  # the highest level known to keep the quality, the lowest known to lose it
        while high - low > 1:
            middle = (low + high) // 2
            if not self._affordable():
                self.say(f"the budget of {self.settings.budget_minutes:g} minutes is spent: the search stops here")
                return self.trials(), True
            trial = self.measure(full[middle])
            if trial.get("failed") and full[middle].precision != "fp32":
                # INT8 could not be made (too many decisions changed): the same level in FP32 stands for it.
                trial = self.measure(replace(full[middle], precision="fp32"))
            if trial["eligible"]:
                low = middle
            else:
                high = middle
        return self.trials(), False


def choose(trials: list[dict], min_speedup: float = 1.0) -> dict | None:
    """Returns the fastest trial that kept the quality on dev and measured faster than ``min_speedup`` times the
    baseline (None if none did)."""
    eligible = [t for t in trials if t["eligible"] and t["speedup"]["ratio"] > min_speedup]
    return max(eligible, key=lambda t: t["speedup"]["ratio"], default=None)


def read_trials(out: Path) -> list[dict]:
    """Returns the trials recorded in ``out``/search.jsonl."""
    return [r for r in Journal(out / "search.jsonl").records() if r.get("record") == "trial"]


def save_plans(path: Path, plans: dict[float, dict], metric: str, masked: dict[float, float]) -> None:
    """Writes the re-scored plans of each level and the masked dev quality they give."""
    atomic_write_json(
        path,
        {
            "metric": metric,
            "levels": [{"level": level, "plan": plans[level], "masked_quality": masked[level]} for level in plans],
        },
    )


def load_plans(path: Path) -> tuple[dict[float, dict], dict]:
    """Returns ({level: plan dict}, the file's data) written by ``save_plans``."""
    data = read_json(path, f"'{path}' is missing", "rerun without `resume`")
    return {row["level"]: row["plan"] for row in data["levels"]}, data
