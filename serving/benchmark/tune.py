"""Serving-settings search, like Triton Model Analyzer on a small grid: instances, ONNX Runtime threads per
instance, thread spinning and the dynamic-batching delay of one exported model.

Every candidate is served side by side by one Triton (a temporary repository whose model
folders link to the model's version folders, each with its own config), measured in
interleaved trials, and compared with the model's current settings by the bootstrap used
everywhere else. The best candidate within the latency budget replaces the current
settings only if it is significantly faster.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from exporter.atomic import atomic_write_json
from exporter.errors import HeadpruneError
from exporter.progress import Phases, no_phases
from exporter.triton.config import DeploymentOptions, apply_serving_settings, read_config, write_config
from exporter.triton.layout import ModelRepository
from serving.benchmark.compare import latency_inputs
from serving.benchmark.deployment import describe_deployment
from serving.benchmark.latency import LatencyStats, Speedup, bootstrap_throughput, ratios
from serving.benchmark.loadgen import Cell, interleaved_windows
from serving.client import TritonClient
from serving.server.process import TritonServer, free_port

RECORD_FILE = "tune.json"


@dataclass(frozen=True)
class ServingSettings:
    """One point of the search: instances, intra-op threads per instance (0 = ONNX Runtime's default), spinning,
    dynamic-batching delay (µs)."""

    instances: int = 1
    threads: int = 0
    spinning: bool = True
    queue_delay_us: int = 100

    @property
    def label(self) -> str:
        """Returns a short name such as 'i2-t1-nospin-d100' (also a valid Triton model name suffix)."""
        threads = self.threads or "auto"
        return f"i{self.instances}-t{threads}-{'spin' if self.spinning else 'nospin'}-d{self.queue_delay_us}"

    def options(self, base: DeploymentOptions) -> DeploymentOptions:
        """Returns ``base`` with these settings."""
        return replace(
            base,
            instances=self.instances,
            threads=self.threads,
            spinning=self.spinning,
            queue_delay_us=self.queue_delay_us,
        )

    @classmethod
    def of_config(cls, config) -> "ServingSettings":
        """Returns the settings a Triton model config holds now."""
        params = {k: v.string_value for k, v in config.parameters.items()}
        instances = sum(group.count or 1 for group in config.instance_group) or 1
        return cls(
            instances,
            int(params.get("intra_op_threads", 0) or 0),
            params.get("allow_spinning", "1") != "0",
            int(config.dynamic_batching.max_queue_delay_microseconds),
        )


def default_grid(
    cores: int, queue_delays: list[int], instances: list[int] | None = None, threads: list[int] | None = None
) -> list[ServingSettings]:
    """Returns the (instances, threads) pairs to try, with and without spinning, at each delay: every pair of the
    given counts, or without any given, every pair that uses at most ``cores`` cores."""
    pairs = [
        (i, t)
        for i in instances or range(1, cores + 1)
        for t in threads or range(1, cores + 1)
        if instances or threads or i * t <= cores
    ]
    return [
        ServingSettings(i, t, spin, delay)
        for (i, t), spin, delay in itertools.product(pairs, (True, False), queue_delays)
    ]


@dataclass
class TuneSettings:
    """What ``tune`` measures: throughput at ``batch`` x ``concurrency``, p50 latency at batch 1 (concurrency 1)."""

    repo: Path
    model: str
    batch: int = 16
    concurrency: int = 1
    latency_budget_ms: float | None = None
    trials: int = 3
    requests: int = 4  # per throughput window
    latency_requests: int = 16  # per batch-1 window
    seq_len: int = 128
    seed: int = 0
    grid: list[ServingSettings] = field(default_factory=list)


@dataclass
class Measured:
    """One candidate's measurements over all trials."""

    settings: ServingSettings
    throughput_latencies: list[list[float]] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)
    latencies_b1: list[float] = field(default_factory=list)

    def stats(self) -> LatencyStats:
        """Returns the throughput cell's statistics."""
        return LatencyStats.from_trials(self.throughput_latencies, self.throughputs)

    @property
    def p50_b1(self) -> float:
        """Returns the median batch-1 latency in ms."""
        return float(np.median(self.latencies_b1))


def _variant_name(model: str, settings: ServingSettings) -> str:
    return f"{model}__{settings.label}"


def _stage_variants(repository: ModelRepository, model: str, candidates: list[ServingSettings], folder: Path) -> dict:
    """Writes one model folder per candidate into ``folder`` (its versions linked, not copied); returns
    {variant name: settings}."""
    config = read_config(repository.config_path(model))
    base = DeploymentOptions(max_batch_size=max(config.max_batch_size, 1))
    variants = {}
    for settings in candidates:
        name = _variant_name(model, settings)
        target = folder / name
        target.mkdir()
        for version in repository.versions(model):
            (target / str(version)).symlink_to(repository.version_folder(model, version).resolve())
        variant = apply_serving_settings(type(config).FromString(config.SerializeToString()), settings.options(base))
        variant.name = name
        write_config(variant, target)
        variants[name] = settings
    return variants


def measure_grid(settings: TuneSettings, phases: Phases = no_phases) -> list[Measured]:
    """Serves the current settings and every grid point side by side and measures them in interleaved trials;
    returns the measurements, current settings first."""
    repository = ModelRepository(Path(settings.repo))
    config = read_config(repository.config_path(settings.model))
    if config.backend != "onnxruntime":
        raise HeadpruneError(
            f"model '{settings.model}' uses the '{config.backend}' backend; tune searches ONNX Runtime settings",
            "tune an exported classifier (the model named in 'headprune export --name')",
        )
    current = ServingSettings.of_config(config)
    candidates = [current] + [s for s in dict.fromkeys(settings.grid) if s != current]
    facts = describe_deployment(settings.repo, settings.model, settings.seq_len)
    if settings.seq_len > facts.max_positions:
        raise HeadpruneError(
            f"sequence length {settings.seq_len} exceeds the {facts.max_positions} positions of '{settings.model}'",
            f"measure at {facts.max_positions} tokens or fewer (`seq_len`)",
        )
    batch_inputs = latency_inputs(facts, settings.batch, settings.seq_len, settings.seed)
    single_inputs = latency_inputs(facts, 1, settings.seq_len, settings.seed)
    with tempfile.TemporaryDirectory(prefix="headprune-tune-") as folder:
        variants = _stage_variants(repository, settings.model, candidates, Path(folder))
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        measured = {name: Measured(s) for name, s in variants.items()}
        advance = phases("serving settings (interleaved trials)", settings.trials * len(variants))
        with TritonServer(Path(folder), **ports) as server:
            cells = [
                Cell("throughput", batch_inputs, settings.concurrency, settings.requests),
                Cell("batch1", single_inputs, 1, settings.latency_requests),
            ]
            windows = interleaved_windows(
                lambda: TritonClient(server.http_url, "http"),
                list(variants),
                cells,
                settings.trials,
                ["logits"],
                advance,
            )
    for name, cell_windows in windows.items():
        measured[name].throughput_latencies = [w.latencies_ms for w in cell_windows["throughput"]]
        measured[name].throughputs = [w.throughput for w in cell_windows["throughput"]]
        measured[name].latencies_b1 = [x for w in cell_windows["batch1"] for x in w.latencies_ms]
    return list(measured.values())


@dataclass
class TuneResult:
    """The search's outcome: every candidate's figures and the settings chosen."""

    model: str
    batch: int
    concurrency: int
    latency_budget_ms: float | None
    candidates: list[dict]
    chosen: ServingSettings
    current: ServingSettings
    speedup: Speedup
    written: bool = False

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {
            "model": self.model,
            "batch": self.batch,
            "concurrency": self.concurrency,
            "latency_budget_ms": self.latency_budget_ms,
            "current": asdict(self.current),
            "chosen": asdict(self.chosen),
            "chosen_label": self.chosen.label,
            "speedup": self.speedup.to_dict(),
            "written": self.written,
            "candidates": self.candidates,
        }


def choose(measured: list[Measured], budget_ms: float | None, seed: int = 0) -> tuple[list[dict], Measured, Speedup]:
    """Returns (a row per candidate, the chosen one, its speedup over the current settings = ``measured[0]``): the
    fastest within the budget, kept only if significantly faster than the current settings."""
    rng = np.random.default_rng(seed)
    draws = [bootstrap_throughput(m.throughput_latencies, m.throughputs, rng) for m in measured]
    stats = [m.stats() for m in measured]
    current = measured[0]
    rows, speedups = [], []
    for m, s, d in zip(measured, stats, draws):
        speedup = Speedup.between(stats[0], s, ratios(draws[0], d))
        speedups.append(speedup)
        rows.append(
            {
                "settings": asdict(m.settings),
                "label": m.settings.label,
                "throughput": s.throughput,
                "p50_batch1_ms": m.p50_b1,
                "speedup": speedup.to_dict(),
                "within_budget": budget_ms is None or m.p50_b1 <= budget_ms,
            }
        )
    eligible = [i for i, row in enumerate(rows) if row["within_budget"]]
    if not eligible:
        return rows, current, speedups[0]
    best = max(eligible, key=lambda i: rows[i]["throughput"])
    if best != 0 and not (speedups[best].significant and speedups[best].ratio > 1):
        best = 0 if rows[0]["within_budget"] else best
    return rows, measured[best], speedups[best]


def tune(settings: TuneSettings, write: bool = True, out: Path | None = None, phases: Phases = no_phases) -> TuneResult:
    """Measures the grid and, with ``write``, rewrites the model's config.pbtxt with the chosen settings (atomically);
    returns the result, also saved as ``out`` (a JSON file) when given."""
    if not settings.grid:
        settings = replace(settings, grid=default_grid(os.cpu_count() or 1, [100]))
    measured = measure_grid(settings, phases)
    rows, chosen, speedup = choose(measured, settings.latency_budget_ms, settings.seed)
    result = TuneResult(
        settings.model,
        settings.batch,
        settings.concurrency,
        settings.latency_budget_ms,
        rows,
        chosen.settings,
        measured[0].settings,
        speedup,
    )
    if write and chosen.settings != measured[0].settings:
        repository = ModelRepository(Path(settings.repo))
        config = read_config(repository.config_path(settings.model))
        base = DeploymentOptions(max_batch_size=max(config.max_batch_size, 1))
        write_config(apply_serving_settings(config, chosen.settings.options(base)), repository.folder(settings.model))
        result.written = True
    if out is not None:
        atomic_write_json(out, result.to_dict())
    return result
