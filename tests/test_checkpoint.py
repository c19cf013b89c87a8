"""The pruned checkpoint format: exact round trips, exact parameter savings, atomic writes; checkpoints pruned by
transformers 4.x (``pruned_heads``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from exporter import (
    HeadGates,
    HeadPlan,
    apply_plan,
    build_inventory,
    load_model,
    load_pruned,
    load_tokenizer,
    save_pruned,
)
from exporter.errors import HeadpruneError
from exporter.pruning.prune import prune_checkpoint
from exporter.triton.repository import export_to_repository


@pytest.mark.parametrize(
    "fixture,plan",
    [
        ("bert_dir", {"encoder": {0: [1, 3], 2: [0, 1, 2, 3]}}),
        ("marian_dir", {"encoder": {1: [0, 1, 2, 3]}, "decoder": {0: [2]}, "cross": {1: [0, 3]}}),
    ],
)
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


def written_like_transformers4(source: Path, out: Path, pruned: dict[int, list[int]]) -> Path:
    """Writes ``source`` as transformers 4.x's ``prune_heads`` then ``save_pretrained`` left it: the pruned heads'
    query/key/value rows (weights and biases) and output-projection columns cut out, ``pruned_heads`` in config.json."""
    model = load_model(source)
    config = model.config
    heads = config.num_attention_heads if hasattr(config, "num_attention_heads") else config.n_head
    size = config.hidden_size // heads
    state = {key: value.clone() for key, value in model.state_dict().items() if key != "lm_head.weight"}  # tied
    for layer, gone in pruned.items():
        kept = torch.cat([torch.arange(h * size, (h + 1) * size) for h in range(heads) if h not in gone])
        if config.model_type == "gpt2":  # Conv1D: [query | key | value] columns in, output rows
            prefix, width = f"transformer.h.{layer}.attn.", config.hidden_size
            fused = torch.cat([kept, kept + width, kept + 2 * width])
            state[prefix + "c_attn.weight"] = state[prefix + "c_attn.weight"][:, fused]
            state[prefix + "c_attn.bias"] = state[prefix + "c_attn.bias"][fused]
            state[prefix + "c_proj.weight"] = state[prefix + "c_proj.weight"][kept]
        else:
            prefix = f"bert.encoder.layer.{layer}.attention."
            for part in ("query", "key", "value"):
                for kind in ("weight", "bias"):
                    key = f"{prefix}self.{part}.{kind}"
                    state[key] = state[key][kept]
            state[prefix + "output.dense.weight"] = state[prefix + "output.dense.weight"][:, kept]
    out.mkdir()
    save_file({key: value.contiguous() for key, value in state.items()}, str(out / "model.safetensors"))
    settings = json.loads((source / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**settings, "pruned_heads": {str(k): v for k, v in pruned.items()}}))
    load_tokenizer(source).save_pretrained(out)
    return out


@pytest.mark.parametrize(("fixture", "kind"), [("bert_dir", "encoder"), ("gpt2_dir", "decoder")])
def test_a_checkpoint_pruned_by_transformers4_loads_as_its_plan_and_prunes_and_exports_on(
    request, tmp_path, fixture, kind
):
    source = request.getfixturevalue(fixture)
    pruned = {0: [1, 2], 1: [0]}
    folder = written_like_transformers4(source, tmp_path / "classic", pruned)
    loaded = load_model(folder)
    assert HeadPlan.of_model(build_inventory(loaded)).removed == {kind: pruned}
    full = load_model(source)
    batch = dict(load_tokenizer(source)(["a dull and boring film about the movie"], return_tensors="pt"))
    with torch.no_grad():
        got = loaded(**batch).logits
        with HeadGates(build_inventory(full)).mask({kind: pruned}):
            expected = full(**batch).logits
        with HeadGates(build_inventory(full)).mask({kind: {0: [0, 2], 1: [0]}}):  # one head off: far from it
            wrong = full(**batch).logits
    assert (got - expected).abs().max() <= 1e-5 < 1e-3 <= (wrong - expected).abs().max()
    # On from there: pruned further by original indices, saved in headprune's format, exported and checked.
    result = prune_checkpoint(folder, tmp_path / "further", plan=HeadPlan({kind: {1: [3]}}))
    assert HeadPlan.of_model(build_inventory(load_model(result.out))).removed == {kind: {0: [1, 2], 1: [0, 3]}}
    assert "pruned_heads" not in json.loads((tmp_path / "further" / "config.json").read_text())
    exported = export_to_repository(folder, tmp_path / "repo", "classic")
    assert exported.validation.passed and exported.heads == exported.original_heads - 3


def test_pruned_heads_of_a_family_transformers4_could_not_prune_are_refused(marian_dir, tmp_path):
    (tmp_path / "m").mkdir()
    for file in marian_dir.iterdir():
        if file.is_file():
            (tmp_path / "m" / file.name).write_bytes(file.read_bytes())
    settings = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**settings, "pruned_heads": {"0": [1]}}))
    with pytest.raises(HeadpruneError, match="transformers 4.x could not prune heads of marian models"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**settings, "pruned_heads": [1]}))
    with pytest.raises(HeadpruneError, match="is not an object of layers and head lists"):
        load_model(tmp_path / "m")
