"""Importance scores match finite differences, exclude padding, and rank heads sensibly."""

from __future__ import annotations

import copy

import pytest
import torch

from exporter import (
    HeadGates,
    HeadPlan,
    build_inventory,
    compute_importance,
    load_model,
    load_tokenizer,
    plan_from_scores,
)
from exporter.data import encode_batch, read_examples, task_of
from exporter.errors import HeadpruneError
from exporter.evaluation.quality import Evaluator
from exporter.pruning.scoring import batch_loss, query_masks
from tests.helpers import random_sentences


@pytest.mark.parametrize(
    "model_fixture,data_fixture",
    [
        ("bert_dir", "cls_data"),
        ("distilbert_dir", "cls_data"),
        ("mpnet_dir", "cls_data"),
        ("deberta_dir", "cls_data"),
        ("marian_dir", "mt_data"),
        ("gpt2_dir", "lm_data"),
        ("llama_dir", "lm_data"),
        ("vit_dir", "image_data"),
    ],
)
def test_importance_equals_finite_difference_of_the_gate(request, model_fixture, data_fixture):
    path, data = request.getfixturevalue(model_fixture), request.getfixturevalue(data_fixture)
    model = load_model(path).double()
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):  # Llama's computes in float32 even in a float64 model
            module.forward = lambda hidden, norm=module: (
                norm.weight * hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
            )
    tokenizer = load_tokenizer(path)
    examples = read_examples(data, task_of(model))[:8]
    scores = compute_importance(model, tokenizer, examples, method="batch", normalize=False, batch_size=len(examples))
    batch = encode_batch(tokenizer, examples, task_of(model), model.config)
    tokens = {side: int(mask.sum()) for side, mask in query_masks(batch, task_of(model), model.config).items()}
    inventory = build_inventory(model)
    gates = HeadGates(inventory)
    eps = 1e-4
    with torch.no_grad(), gates:
        for layer in inventory.layers[:: max(1, len(inventory.layers) // 3)]:
            gate = gates.values[(layer.attention_type.name, layer.index)]
            for head in range(len(layer.kept)):
                gate[head] = 1 + eps
                up = batch_loss(model, batch).item()
                gate[head] = 1 - eps
                down = batch_loss(model, batch).item()
                gate[head] = 1
                estimate = abs(up - down) / (2 * eps) / tokens[layer.attention_type.query_side]
                assert scores.scores[layer.attention_type.name][layer.index][head] == pytest.approx(
                    estimate, rel=1e-3, abs=1e-9
                )


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


def test_rescoring_gives_masked_heads_zero_and_keeps_them_out_of_the_layer_norm(bert_dir, cls_data):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    examples = read_examples(cls_data, "classification")[:16]
    masked = HeadPlan({"encoder": {0: [0, 1, 2], 1: [3]}})
    scores = compute_importance(model, tokenizer, examples, removed=masked)
    assert scores.scores["encoder"][0][:3] == [0.0, 0.0, 0.0]
    assert scores.scores["encoder"][0][3] == pytest.approx(1.0)  # the survivor of a layer of 4 with 3 masked
    assert scores.scores["encoder"][1][3] == 0.0
    assert sum(v * v for v in scores.scores["encoder"][1]) == pytest.approx(1.0)
    # The survivors' scores equal the unnormalised ones divided by the survivors' own norm.
    raw = compute_importance(model, tokenizer, examples, removed=masked, normalize=False)
    kept = torch.tensor(raw.scores["encoder"][1][:3])
    assert scores.scores["encoder"][1][:3] == pytest.approx((kept / kept.norm()).tolist(), rel=1e-5)
    # The bertology behaviour, behind its option: masked heads keep a gradient score and enter the norm.
    bertology = compute_importance(model, tokenizer, examples, removed=masked, masked_in_norm=True)
    assert min(bertology.scores["encoder"][0][:3]) > 0
    assert bertology.scores["encoder"][0][3] < 0.99


def test_string_and_integer_layer_keys_mask_the_same_heads(bert_dir, cls_data):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    examples = read_examples(cls_data, "classification")
    evaluator = Evaluator(model, tokenizer, examples)
    as_json = evaluator({"encoder": {"0": [0, 1, 2, 3], "1": [0, 1, 2, 3], "2": [0, 1, 2, 3]}})
    as_ints = Evaluator(model, tokenizer, examples)({"encoder": {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}})
    assert as_json.per_example == as_ints.per_example
    assert as_json.per_example != evaluator().per_example  # masking every head really changed predictions
    batch = encode_batch(tokenizer, examples[:4], "classification", model.config)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        with HeadGates(build_inventory(model)).mask({"encoder": {"1": [2]}}):
            by_string = model(**inputs).logits
        with HeadGates(build_inventory(model)).mask(HeadPlan({"encoder": {1: [2]}})):
            by_int = model(**inputs).logits
        unmasked = model(**inputs).logits
    assert torch.equal(by_string, by_int) and (by_int - unmasked).abs().max() > 1e-3


def test_token_estimator_equals_an_independent_per_token_gradient(bert_dir, cls_data):
    """I_h by the definition: a separate gate per (example, token, head), |dL/dgate| summed over real tokens."""
    model = load_model(bert_dir).double()
    tokenizer = load_tokenizer(bert_dir)
    examples = read_examples(cls_data, "classification")[:8]
    scores = compute_importance(model, tokenizer, examples, normalize=False, batch_size=3)
    batch = encode_batch(tokenizer, examples, "classification", model.config)
    inventory = build_inventory(model)
    gates, handles = {}, []
    for layer in inventory.layers:

        def pre_hook(module, args, index=layer.index, heads=len(layer.kept)):
            hidden = args[0]
            gate = torch.ones(*hidden.shape[:-1], heads, 1, dtype=hidden.dtype, requires_grad=True)
            gates[index] = gate
            return ((hidden.reshape(*hidden.shape[:-1], heads, -1) * gate).reshape(hidden.shape),)

        handles.append(layer.module("output").register_forward_pre_hook(pre_hook))
    try:
        batch_loss(model, batch).backward()
    finally:
        for handle in handles:
            handle.remove()
    mask = batch["attention_mask"].double()
    for index, gate in gates.items():
        expected = (gate.grad[..., 0].abs() * mask[..., None]).sum((0, 1)) / mask.sum()
        assert scores.scores["encoder"][index] == pytest.approx(expected.tolist(), rel=1e-6)


def test_regression_heads_score_with_squared_error(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from tests.helpers import random_sentences, randomize

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32, num_labels=1
    )
    model = randomize(BertForSequenceClassification(config).eval())
    tokenizer = load_tokenizer(_tiny_tokenizer_dir(tmp_path))
    examples = [{"text": text, "label": str(0.5 * i)} for i, text in enumerate(random_sentences(12, seed=4))]
    scores = compute_importance(model, tokenizer, examples, normalize=False)
    assert min(v for row in scores.scores["encoder"].values() for v in row) > 0
    with pytest.raises(HeadpruneError, match="regression"):
        Evaluator(model, tokenizer, examples)
    with pytest.raises(HeadpruneError, match="not a number"):
        compute_importance(model, tokenizer, [{"text": "the movie", "label": "good"}])


def _tiny_tokenizer_dir(tmp_path):
    from tests.helpers import make_bert

    return make_bert(tmp_path / "tokenizer-source")


def test_texts_longer_than_the_position_embeddings_are_cut_to_them(marian_dir):
    model, tokenizer = load_model(marian_dir), load_tokenizer(marian_dir)
    long = " ".join(random_sentences(30, seed=3))  # far more words than the tiny Marian's 64 positions
    batch = encode_batch(tokenizer, [{"source": long, "target": long}], "translation", model.config, max_length=128)
    assert batch["input_ids"].shape[1] == batch["labels"].shape[1] == model.config.max_position_embeddings
    scores = compute_importance(model, tokenizer, [{"source": long, "target": long}])  # used to index past them
    assert scores.examples == 1
