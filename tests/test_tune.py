"""`headprune tune`: serving settings in the config, the choice rule, and a real search through Triton."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from exporter.triton.config import DeploymentOptions, apply_serving_settings, classifier_config, read_config
from exporter.triton.repository import export_to_repository
from serving.benchmark.tune import Measured, ServingSettings, TuneSettings, choose, default_grid, tune
from serving.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**options):
    return classifier_config("m", ["input_ids"], 2, DeploymentOptions(**options), {})


def test_serving_settings_reach_the_config_and_read_back():
    config = _config(instances=2, threads=1, spinning=False, queue_delay_us=500)
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"intra_op_threads": "1", "allow_spinning": "0"}
    assert ServingSettings.of_config(config) == ServingSettings(2, 1, False, 500)
    # Applying the defaults again removes the parameters instead of leaving stale ones.
    apply_serving_settings(config, DeploymentOptions())
    assert dict(config.parameters) == {} and ServingSettings.of_config(config) == ServingSettings()
    assert len(config.instance_group) == 1


def test_the_default_grid_never_uses_more_threads_than_cores():
    grid = default_grid(2, [100])
    assert {(s.instances, s.threads) for s in grid} == {(1, 1), (1, 2), (2, 1)}
    assert len(grid) == 6 and {s.spinning for s in grid} == {True, False}
    # Counts the user names are all tried, beyond the cores too (the CLI's --instances and --threads).
    given = default_grid(2, [0, 100], instances=[1, 3], threads=[2])
    assert {(s.instances, s.threads, s.queue_delay_us) for s in given} == {
        (1, 2, 0),
        (3, 2, 0),
        (1, 2, 100),
        (3, 2, 100),
    }


def _measured(settings: ServingSettings, mean_ms: float, b1_ms: float, seed: int) -> Measured:
    rng = np.random.default_rng(seed)
    trials = [list(mean_ms + rng.normal(0, mean_ms * 0.02, 8)) for _ in range(3)]
    return Measured(settings, trials, [16 * 1000 / np.mean(t) for t in trials], list(b1_ms + rng.normal(0, 0.1, 20)))


def test_choose_takes_the_fastest_within_budget_and_only_when_significantly_faster():
    current, faster, fastest = ServingSettings(), ServingSettings(2, 1), ServingSettings(1, 1, False)
    measured = [_measured(current, 100, 5, 0), _measured(faster, 80, 6, 1), _measured(fastest, 60, 9, 2)]
    rows, chosen, speedup = choose(measured, None)
    assert chosen.settings == fastest and speedup.significant and speedup.ratio == pytest.approx(100 / 60, rel=0.05)
    _, chosen, _ = choose(measured, budget_ms=7)  # the fastest is over the latency budget
    assert chosen.settings == faster
    assert [r["within_budget"] for r in choose(measured, 7)[0]] == [True, True, False]
    same = [_measured(current, 100, 5, 0), _measured(faster, 99.5, 5, 1)]  # within noise: keep what is there
    assert choose(same, None)[1].settings == current


def test_tune_measures_through_triton_and_writes_the_chosen_settings(bert_dir, tmp_path):
    repo = tmp_path / "repo"
    export_to_repository(bert_dir, repo, "base", options=DeploymentOptions(max_batch_size=4))
    before = (repo / "base" / "config.pbtxt").read_text()
    grid = [ServingSettings(1, 1, False), ServingSettings(2, 1, True, 0)]
    settings = TuneSettings(repo, "base", batch=4, trials=2, requests=2, latency_requests=3, seq_len=16, grid=grid)
    result = tune(settings, write=True, out=tmp_path / "tune.json")
    rows = result.candidates
    assert [r["label"] for r in rows] == ["i1-tauto-spin-d100", "i1-t1-nospin-d100", "i2-t1-spin-d0"]
    assert all(r["throughput"] > 0 and r["p50_batch1_ms"] > 0 for r in rows)
    assert json.loads((tmp_path / "tune.json").read_text())["chosen"] == {**vars(result.chosen)}
    after = read_config(repo / "base" / "config.pbtxt")
    assert ServingSettings.of_config(after) == result.chosen
    assert (
        result.written == (result.chosen != result.current) == ((repo / "base" / "config.pbtxt").read_text() != before)
    )
    # The variants' folders were temporary: the repository holds only what export wrote.
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["base", "base_text"]


def test_tune_refuses_a_model_that_is_not_served_by_onnxruntime(bert_dir, tmp_path):
    repo = tmp_path / "repo"
    export_to_repository(bert_dir, repo, "base", options=DeploymentOptions(max_batch_size=4))
    result = CliRunner().invoke(main, ["tune", "base_text", "--repo", str(repo), "--trials", "1"])
    assert result.exit_code == 2
    assert "uses the 'python' backend" in result.output and "tune an exported classifier" in result.output


def test_tune_explains_a_malformed_list_of_settings(tmp_path):
    result = CliRunner().invoke(main, ["tune", "base", "--repo", str(tmp_path), "--threads", "1,two"])
    assert result.exit_code == 2 and "'1,two' is not a comma-separated list of integers" in result.output
