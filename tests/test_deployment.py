"""Deployment facts come from the served version's own description, never from the source checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError
from exporter.triton.config import DeploymentOptions, read_config
from exporter.triton.repository import export_to_repository
from serving.benchmark.deployment import describe_deployment


def _pruned(bert_dir, folder, plan):
    model = load_model(bert_dir)
    apply_plan(model, HeadPlan(plan))
    return save_pruned(model, load_tokenizer(bert_dir), folder, source=bert_dir)


def test_facts_describe_the_served_version_even_after_an_older_one_is_re_exported(bert_dir, tmp_path):
    one = _pruned(bert_dir, tmp_path / "one", {"encoder": {0: [0]}})  # 11 heads
    two = _pruned(bert_dir, tmp_path / "two", {"encoder": {0: [0], 1: [1, 2]}})  # 9 heads
    three = _pruned(bert_dir, tmp_path / "three", {"encoder": {2: [0, 1, 2, 3]}})  # 8 heads
    repo = tmp_path / "repo"
    export_to_repository(one, repo, "m")
    export_to_repository(two, repo, "m")
    export_to_repository(three, repo, "m", version=1)  # replaces version 1; version 2 is still the one served
    config = read_config(repo / "m" / "config.pbtxt")
    assert config.parameters["heads"].string_value == "9/12"
    assert config.parameters["source_checkpoint"].string_value == str(two.resolve())
    facts = describe_deployment(repo, "m", seq_len=16)
    assert (facts.version, facts.heads, facts.source_checkpoint) == (2, 9, str(two.resolve()))
    assert facts.heads_per_layer == {"encoder": [3, 2, 4]}
    assert json.loads((repo / "m" / "1" / "deployment.json").read_text())["heads"] == 8
    assert facts.max_length == 64  # the default 128 tokens, capped at the tiny model's 64 positions


def test_facts_need_only_the_repository(bert_dir, tmp_path):
    pruned = _pruned(bert_dir, tmp_path / "p", {"encoder": {0: [0, 1], 2: [3]}})
    export_to_repository(pruned, tmp_path / "repo", "p", options=DeploymentOptions(max_length=24))
    shutil.copytree(tmp_path / "repo", tmp_path / "elsewhere")
    shutil.rmtree(pruned)
    facts = describe_deployment(tmp_path / "elsewhere", "p", seq_len=32)
    model = load_model(bert_dir)
    apply_plan(model, HeadPlan({"encoder": {0: [0, 1], 2: [3]}}))
    assert facts.parameters == sum(p.numel() for p in model.parameters())
    assert facts.heads == 9 and facts.max_length == 24 and facts.label2id == {"negative": 0, "positive": 1}
    # FLOPs at another length follow from the stored coefficients: the attention term grows with its square.
    longer = describe_deployment(tmp_path / "elsewhere", "p", seq_len=64)
    assert longer.flops_per_example > 2 * facts.flops_per_example
    (tmp_path / "elsewhere" / "p" / "1" / "deployment.json").unlink()
    with pytest.raises(HeadpruneError, match="re-export"):
        describe_deployment(tmp_path / "elsewhere", "p", seq_len=32)


@pytest.mark.parametrize("name", ["m\n", "m\nx", "../m", "a/b", "", "-m", "x" * 101, "x" * 97])
def test_unusable_model_names_are_refused(bert_dir, tmp_path, name):
    with pytest.raises(HeadpruneError, match="not usable"):
        export_to_repository(bert_dir, tmp_path / "repo", name)  # 97 characters: its _text model's name is too long
    assert not (tmp_path / "repo").exists()
