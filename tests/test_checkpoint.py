"""The pruned checkpoint format: exact round trips, exact parameter savings, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch

from exporter import HeadPlan, apply_plan, build_inventory, load_model, load_pruned, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError


@pytest.mark.parametrize("fixture,plan", [
    ("bert_dir", {"encoder": {0: [1, 3], 2: [0, 1, 2, 3]}}),
    ("marian_dir", {"encoder": {1: [0, 1, 2, 3]}, "decoder": {0: [2]}, "cross": {1: [0, 3]}}),
])
def test_round_trip_and_parameter_savings(request, tmp_path, fixture, plan):
    path = request.getfixturevalue(fixture)
    model, tokenizer = load_model(path), load_tokenizer(path)
    config = model.config
    hidden = config.hidden_size if hasattr(config, "hidden_size") else config.d_model
    before = sum(p.numel() for p in model.parameters())
    inventory = apply_plan(model, HeadPlan(plan))
    removed = HeadPlan(plan).count()
    head_size = inventory.layers[0].head_size
    # Each removed head takes its Q/K/V rows (weights and biases) and its output-projection columns.
    assert before - sum(p.numel() for p in model.parameters()) == removed * (4 * hidden * head_size + 3 * head_size)
    save_pruned(model, tokenizer, tmp_path / "pruned", source=path)
    again = load_pruned(tmp_path / "pruned")
    batch = dict(tokenizer(["the movie was great", "bad"], padding=True, return_tensors="pt"))
    if config.is_encoder_decoder:
        batch["decoder_input_ids"] = torch.tensor([[0, 4, 5], [0, 6, 1]])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    assert HeadPlan.of_model(build_inventory(again)).removed == HeadPlan(plan).removed
    record = json.loads((tmp_path / "pruned" / "head_plan.json").read_text())
    assert record["removed_heads"] == removed and record["source"]["weights"]
    assert load_tokenizer(tmp_path / "pruned") is not None


def test_failed_save_keeps_the_previous_checkpoint(bert_dir, tmp_path, monkeypatch):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    save_pruned(model, tokenizer, tmp_path / "out")
    before = sorted(p.name for p in (tmp_path / "out").iterdir())

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("exporter.pruning.checkpoint.save_safetensors_from", explode)
    with pytest.raises(RuntimeError):
        save_pruned(model, tokenizer, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_output_is_refused_unless_overwrite(bert_dir, tmp_path):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(HeadpruneError, match="already exists"):
        save_pruned(model, tokenizer, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    save_pruned(model, tokenizer, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "head_plan.json").exists() and not (tmp_path / "out" / "notes.txt").exists()
    (tmp_path / "empty").mkdir()
    save_pruned(model, tokenizer, tmp_path / "empty")  # an empty folder is no loss


def test_damaged_checkpoint_is_reported(bert_dir, tmp_path):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    apply_plan(model, HeadPlan({"encoder": {0: [0]}}))
    save_pruned(model, tokenizer, tmp_path / "p")
    (tmp_path / "p" / "head_plan.json").write_text(json.dumps({"format": "headprune-pruned/1", "plan": {}}))
    with pytest.raises(HeadpruneError, match="do not match"):
        load_pruned(tmp_path / "p")


def test_an_unpruned_checkpoint_is_named_as_such_not_as_damaged(bert_dir):
    with pytest.raises(HeadpruneError, match="is not a pruned checkpoint") as raised:
        load_pruned(bert_dir)
    assert "load_model" in raised.value.fix and "damaged" not in raised.value.message + raised.value.fix


def test_folder_without_safetensors_is_refused(bert_dir, tmp_path):
    (tmp_path / "config.json").write_text((bert_dir / "config.json").read_text())
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(HeadpruneError, match="safetensors"):
        load_model(tmp_path)
