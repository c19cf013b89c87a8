"""The performance suite's parts: waterfall shares, in-process blocks, attention's share, the second load
generator, served memory, and the page rendered from results."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from benchmarks import inprocess
from benchmarks.memory import served_memory
from benchmarks.overhead import RawHttpClient, measure_overhead
from benchmarks.performance_doc import render
from benchmarks.waterfall import p50_ratio, step_shares
from exporter.pruning.plan import HeadPlan
from exporter.pruning.prune import prune_checkpoint
from exporter.triton.config import DeploymentOptions
from exporter.triton.repository import export_to_repository
from serving.client import TritonClient
from serving.server.process import TritonServer, free_port

pytestmark = pytest.mark.usefixtures("one_thread")


def _records(means_ms: dict[str, float], batch: int, trials: int = 3, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for trial in range(trials):
        for name, mean in means_ms.items():
            latencies = list(mean + rng.normal(0, mean * 0.01, 20))
            records.append({"record": "latency", "deployment": name, "batch_size": batch, "concurrency": 1,
                            "trial": trial, "latencies_ms": latencies, "throughput": batch * 1000 / np.mean(latencies)})
    return records


def test_waterfall_shares_multiply_to_the_total_and_follow_each_step():
    records = _records({"base": 100.0, "pruned": 80.0, "int8": 50.0}, batch=16)
    rows = step_shares(records, ["base", "pruned", "int8"], 16)
    assert [r["step"] for r in rows] == ["pruned", "int8"]
    assert rows[0]["share"]["ratio"] == pytest.approx(1.25, rel=0.02)
    assert rows[1]["share"]["ratio"] == pytest.approx(1.6, rel=0.02)
    assert rows[1]["cumulative"]["ratio"] == pytest.approx(rows[0]["share"]["ratio"] * rows[1]["share"]["ratio"])
    assert all(r["share"]["significant"] and r["share"]["ci_low"] < r["share"]["ratio"] < r["share"]["ci_high"] for r in rows)
    latency = p50_ratio(records, "base", "int8", 16)
    assert latency["ratio"] == pytest.approx(0.5, rel=0.02) and latency["ci_low"] < 0.5 * 1.02 < latency["ci_high"] * 1.05
    assert latency["requests"] == [60, 60]


def test_in_process_blocks_tell_a_faster_run_from_a_slower_one():
    blocks = inprocess.timed_blocks({"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.002)}, rounds=3,
                                    block_s=0.05)
    assert len(blocks["slow"]) == len(blocks["fast"]) == 3
    speedup = inprocess.speedup(blocks["slow"], blocks["fast"], batch=1)
    assert speedup.significant and 1.4 < speedup.ratio < 2.2


@pytest.fixture(scope="module")
def bench_repo(bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    pruned = prune_checkpoint(bert_dir, folder / "pruned", plan=HeadPlan.from_dict({"encoder": {"0": [0, 1], "1": [2]}})).out
    repo = folder / "repo"
    for name, checkpoint in (("base", bert_dir), ("pruned", pruned)):
        export_to_repository(checkpoint, repo, name, options=DeploymentOptions(max_batch_size=16))
    return repo


def test_attention_share_counts_the_per_head_nodes_and_shrinks_with_pruning(bench_repo):
    shares = {name: inprocess.attention_share(next((bench_repo / name).glob("*/model.onnx")), 2, 32, threads=1,
                                              vocab_size=40) for name in ("base", "pruned")}
    assert 0.05 < shares["base"] < 0.95
    assert shares["pruned"] < shares["base"]


def test_the_second_load_generator_gets_tritonclients_answer_and_overhead_is_measured(bench_repo):
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    inputs = {"input_ids": np.arange(2 * 16, dtype=np.int64).reshape(2, 16) % 90 + 5,
              "attention_mask": np.ones((2, 16), dtype=np.int64), "token_type_ids": np.zeros((2, 16), dtype=np.int64)}
    with TritonServer(bench_repo, **ports) as server:
        client, raw = TritonClient(server.http_url), RawHttpClient(server.http_url)
        expected = client.infer("base", inputs, ["logits"])["logits"]
        np.testing.assert_allclose(raw.infer("base", inputs).reshape(expected.shape), expected, rtol=1e-6)
        client.close()
        raw.close()
    result = measure_overhead(bench_repo, "base", [1], rounds=1, seq_len=16)
    paths = result["batch_sizes"]["1"]
    assert set(paths) == {"in_process", "triton_http", "triton_grpc", "triton_http_raw", "server_compute_infer_ms"}
    assert paths["in_process"]["ratio_to_in_process"] == 1.0
    assert all(paths[p]["p50_ms"] > paths["in_process"]["p50_ms"] * 0.5 and paths[p]["requests"] >= 2
               for p in ("triton_http", "triton_grpc", "triton_http_raw"))
    assert paths["server_compute_infer_ms"] > 0


def test_served_memory_finds_each_models_process_and_the_weights_pruning_removed(bench_repo):
    result = served_memory(bench_repo, ["base", "pruned"], batch=2, seq_len=16)
    rows = result["models"]
    assert all(r["stub_processes"] == 1 and r["resident_mib_after_requests"] > 10 for r in rows.values())
    assert rows["base"]["weight_bytes_removed"] == 0
    assert rows["pruned"]["weight_bytes_removed"] == 4 * (rows["base"]["parameters"] - rows["pruned"]["parameters"]) > 0
    assert result["server_process_mib"] > 0


def test_the_page_is_written_from_the_result_files(tmp_path):
    records = _records({"minilm": 100.0, "minilm_pruned80": 75.0, "minilm_pruned80_distilled": 75.0,
                        "minilm_pruned80_distilled_int8": 40.0}, batch=16)
    records += _records({"minilm": 5.0, "minilm_pruned80": 4.0, "minilm_pruned80_distilled": 4.0,
                         "minilm_pruned80_distilled_int8": 2.0}, batch=1)
    steps = ["minilm", "minilm_pruned80", "minilm_pruned80_distilled", "minilm_pruned80_distilled_int8"]
    served = {"steps": steps, "trials": 3, "fusion_kept": False, "tuned_settings": None, "heads": {n: [14, 72] for n in steps},
              "quality": {n: {"value": 0.869 - 0.002 * i, "examples": 1000, "p_value": 0.5} for i, n in enumerate(steps)},
              "waterfall_b16": step_shares(records, steps, 16), "waterfall_b1": step_shares(records, steps, 1),
              "p50_b1": {n: p50_ratio(records, "minilm", n, 1) for n in steps[1:]}, "speedups": []}
    results = tmp_path / "results"
    results.mkdir()
    (results / "served.json").write_text(json.dumps({"environment": {"cpus": 2, "libraries": {}}, **served}))
    (results / "gpu.json").write_text(json.dumps({"skipped": "no CUDA device on this machine"}))
    text = render(results, tmp_path / "docs").read_text()
    assert "**minilm_pruned80_distilled_int8**: 86.3 % accuracy vs 86.9 % unpruned (-0.6 points" in text
    assert "throughput at batch 16 **2.50x [" in text
    assert "p50 latency at batch 1 **0.40x**" in text
    assert "GPU: not run (no CUDA device on this machine)." in text and "measured in 3 interleaved trials" in text
    assert (tmp_path / "docs" / "perf_waterfall.png").stat().st_size > 1000


def test_the_peer_comparison_serves_both_files_and_compares_their_outputs(bench_repo):
    from benchmarks.peer import compare_with_peer

    ours, other = (next((bench_repo / name).glob("*/model.onnx")) for name in ("base", "pruned"))
    same = compare_with_peer(ours, ours, trials=2, seq_len=16, vocab_size=40)
    assert same["max_abs_logit_difference"] == 0 and same["same_predictions"]
    assert set(same["speedup_ours_over_peer"]) == {"batch1", "batch16"}
    assert all(s["baseline_trials"] == s["candidate_trials"] == 2 for s in same["speedup_ours_over_peer"].values())
    different = compare_with_peer(ours, other, trials=1, seq_len=16, vocab_size=40)
    assert different["max_abs_logit_difference"] > 1e-3  # two heads removed: a real difference is seen


def test_a_curve_can_stop_at_the_share_the_benchmark_needs(bert_dir, cls_data):
    from exporter import load_model, load_tokenizer
    from exporter.data import read_examples
    from exporter.evaluation.experiments import pruning_curve
    from exporter.evaluation.quality import Evaluator
    from exporter.pruning.inventory import build_inventory
    from exporter.pruning.scoring import compute_importance

    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    examples = read_examples(cls_data, "classification")[:24]
    evaluator = Evaluator(model, tokenizer, examples)

    def score(removed):
        return compute_importance(model, tokenizer, examples, removed=removed)

    full = pruning_curve(evaluator, build_inventory(model), score, 0.25, rescore=True)
    half = pruning_curve(evaluator, build_inventory(model), score, 0.25, rescore=True, up_to=0.5)
    assert [p["fraction"] for p in half.points] == [0.0, 0.25, 0.5]
    assert half.points == full.points[:3]  # the same iterative plan, only shorter
