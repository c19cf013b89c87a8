"""The demo pipeline end to end on a reduced budget: real MiniLM weights, real data, the real server."""

from __future__ import annotations

import json

import pytest

from exporter import load_model, load_tokenizer
from exporter.data import read_examples
from exporter.evaluation.quality import Evaluator
from exporter.evaluation.results import Ablation
from serving.demo.assets import default_cache
from serving.demo.pipeline import DemoBudget, prepare_data, run_demo
from serving.report.results import render_results

# The optimizer on a budget of 100 points: any quality qualifies, so a choice is made and compared.
SMALL = DemoBudget(
    train=400,
    score=200,
    eval=200,
    epochs=1,
    curve_step=0.25,
    rescore_examples=100,
    optimize={
        "max_drop": 100.0,
        "step": 0.25,
        "max_level": 0.75,
        "search_trials": 2,
        "test_trials": 2,
        "batch_size": 4,
        "seq_len": 32,
        "score_examples": 200,
        "rescore_examples": 100,
        "min_speedup": 0.0,
    },  # so a choice is made even where speed is within the noise
    latency={
        "batch_sizes": [1, 4],
        "concurrency": [1],
        "trials": 1,
        "requests": 3,
        "examples": 8,
        "seq_len": 32,
        "max_windows": 1,
    },
)


@pytest.mark.slow
def test_demo_pipeline_on_real_weights(tmp_path):
    cache = default_cache()
    bars = lambda label, total: lambda n=1: None  # noqa: E731
    lines = []
    path = run_demo(cache, tmp_path / "out", tmp_path / "repo", tmp_path / "reports", SMALL, bars, lines.append)
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert report["complete"] and path.read_text().splitlines()[1].startswith("**Verdict:**")
    # 30 % of 72 rounds to 22; the levers together: the optimizer's choice, installed and compared.
    (optimized,) = (tmp_path / "out").glob("optimize-*/optimize.json")
    result = json.loads(optimized.read_text())
    chosen = result["chosen"]
    assert {n: (e["heads"], e["precision"]) for n, e in report["deployments"].items()} == {
        "minilm": (72, "fp32"),
        "minilm_pruned30": (50, "fp32"),
        "minilm_pruned50": (36, "fp32"),
        "minilm_best": (round(72 * (1 - chosen["level"])), chosen["precision"]),
    }
    plans = json.loads((optimized.parent / "plans.json").read_text())
    plan = next((row["plan"] for row in plans["levels"] if row["level"] == chosen["level"]), None)
    assert report["deployments"]["minilm_best"]["head_plan"] == (
        plan if chosen["level"] else report["deployments"]["minilm"]["head_plan"]
    )
    assert result["proof"]["steps"][-1]["step"]["name"] == chosen["name"]
    # The served baseline gives exactly the in-process accuracy of the fine-tuned checkpoint.
    model_dir = report["demo"]["model"]
    eval_file = prepare_data(cache, SMALL)["eval"]
    in_process = Evaluator(
        load_model(model_dir), load_tokenizer(model_dir), read_examples(eval_file, "classification")
    )()
    served = report["deployments"]["minilm"]["quality"]
    assert served["value"] == pytest.approx(in_process.value, abs=1e-9) and served["examples"] == 200
    assert served["value"] > 0.6  # real weights learn the task even on this budget
    experiments = report["experiments"]
    # Steps of 25 % and, last, the largest share leaving one head (71 of 72).
    for curve in experiments["curves"].values():
        assert [p["pruned_heads"] for p in curve["points"]] == [0, 18, 36, 54, 71]
        assert curve["points"][0]["metric"] == pytest.approx(in_process.value)
    assert set(experiments["curves"]) == {"once", "rescored", "rescored_bertology"}
    ablation = experiments["ablation"]
    assert ablation["examples"] == 200 and sum(len(r) for r in ablation["p_value"]["encoder"].values()) == 72
    for cell in report["cells"]:
        assert cell["throughput"] > 0 and cell["p99"] is None  # 3 requests cannot support a p99
    predicted = {s["candidate"]: s["predicted"] for s in report["speedups"]}
    assert 1 < predicted["minilm_pruned30"] < predicted["minilm_pruned50"] < 1.3
    results = (tmp_path / "reports" / "results.md").read_text()  # the demo writes its own findings page
    assert results == render_results(report)
    moved, total = Ablation.from_dict(ablation).significant()
    assert f"**{moved} of {total}** heads" in results and "bertology" in results
    assert any("fine-tuned classifier" in line for line in lines)
