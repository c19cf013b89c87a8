"""Pruned vs unpruned deployments, measured through Triton: quality, latency, throughput, server breakdown."""

from __future__ import annotations

import itertools
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from exporter.data import batches, label_id, read_examples
from exporter.errors import HeadpruneError
from exporter.evaluation.metrics import accuracy, bleu, chrf, perplexity
from exporter.machine import cpu_model, int8_instructions
from exporter.progress import Phases, no_phases
from exporter.pruning.scores import HeadScores
from exporter.tasks import TASKS
from exporter.triton.layout import ModelRepository
from serving.benchmark.deployment import (
    DeploymentFacts,
    describe_deployment,
    describe_remote_deployment,
    exported_model,
)
from serving.benchmark.journal import Journal, record_type
from serving.benchmark.loadgen import run_window
from serving.client import TritonClient, strings_array
from serving.server.process import TritonServer, free_port

STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


# Per task with a quality metric: the Comparison method measuring it through the served models.
QUALITY_MEASURES = {
    "translation": "_translation_quality",
    "language-modeling": "_language_model_quality",
    "classification": "_classification_quality",
    "image-classification": "_image_quality",
}


@dataclass
class CompareSettings:
    """Everything that defines a comparison; part of every report's signature."""

    repo: Path
    baseline: str
    candidates: list[str]
    data: Path
    out: Path
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    seq_len: int = 128
    protocol: str = "http"
    url: str | None = None
    endpoints: dict[str, str] = field(default_factory=dict)  # deployment -> HOST:PORT of the Triton serving it
    trials: int = 3
    warmup: int = 5
    requests: int = 10
    examples: int = 256
    max_windows: int = 4
    stability: float = 0.05
    max_drop: float | None = None
    max_examples: int | None = None
    columns: dict[str, str] = field(default_factory=dict)
    encoding: str = "utf-8"
    scores: Path | None = None
    seed: int = 0

    @property
    def deployments(self) -> list[str]:
        """Returns the baseline followed by the candidates."""
        return [self.baseline, *self.candidates]

    def signature(self) -> dict:
        """Returns the settings that change the numbers (compared on --resume)."""
        keys = (
            "baseline",
            "candidates",
            "batch_sizes",
            "concurrency",
            "seq_len",
            "protocol",
            "trials",
            "warmup",
            "requests",
            "examples",
            "max_windows",
            "stability",
            "max_examples",
            "seed",
            "columns",
            "encoding",
            "endpoints",
        )
        data = asdict(self)
        return {key: data[key] for key in keys} | {"data": str(self.data)}

    def check(self) -> None:
        """Raises HeadpruneError for settings that cannot work."""
        if not self.candidates:
            raise HeadpruneError("compare needs at least one candidate", "name one (`candidates`)")
        if len(set(self.deployments)) != len(self.deployments):
            raise HeadpruneError(
                "a deployment is named twice among `baseline` and `candidates`", "name each model once"
            )
        for name, values in (("`batch_sizes`", self.batch_sizes), ("`concurrency`", self.concurrency)):
            if not values or min(values) < 1:
                raise HeadpruneError(f"{name} needs positive integers, got {values}", f"pass e.g. {name} 1,4,16")
        unknown = sorted(set(self.endpoints) - set(self.deployments))
        if unknown:
            raise HeadpruneError(
                f"an endpoint is given for {', '.join(map(repr, unknown))}, which is not compared",
                "give endpoints only for the baseline and the candidates",
            )
        if self.trials < 1 or self.requests < 1 or self.seq_len < 2:
            raise HeadpruneError("`trials` and `requests` must be >= 1 and `seq_len` >= 2", "give larger values")


@contextmanager
def _server_url(settings: CompareSettings) -> Iterator[str | None]:
    if settings.url or set(settings.deployments) <= set(settings.endpoints):
        yield settings.url
        return
    server = TritonServer(
        settings.repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=settings.out / "triton.log",
    )
    with server:
        yield server.url(settings.protocol)


def _stage_totals(statistics: dict, name: str) -> dict[str, tuple[int, int]]:
    for entry in statistics.get("model_stats", []):
        if entry.get("name") == name:
            stats = entry.get("inference_stats", {})
            return {s: (int(stats.get(s, {}).get("count", 0)), int(stats.get(s, {}).get("ns", 0))) for s in STAGES}
    return {s: (0, 0) for s in STAGES}


def server_breakdown(before: dict, after: dict, name: str) -> dict[str, float]:
    """Returns Triton's mean time per request (µs) in each stage between two statistics snapshots."""
    first, second = _stage_totals(before, name), _stage_totals(after, name)
    breakdown = {}
    for stage in STAGES:
        count = second[stage][0] - first[stage][0]
        breakdown[f"{stage}_us"] = (second[stage][1] - first[stage][1]) / count / 1000 if count else 0.0
    return breakdown


def token_inputs(names: list[str], vocab_size: int, batch: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Returns fixed random int64 inputs of shape (batch, seq_len) for the input ``names`` of a text classifier: ids
    in [1, vocab_size), a full attention mask, token type 0."""
    rng = np.random.default_rng(seed)
    arrays = {
        "input_ids": rng.integers(1, vocab_size, size=(batch, seq_len), dtype=np.int64),
        "attention_mask": np.ones((batch, seq_len), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq_len), dtype=np.int64),
    }
    return {name: arrays[name] for name in names}


def latency_inputs(facts: DeploymentFacts, batch: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Returns fixed random inputs for one deployment: int64 tokens of shape (batch, seq_len), or an image model's
    standard normal float32 pixels."""
    if facts.input_shape:
        pixels = np.random.default_rng(seed).standard_normal((batch, *facts.input_shape)).astype(np.float32)
        return {"pixel_values": pixels}
    return token_inputs(facts.inputs, facts.vocab_size, batch, seq_len, seed)


def machine() -> dict:
    """Returns the platform, processor, CPU model, its 8-bit instructions, CPU count and Python version."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "int8_instructions": int8_instructions(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def library_versions() -> dict:
    """Returns the versions of the libraries that measurements depend on."""
    from importlib.metadata import version

    return {
        p: version(p)
        for p in ("torch", "transformers", "onnxruntime", "tritonclient", "nvidia-pytriton", "sacrebleu", "numpy")
    }


class Comparison:
    """One comparison run: measures into the journal, cell by cell, skipping what is already there.

    Creating one reads and writes nothing; ``prepare`` reads the deployments' facts and
    opens the journal, and ``run`` measures (preparing first when needed).
    """

    def __init__(self, settings: CompareSettings, phases: Phases = no_phases):
        settings.check()
        self.settings = settings
        self.journal = Journal(settings.out / "measurements.jsonl")
        self.phases = phases
        self.server: dict | None = None  # Triton's metadata, once a run reached the server
        self.facts: dict[str, DeploymentFacts] = {}
        self.task = "classification"
        self._examples: list[dict] | None = None
        self._where = "nothing yet"  # the measurement in progress, named when the server fails during it

    def prepare(self, resume: bool = False) -> dict[str, DeploymentFacts]:
        """Reads each deployment's facts, checks the settings against them and opens the journal (a fresh one
        unless ``resume``); returns the facts. Raises HeadpruneError for settings that cannot work."""
        settings = self.settings
        if settings.scores:
            HeadScores.load(settings.scores)  # a broken scores file must fail now, not after every measurement
        facts = {name: self._describe(name) for name in settings.deployments}
        for name, fact in facts.items():
            too_big = [b for b in settings.batch_sizes if b > fact.max_batch_size]
            if too_big:
                raise HeadpruneError(
                    f"batch sizes {too_big} exceed the max_batch_size {fact.max_batch_size} of '{name}'",
                    f"re-export with a max batch size of {max(settings.batch_sizes)}, or drop those sizes",
                )
            if fact.task in ("classification", "language-modeling") and settings.seq_len > fact.max_positions:
                raise HeadpruneError(
                    f"sequence length {settings.seq_len} exceeds the {fact.max_positions} positions of '{name}'",
                    f"measure at {fact.max_positions} tokens or fewer",
                )
        tasks = {fact.task for fact in facts.values()}
        if len(tasks) > 1:
            raise HeadpruneError(
                f"the deployments mix tasks ({', '.join(f'{n}: {f.task}' for n, f in facts.items())})",
                "compare classifiers with classifiers, translation models with translation models and "
                "language models with language models",
            )
        self.task = tasks.pop()
        self.facts = facts
        self.examples()  # a bad data file (a missing column, a label the models lack) fails now, before any measurement
        self._start_journal(resume)
        return facts

    def _describe(self, name: str) -> DeploymentFacts:
        settings = self.settings
        url = settings.endpoints.get(name, settings.url)
        if url and not exported_model(ModelRepository(settings.repo), name):
            # A remote server whose repository this machine cannot read describes its models itself.
            client = TritonClient(url, settings.protocol)
            try:
                return describe_remote_deployment(client, name, settings.seq_len)
            finally:
                client.close()
        return describe_deployment(settings.repo, name, settings.seq_len)

    def _start_journal(self, resume: bool) -> None:
        records = self.journal.records()
        signature = self.settings.signature()
        if resume and records:
            if records[0].get("signature") != signature:
                raise HeadpruneError(
                    f"'{self.journal.path}' was measured with other settings",
                    "rerun with the same settings, or without `resume` to start over",
                )
            return
        self.journal.reset()
        self.journal.append({"record": "start", "signature": signature, "started": time.time()})

    def _done(self) -> set[tuple]:
        keys = set()
        for r in self.journal.records():
            if record_type(r) == "quality":
                keys.add(("quality", r["deployment"]))
            elif record_type(r) == "latency":
                keys.add(("latency", r["deployment"], r["batch_size"], r["concurrency"], r["trial"]))
        return keys

    def run(self, resume: bool = False) -> list[dict]:
        """Measures every missing cell; returns all journal records. Triton is started unless settings.url is set or
        every deployment has its own endpoint."""
        if not self.facts:
            self.prepare(resume)
        done = self._done()
        measured = 0
        with _server_url(self.settings) as url:
            # Each deployment is measured where it is served: its own endpoint, or the one server.
            def client(name: str) -> TritonClient:
                return TritonClient(self.settings.endpoints.get(name, url), self.settings.protocol)

            main = client(self.settings.baseline)
            try:
                self._where = "the server's version"
                self.server = main.server_metadata()
                measured += self._quality(client, done)
                measured += self._latency(client, done)
            except HeadpruneError as error:
                raise HeadpruneError(
                    f"{error.message}, while measuring {self._where} (the {len(done) + measured} "
                    f"measurements made so far are kept in {self.journal.path})",
                    f"{error.fix}; then rerun with `resume`",
                ) from error
            finally:
                main.close()
        return self.journal.records()

    def examples(self) -> list[dict]:
        """Returns the comparison's examples (read once): text/label, source/target for translation, text for a
        language model."""
        settings = self.settings
        if self._examples is None:
            baseline = self.facts[settings.baseline]
            labels = (
                None
                if not TASKS[self.task].labels
                else SimpleNamespace(label2id=baseline.label2id, num_labels=len(baseline.id2label))
            )
            self._examples = read_examples(
                settings.data,
                self.task,
                settings.columns,
                settings.max_examples,
                settings.seed,
                settings.encoding,
                config=labels,
            )
        return self._examples

    def _quality(self, client_of: Callable[[str], TritonClient], done: set) -> int:
        examples = self.examples()
        todo = [name for name in self.settings.deployments if ("quality", name) not in done]
        advance = self.phases("quality through Triton", len(todo) * len(examples))
        measure = getattr(self, QUALITY_MEASURES[self.task])
        for name in todo:
            self._where = f"the quality of '{name}'"
            client = client_of(name)
            try:
                self.journal.append(
                    {"record": "quality", "deployment": name, **measure(client, self.facts[name], examples, advance)}
                )
            finally:
                client.close()
        return len(todo)

    @staticmethod
    def _served_accuracy(facts: DeploymentFacts, examples: list[dict], advance, classify) -> dict:
        """Returns the accuracy of ``classify(chunk) -> logits`` over ``examples``, chunk by chunk."""
        predictions, labels = [], []
        for chunk in batches(examples, min(16, facts.max_batch_size)):
            predictions += classify(chunk).argmax(-1).tolist()
            labels += [label_id(e["label"], facts.label2id, len(facts.id2label)) for e in chunk]
            advance(len(chunk))
        score = accuracy(predictions, labels)
        # Per-example correctness: the report tests each candidate's change with a paired test.
        return {**score.to_dict(), "per_example": list(score.per_example)}

    @classmethod
    def _classification_quality(
        cls, client: TritonClient, facts: DeploymentFacts, examples: list[dict], advance
    ) -> dict:
        def classify(chunk):
            # Pair tasks send both texts: the served front end tokenises them as the model was trained.
            pairs = [str(e["text_pair"]) for e in chunk] if all("text_pair" in e for e in chunk) else None
            return client.classify_text(facts.quality_model, [str(e["text"]) for e in chunk], pairs)[0]

        return cls._served_accuracy(facts, examples, advance, classify)

    @staticmethod
    def _translation_quality(client: TritonClient, facts: DeploymentFacts, examples: list[dict], advance) -> dict:
        hypotheses = []
        for chunk in batches(examples, min(16, facts.max_batch_size)):
            hypotheses += client.translate(facts.quality_model, [str(e["source"]) for e in chunk])
            advance(len(chunk))
        references = [str(e["target"]) for e in examples]
        score, character = bleu(hypotheses, references), chrf(hypotheses, references)
        # Per-sentence BLEU statistics: the report tests each candidate's change with a paired bootstrap.
        return {
            **score.to_dict(),
            "per_example": [list(row) for row in score.per_example],
            "chrf": character.value,
            "chrf_signature": character.signature,
            "translations": hypotheses,
        }

    @classmethod
    def _image_quality(cls, client: TritonClient, facts: DeploymentFacts, examples: list[dict], advance) -> dict:
        return cls._served_accuracy(
            facts,
            examples,
            advance,
            lambda chunk: client.classify_images(facts.quality_model, [Path(e["image"]).read_bytes() for e in chunk])[
                0
            ],
        )

    @staticmethod
    def _language_model_quality(client: TritonClient, facts: DeploymentFacts, examples: list[dict], advance) -> dict:
        statistics = []
        for chunk in batches(examples, min(16, facts.max_batch_size)):
            nll, tokens = client.score_text(facts.quality_model, [str(e["text"]) for e in chunk])
            statistics += zip(nll.tolist(), tokens.tolist())
            advance(len(chunk))
        score = perplexity(statistics)
        # Per-text (nll, tokens): the report tests each candidate's change with a paired bootstrap.
        return {**score.to_dict(), "per_example": [list(row) for row in score.per_example]}

    def _latency(self, client_of: Callable[[str], TritonClient], done: set) -> int:
        settings = self.settings
        cells = list(itertools.product(settings.batch_sizes, settings.concurrency))
        total = settings.trials * len(cells) * len(settings.deployments)
        advance = self.phases("latency (interleaved trials)", total)
        count = 0
        names = settings.deployments
        for trial in range(settings.trials):
            for index, (batch, concurrency) in enumerate(cells):
                # Rotate the order so no deployment always runs first (warm caches, thermal drift).
                shift = (trial + index) % len(names)
                for name in names[shift:] + names[:shift]:
                    if ("latency", name, batch, concurrency, trial) not in done:
                        self._where = (
                            f"the latency of '{name}' at batch {batch}, concurrency {concurrency} (trial {trial + 1})"
                        )
                        self.journal.append(self._measure(partial(client_of, name), name, batch, concurrency, trial))
                        count += 1
                    advance(1)
        return count

    def requests_per_window(self, batch: int) -> int:
        """Returns how many requests a window sends: enough for ``examples`` examples, at least ``requests``."""
        return max(self.settings.requests, -(-self.settings.examples // batch))

    def _request(self, name: str, batch: int) -> tuple[str, dict[str, np.ndarray], list[str]]:
        """Returns (served model, inputs, outputs) of one latency request of ``batch`` examples."""
        facts = self.facts[name]
        if self.task == "translation":
            examples = self.examples()
            sources = [str(examples[i % len(examples)]["source"]) for i in range(batch)]
            return facts.latency_model, {"SOURCE": strings_array(sources)}, ["TRANSLATION"]
        # A language model's logits are seq * vocab floats per example: its requests fetch the per-text nll instead.
        output = "nll" if self.task == "language-modeling" else "logits"
        return facts.latency_model, latency_inputs(facts, batch, self.settings.seq_len, self.settings.seed), [output]

    def _measure(self, make_client, name: str, batch: int, concurrency: int, trial: int) -> dict:
        settings = self.settings
        model, arrays, outputs = self._request(name, batch)
        count = self.requests_per_window(batch)
        run_window(make_client, model, arrays, outputs, concurrency, max(1, min(settings.warmup, count)))
        stats_client = make_client()
        before = stats_client.statistics(model)
        windows = [run_window(make_client, model, arrays, outputs, concurrency, count)]
        while len(windows) < settings.max_windows:
            previous = np.median(windows[-1].latencies_ms)
            windows.append(run_window(make_client, model, arrays, outputs, concurrency, count))
            latest = np.median(windows[-1].latencies_ms)
            if abs(latest - previous) <= settings.stability * previous:
                break
        after = stats_client.statistics(model)
        stats_client.close()
        final = windows[-1]
        return {
            "record": "latency",
            "deployment": name,
            "batch_size": batch,
            "concurrency": concurrency,
            "trial": trial,
            "windows": len(windows),
            "latencies_ms": final.latencies_ms,
            "wall_s": final.wall_s,
            "throughput": final.throughput,
            "server": server_breakdown(before, after, model),
            "time": time.time(),
        }

    def environment(self) -> dict:
        """Returns machine, library and server versions for the report signature."""
        server = self.server or {}
        return {
            "machine": machine(),
            "libraries": library_versions(),
            "server": {"name": server.get("name"), "version": server.get("version")},
        }
