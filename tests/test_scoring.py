"""Importance scores match finite differences, exclude padding, and rank heads sensibly."""

from __future__ import annotations

import copy

import pytest
import torch

from exporter import HeadGates, HeadPlan, build_inventory, compute_importance, load_model, load_tokenizer, plan_from_scores
from exporter.data import encode_batch, read_examples, task_of
from exporter.errors import HeadpruneError
from exporter.scoring import batch_loss, query_masks


@pytest.mark.parametrize("model_fixture,data_fixture", [("bert_dir", "cls_data"), ("marian_dir", "mt_data")])
def test_importance_equals_finite_difference_of_the_gate(request, model_fixture, data_fixture):
    path, data = request.getfixturevalue(model_fixture), request.getfixturevalue(data_fixture)
    model = load_model(path).double()
    tokenizer = load_tokenizer(path)
    examples = read_examples(data, task_of(model))[:8]
    scores = compute_importance(model, tokenizer, examples, method="batch", normalize=False, batch_size=len(examples))
    batch = encode_batch(tokenizer, examples, task_of(model), model.config)
    tokens = {side: int(mask.sum()) for side, mask in query_masks(batch, model.config.is_encoder_decoder).items()}
    inventory = build_inventory(model)
    gates = HeadGates(inventory)
    eps = 1e-4
    with torch.no_grad(), gates:
        for layer in inventory.layers[:: max(1, len(inventory.layers) // 3)]:
            gate = gates.values[(layer.kind.name, layer.index)]
            for head in range(len(layer.kept)):
                gate[head] = 1 + eps
                up = batch_loss(model, batch).item()
                gate[head] = 1 - eps
                down = batch_loss(model, batch).item()
                gate[head] = 1
                estimate = abs(up - down) / (2 * eps) / tokens[layer.kind.query_side]
                assert scores.scores[layer.kind.name][layer.index][head] == pytest.approx(estimate, rel=1e-3, abs=1e-9)


def test_token_method_bounds_batch_method_and_normalises_per_layer(bert_dir, cls_data):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    examples = read_examples(cls_data, "classification")[:16]
    token = compute_importance(model, tokenizer, examples, method="token", normalize=False, batch_size=16)
    batch = compute_importance(model, tokenizer, examples, method="batch", normalize=False, batch_size=16)
    for layer, row in token.scores["encoder"].items():
        for t, b in zip(row, batch.scores["encoder"][layer]):
            assert t >= b - 1e-7  # |sum over tokens| <= sum of |per token|
    normalized = compute_importance(model, tokenizer, examples, method="token", batch_size=16)
    for row in normalized.scores["encoder"].values():
        assert sum(v * v for v in row) == pytest.approx(1.0, rel=1e-5)


def test_padding_does_not_change_token_scores(bert_dir, cls_data):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    examples = read_examples(cls_data, "classification")[:12]
    alone = compute_importance(model, tokenizer, examples, normalize=False, batch_size=1)
    padded = compute_importance(model, tokenizer, examples, normalize=False, batch_size=12)
    for layer, row in alone.scores["encoder"].items():
        assert row == pytest.approx(padded.scores["encoder"][layer], rel=1e-4)


def test_scoring_leaves_the_model_trainable_and_unchanged(bert_dir, cls_data):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    before = copy.deepcopy(model.state_dict())
    compute_importance(model, tokenizer, read_examples(cls_data, "classification")[:8])
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plan_from_scores_removes_the_lowest_globally_and_respects_limits():
    scores = {"encoder": {0: [0.9, 0.1, 0.5, 0.2], 1: [0.05, 0.04, 0.8, 0.7]}}
    plan = plan_from_scores(scores, 0.5)
    assert plan.removed == {"encoder": {0: [1, 3], 1: [0, 1]}}
    limited = plan_from_scores(scores, 0.5, min_heads_per_layer=3)
    assert limited.removed == {"encoder": {0: [1], 1: [1]}}
    already = plan_from_scores({"encoder": {0: [0.9, None, 0.5, 0.2], 1: [0.05, 0.04, 0.8, 0.7]}}, 0.25)
    assert already.count() == 2 and already.heads("encoder", 0) == {1}
    per_type = plan_from_scores({"a": {0: [0.1, 0.2]}, "b": {0: [0.9, 0.8]}}, 0.5, per_type=True)
    assert per_type.removed == {"a": {0: [0]}, "b": {0: [1]}}
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(HeadpruneError, match="outside"):
            plan_from_scores(scores, bad)


def test_plan_validation_names_the_missing_layer_or_head(bert_dir):
    inventory = build_inventory(load_model(bert_dir))
    with pytest.raises(HeadpruneError, match="layer 7"):
        HeadPlan({"encoder": {7: [0]}}).validate(inventory)
    with pytest.raises(HeadpruneError, match=r"\[9\]"):
        HeadPlan({"encoder": {0: [9]}}).validate(inventory)
    with pytest.raises(HeadpruneError, match="cross"):
        HeadPlan({"cross": {0: [0]}}).validate(inventory)
