"""headprune compare on tiny models with the real Triton server."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.data import read_examples
from exporter.errors import HeadpruneError
from exporter.evaluation.quality import Evaluator
from exporter.triton.config import DeploymentOptions, read_config, write_config
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings, Comparison
from serving.benchmark.deployment import describe_deployment
from serving.cli import main
from serving.report.report import build_report, write_report
from serving.report.runner import run_comparison
from serving.server.process import TritonServer, free_port
from tests.helpers import center_decision, random_sentences, write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def repo(bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    export_to_repository(bert_dir, root / "repo", "base")
    for name, plan in (
        ("p25", {"encoder": {0: [0], 1: [1], 2: [2]}}),
        ("p50", {"encoder": {0: [0, 1], 1: [1, 2], 2: [2, 3]}}),
    ):
        model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
        apply_plan(model, HeadPlan(plan))
        # Pruning a random model shifts every margin one way: re-centre so each deployment predicts both classes.
        center_decision(model, tokenizer, random_sentences(200, seed=100))
        export_to_repository(save_pruned(model, tokenizer, root / name, source=bert_dir), root / "repo", name)
    return root / "repo"


def settings_for(repo, data, out, **extra) -> CompareSettings:
    values = dict(
        repo=repo,
        baseline="base",
        candidates=["p25", "p50"],
        data=data,
        out=out,
        batch_sizes=[1, 4],
        concurrency=[1, 2],
        seq_len=24,
        trials=2,
        requests=12,
        examples=12,
        max_windows=2,
        warmup=2,
    )
    return CompareSettings(**(values | extra))


@pytest.mark.slow
def test_compare_writes_a_consistent_report(repo, cls_data, tmp_path, bert_dir, workdir):
    scores = workdir / "scores-for-compare.json"
    assert (
        CliRunner().invoke(main, ["score", str(bert_dir), "--data", str(cls_data), "--out", str(scores)]).exit_code == 0
    )
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--repo",
            str(repo),
            "--baseline",
            "base",
            "--candidate",
            "p25",
            "--candidate",
            "p50",
            "--data",
            str(cls_data),
            "--out",
            str(out),
            "--batch-sizes",
            "1,4",
            "--concurrency",
            "1,2",
            "--seq-len",
            "24",
            "--trials",
            "2",
            "--requests",
            "12",
            "--examples",
            "12",
            "--max-windows",
            "2",
            "--max-drop",
            "0",
            "--scores",
            str(scores),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and len(report["cells"]) == 3 * 2 * 2
    for cell in report["cells"]:
        assert cell["server"]["compute_infer_us"] > 0
        assert cell["trials"] == 2 and cell["p99"] is None  # 2 windows of 12 requests cannot support a p99
    windows = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    for window in (w for w in windows if w["record"] == "latency"):
        assert len(window["latencies_ms"]) == 12 and window["windows"] in (1, 2)
    examples = read_examples(cls_data, "classification")
    accuracies = {}
    for name, folder in (("base", bert_dir), ("p25", repo.parent / "p25"), ("p50", repo.parent / "p50")):
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        in_process = Evaluator(model, tokenizer, examples)().value
        assert report["deployments"][name]["quality"]["value"] == pytest.approx(in_process, abs=1e-9)
        with torch.no_grad():
            predicted = model(
                **tokenizer([e["text"] for e in examples], padding=True, return_tensors="pt")
            ).logits.argmax(-1)
        assert set(predicted.tolist()) == {0, 1}, name  # a classifier predicting one class proves little
        accuracies[name] = in_process
    assert (
        len(set(accuracies.values())) > 1
    )  # pruning changed some predictions: the comparison can tell deployments apart
    facts = report["deployments"]
    assert (
        facts["p50"]["heads"] == 6
        and facts["p50"]["parameters"] < facts["p25"]["parameters"] < facts["base"]["parameters"]
    )
    assert {name: facts[name]["version"] for name in facts} == {"base": 1, "p25": 1, "p50": 1}
    predicted = {s["candidate"]: s["predicted"] for s in report["speedups"]}
    assert 1 < predicted["p25"] < predicted["p50"]
    # --max-drop 0: only a candidate whose whole 95 % interval of change lies above 0 may win (non-inferiority).
    intervals = {c: (facts[c]["quality"]["gain_low"], facts[c]["quality"]["gain_high"]) for c in ("p25", "p50")}
    assert all(low <= 100 * (accuracies[c] - accuracies["base"]) <= high for c, (low, high) in intervals.items())
    eligible = [c for c, (low, _) in intervals.items() if low > 0]
    assert (report["verdict"]["best"] is None) == (not eligible) and report["verdict"]["best"] in eligible + [None]
    markdown = (out / "report.md").read_text().splitlines()
    assert markdown[1].startswith("**Verdict:**") and "p50" in markdown[3] and "batch 4" in markdown[3]
    assert (out / "latency.csv").read_text().count("\n") == 1 + 12
    perf = (out / "perf_analyzer_p25_batch4.csv").read_text().splitlines()  # a row per concurrency, 1 and 2
    assert perf[0].startswith("Concurrency,Inferences/Second,Client Send,") and len(perf) == 3
    for png in (
        "latency_vs_batch",
        "throughput_vs_concurrency",
        "quality_vs_latency",
        "quality_vs_pruned",
        "head_importance",
    ):
        assert (out / f"{png}.png").read_bytes()[:8] == PNG
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and html.escape(report["verdict"]["text"]) in page
    (out / "report.md").unlink()
    (out / "report.html").unlink()
    (out / "latency_vs_batch.png").unlink()
    again = CliRunner().invoke(main, ["report", str(out)])
    assert again.exit_code == 0 and (out / "report.md").read_text().splitlines() == markdown
    assert (out / "latency_vs_batch.png").exists() and (out / "report.html").read_text() == page


class Interrupt:
    """A progress callback that raises KeyboardInterrupt (or runs an action) after n latency cells."""

    def __init__(self, after: int, action=None):
        self.after, self.action, self.seen = after, action, 0

    def __call__(self, label, total):
        def advance(n=1):
            if label.startswith("latency"):
                self.seen += n
                if self.seen == self.after:
                    if self.action is None:
                        raise KeyboardInterrupt
                    self.action()

        return advance


@pytest.mark.slow
def test_resume_does_not_remeasure_finished_cells(repo, cls_data, tmp_path):
    settings = settings_for(repo, cls_data, tmp_path / "r", candidates=["p50"], trials=1)
    with pytest.raises(KeyboardInterrupt):
        Comparison(settings, phases=Interrupt(after=3)).run()
    resumed = Comparison(settings)
    resumed.prepare(resume=True)
    first = [r for r in resumed.journal.records() if r["record"] == "latency"]
    assert len(first) == 3
    partial = build_report(settings, resumed.facts, resumed.journal.records(), resumed.environment())
    assert not partial.complete
    records = resumed.run()
    latency = [r for r in records if r["record"] == "latency"]
    assert len(latency) == 2 * 2 * 2 and latency[:3] == first
    assert len({(r["deployment"], r["batch_size"], r["concurrency"]) for r in latency}) == 8
    assert sum(r["record"] == "quality" for r in records) == 2
    with pytest.raises(HeadpruneError, match="other settings"):
        Comparison(settings_for(repo, cls_data, tmp_path / "r", candidates=["p50"], trials=2)).prepare(resume=True)


def structure(report_folder: Path) -> dict:
    """Returns what a report holds, without its numbers: files, JSON keys, cells and Markdown headings."""
    report = json.loads((report_folder / "report.json").read_text())
    return {
        "files": sorted(p.name for p in report_folder.iterdir()),
        "keys": sorted(report),
        "deployments": {name: sorted(facts) for name, facts in report["deployments"].items()},
        "cells": sorted(
            (c["deployment"], c["batch_size"], c["concurrency"], tuple(sorted(c))) for c in report["cells"]
        ),
        "complete": report["complete"],
        "headings": [line for line in (report_folder / "report.md").read_text().splitlines() if line.startswith("#")],
    }


@pytest.mark.slow
def test_a_server_killed_mid_run_is_named_and_resume_completes_the_same_report(repo, cls_data, tmp_path):
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    server = TritonServer(repo, **ports).start()
    kill = lambda: os.killpg(server.process.pid, signal.SIGKILL)  # noqa: E731  (nothing is flushed or closed)
    settings = settings_for(repo, cls_data, tmp_path / "d", url=server.http_url, candidates=["p25"], trials=1)
    try:
        comparison = Comparison(settings, phases=Interrupt(after=2, action=kill))
        with pytest.raises(HeadpruneError) as raised:
            comparison.run()
    finally:
        server.stop()
    message = str(raised.value)
    assert "cannot reach Triton" in message and "rerun with `resume`" in message
    assert re.search(r"while measuring the latency of '(base|p25)' at batch \d+, concurrency \d+ \(trial 1\)", message)
    assert sum(r["record"] == "latency" for r in comparison.journal.records()) == 2
    report = build_report(settings, comparison.facts, comparison.journal.records(), comparison.environment())
    write_report(report, tmp_path / "d")
    assert "INCOMPLETE" in (tmp_path / "d" / "report.md").read_text().splitlines()[3]
    with TritonServer(repo, **ports):  # restarted on the same address
        resumed = run_comparison(settings, resume=True)
        uninterrupted = run_comparison(replace(settings, out=tmp_path / "u"))
    assert structure(resumed.parent) == structure(uninterrupted.parent) and structure(resumed.parent)["complete"]


def test_creating_a_comparison_reads_and_writes_nothing(tmp_path, cls_data):
    comparison = Comparison(settings_for(tmp_path / "no-repo", cls_data, tmp_path / "fresh"))
    assert comparison.facts == {} and not (tmp_path / "fresh").exists()
    with pytest.raises(HeadpruneError, match="does not exist"):
        comparison.prepare()  # reading the deployments is where a missing repository shows
    assert not (tmp_path / "fresh").exists()


def test_bad_compare_settings_are_reported(repo, cls_data, tmp_path):
    cases = [
        (dict(batch_sizes=[1, 128]), "max_batch_size"),
        (dict(seq_len=500), "positions"),
        (dict(candidates=[]), "at least one"),
        (dict(candidates=["base"]), "named twice"),
        (dict(candidates=["nope"]), "does not exist"),
        (dict(concurrency=[0]), "positive"),
        (dict(scores=cls_data), "not a headprune scores file"),
        (
            dict(
                data=write_jsonl(
                    tmp_path / "unseen.jsonl",
                    [{"text": "fun", "label": "negative"}, {"text": "dull", "label": "neutral"}],
                )
            ),
            r"line 2: label 'neutral' is not one of the model's labels",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(HeadpruneError, match=message):
            Comparison(settings_for(repo, extra.pop("data", cls_data), tmp_path / "x", **extra)).prepare()


def test_compare_against_a_server_that_is_down(repo, cls_data, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--repo",
            str(repo),
            "--baseline",
            "base",
            "--candidate",
            "p50",
            "--data",
            str(cls_data),
            "--out",
            str(tmp_path / "down"),
            "--url",
            f"127.0.0.1:{free_port()}",
            "--seq-len",
            "16",
            "--quality-examples",
            "7",
        ],
    )
    assert result.exit_code == 2 and "cannot reach Triton" in result.output and "Traceback" not in result.output
    start = json.loads((tmp_path / "down" / "measurements.jsonl").read_text().splitlines()[0])
    assert start["signature"]["max_examples"] == 7  # the quality subset, apart from the latency settings
    assert "give the right --url" in result.output and "rerun with --resume" in result.output
    again = CliRunner().invoke(
        main,
        [
            "compare",
            "--repo",
            str(repo),
            "--baseline",
            "base",
            "--candidate",
            "p50",
            "--data",
            str(cls_data),
            "--out",
            str(tmp_path / "down"),
            "--url",
            f"127.0.0.1:{free_port()}",
            "--seq-len",
            "16",
        ],
    )
    assert again.exit_code == 2 and "already exists" in again.output and "continue it (--resume)" in again.output
    assert (tmp_path / "down" / "report.json").exists()  # an (empty, incomplete) report is still written


@pytest.mark.slow
def test_served_accuracy_equals_in_process_accuracy_on_sentence_pairs(bert_dir, tmp_path):
    """Pairs and the model's token limit reach the served text model: served == in-process on a pair task."""
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    texts, pairs = random_sentences(48, seed=7, low=5, high=9), random_sentences(48, seed=8, low=5, high=9)
    max_length = 12  # shorter than most pairs: truncation must match too
    with torch.no_grad():
        predicted = (
            model(**tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
            .logits.argmax(-1)
            .tolist()
        )
    rows = [
        {"text": t, "text_pair": p, "label": model.config.id2label[(y + (i % 5 == 0)) % 2]}
        for i, (t, p, y) in enumerate(zip(texts, pairs, predicted))
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    options = DeploymentOptions(max_length=max_length)
    export_to_repository(bert_dir, tmp_path / "repo", "base", options=options)
    model_p = load_model(bert_dir)
    apply_plan(model_p, HeadPlan({"encoder": {0: [0, 1], 1: [2]}}))
    pruned = save_pruned(model_p, tokenizer, tmp_path / "p", source=bert_dir)
    export_to_repository(pruned, tmp_path / "repo", "p", options=options)
    settings = CompareSettings(
        repo=tmp_path / "repo",
        baseline="base",
        candidates=["p"],
        data=data,
        out=tmp_path / "r",
        batch_sizes=[1],
        concurrency=[1],
        seq_len=12,
        trials=1,
        requests=2,
        examples=2,
        max_windows=1,
        warmup=1,
    )
    comparison = Comparison(settings)
    served = {r["deployment"]: r["value"] for r in comparison.run() if r["record"] == "quality"}
    examples = read_examples(data, "classification")
    for name, folder in (("base", bert_dir), ("p", pruned)):
        facts = comparison.facts[name]
        assert facts.max_length == max_length
        evaluator = Evaluator(load_model(folder), tokenizer, examples, max_length=facts.max_length)
        assert served[name] == pytest.approx(evaluator().value, abs=1e-9)
    # Sending the first texts alone, or not truncating, would give other answers.
    alone = Evaluator(model, tokenizer, [{k: e[k] for k in ("text", "label")} for e in examples])().value
    untruncated = Evaluator(model, tokenizer, examples, max_length=64)().value
    assert served["base"] != alone and served["base"] != untruncated


@pytest.mark.slow
def test_compare_a_remote_server_from_its_own_descriptions(repo, cls_data, tmp_path):
    """compare --url against a server whose repository this machine cannot read: the server describes its models."""
    served = tmp_path / "served"
    shutil.copytree(repo, served)
    shutil.copytree(served / "p50", served / "plain")  # a model exported by other means: no description
    config = read_config(served / "plain" / "config.pbtxt")
    config.name = "plain"
    del config.parameters["deployment"]
    write_config(config, served / "plain")
    server = TritonServer(served, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with server:
        settings = settings_for(
            tmp_path / "not-readable-here",
            cls_data,
            tmp_path / "r",
            url=server.grpc_url,
            protocol="grpc",
            candidates=["p50"],
            batch_sizes=[1],
            concurrency=[1],
            trials=1,
        )
        run_comparison(settings)
        report = json.loads((tmp_path / "r" / "report.json").read_text())
        local = describe_deployment(repo, "p50", seq_len=24)
        remote = report["deployments"]["p50"]
        assert (remote["heads"], remote["parameters"], remote["version"]) == (local.heads, local.parameters, 1)
        assert remote["flops_per_example"] == local.flops_per_example and remote["quality"]["examples"] == 64
        missing = settings_for(
            tmp_path / "not-readable-here", cls_data, tmp_path / "m", url=server.http_url, candidates=["plain"]
        )
        with pytest.raises(HeadpruneError, match="without a headprune description"):
            Comparison(missing).prepare()


def test_an_interrupted_compare_says_what_it_kept_and_exits_once_with_130(repo, cls_data, tmp_path, monkeypatch):
    import serving.report.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(serving.report.runner, "run_comparison", interrupted)
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--repo",
            str(repo),
            "--baseline",
            "base",
            "--candidate",
            "p50",
            "--data",
            str(cls_data),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert "rerun the same command with --resume" in result.output and "interrupted (Ctrl-C)" in result.output
