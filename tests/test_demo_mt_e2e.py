"""The translation demo end to end on a reduced budget: real Tatoeba data, a model trained for a minute,
the real server. The full budget (`make demo-mt`) trains for 40 minutes; this checks the pipeline, not BLEU."""

from __future__ import annotations

import json

import pytest
import torch

from exporter.training.settings import TranslationSettings
from exporter.triton.layout import ModelRepository
from serving.demo.assets import default_cache
from serving.demo.translation import TranslationDemoBudget, model_folder, run_translation_demo
from serving.report.mt_results import FIGURES, render_translation_results

SMALL = TranslationDemoBudget(
    training=TranslationSettings(
        vocab_size=2000, d_model=64, layers=2, heads=4, ffn=128, minutes=1.0, eval_minutes=0.5, eval_sentences=50
    ),
    score_sentences=100,
    rescore_sentences=50,
    experiment_sentences=24,
    curve_step=0.5,
    dynamics_checkpoints=2,
    prune_levels=(0.5,),
    compare_sentences=24,
    latency={
        "batch_sizes": [1, 8],
        "concurrency": [1],
        "trials": 1,
        "warmup": 1,
        "requests": 2,
        "examples": 8,
        "max_windows": 1,
    },
)


@pytest.mark.slow
def test_translation_demo_on_real_data(tmp_path):
    bars = lambda label, total: lambda n=1: None  # noqa: E731
    lines = []
    threads = torch.get_num_threads()
    try:
        path = run_translation_demo(
            default_cache(), tmp_path / "out", tmp_path / "repo", tmp_path / "reports", SMALL, bars, lines.append
        )
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert report["complete"] and path.exists()
    assert model_folder(default_cache(), SMALL.training) != model_folder(default_cache(), TranslationSettings())
    training = report["training"]
    assert training["settings"]["d_model"] == 64 and training["test"]["examples"] == 2000
    assert set(report["deployments"]) == {"marian", "marian_pruned50"}
    heads = {name: d["heads"] for name, d in report["deployments"].items()}
    assert heads == {"marian": 24, "marian_pruned50": 12}
    for name, deployment in report["deployments"].items():
        assert deployment["task"] == "translation"
        assert deployment["quality"]["metric"] == "bleu" and deployment["quality"]["examples"] == 24
        assert "chrf" in deployment["quality"]
    repository = ModelRepository(tmp_path / "repo")
    assert repository.versions("marian_translate") == [1] and repository.versions("marian_pruned50_translate") == [1]
    experiments = report["experiments"]
    types = ("encoder", "decoder", "cross")
    assert set(experiments["curves"]) == {
        "global_once",
        "global_rescored",
        *(f"{kind}_only" for kind in types),
        *(f"{kind}_only_rescored" for kind in types),
    }
    for kind in types:
        for name in (f"{kind}_only", f"{kind}_only_rescored"):
            curve = experiments["curves"][name]
            assert all(set(p["plan"]) <= {kind} for p in curve["points"])  # only that type's heads were pruned
            assert [p["pruned_heads"] for p in curve["points"]] == [0, 4, 7]
        assert experiments["curves"][f"{kind}_only_rescored"]["rescore"]
    assert {kind for kind in experiments["ablation"]["delta"]} == {"encoder", "decoder", "cross"}
    assert 1 <= len(experiments["dynamics"]) <= 2
    assert render_translation_results(report) in (tmp_path / "reports" / "results.md").read_text()
    for figure in FIGURES:
        assert (tmp_path / "reports" / figure).stat().st_size > 1000
