"""Structural shrinking computes exactly what head masking computes, for every attention type."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import HeadGates, HeadPlan, apply_plan, build_inventory, load_model, load_tokenizer

_cache: dict = {}


def model_and_batch(path):
    if path not in _cache:
        model, tokenizer = load_model(path), load_tokenizer(path)
        if model.config.is_encoder_decoder:
            batch = dict(tokenizer(["the movie was great fun", "a bad film"], padding=True, return_tensors="pt"))
            batch["decoder_input_ids"] = torch.tensor([[0, 5, 6, 7, 1], [0, 8, 9, 1, 0]])
        else:
            batch = dict(tokenizer(["the movie was great fun", "a bad film"], padding=True, return_tensors="pt"))
        _cache[path] = (model, batch)
    return _cache[path]


def random_plan(draw, inventory) -> dict:
    plan = {}
    for layer in inventory.layers:
        heads = draw(st.lists(st.integers(0, layer.original_heads - 1), max_size=layer.original_heads, unique=True))
        if draw(st.booleans()) and draw(st.booleans()):
            heads = list(range(layer.original_heads))  # a zero-head layer, often enough to matter
        if heads:
            plan.setdefault(layer.kind.name, {})[layer.index] = sorted(heads)
    return plan


def check_masked_equals_shrunk(path, data):
    model, batch = model_and_batch(path)
    inventory = build_inventory(model)
    plan = random_plan(data.draw, inventory)
    with torch.no_grad(), HeadGates(inventory).mask(plan):
        masked = model(**batch).logits
    shrunk_model = copy.deepcopy(model)
    apply_plan(shrunk_model, HeadPlan(plan))
    with torch.no_grad():
        shrunk = shrunk_model(**batch).logits
    assert (masked - shrunk).abs().max().item() <= 1e-5
    kept = build_inventory(shrunk_model)
    for layer in kept.layers:
        assert layer.kept == [h for h in range(layer.original_heads) if h not in plan.get(layer.kind.name, {}).get(layer.index, [])]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_masked_equals_shrunk_bert(bert_dir, data):
    check_masked_equals_shrunk(bert_dir, data)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_masked_equals_shrunk_marian_all_three_attention_types(marian_dir, data):
    check_masked_equals_shrunk(marian_dir, data)


def test_masking_a_head_changes_the_output(bert_dir):
    model, batch = model_and_batch(bert_dir)
    with torch.no_grad():
        full = model(**batch).logits
        with HeadGates(build_inventory(model)).mask({"encoder": {0: [0, 1]}}):
            masked = model(**batch).logits
    assert (full - masked).abs().max().item() > 1e-6


@pytest.mark.parametrize("first,second", [({"encoder": {0: [1, 3]}}, {"encoder": {0: [0], 2: [0, 1, 2, 3]}}),
                                          ({"encoder": {1: [0, 1]}}, {"encoder": {1: [0, 1, 2, 3]}})])
def test_pruning_a_pruned_model_composes(bert_dir, first, second):
    model, batch = model_and_batch(bert_dir)
    twice = copy.deepcopy(model)
    apply_plan(twice, HeadPlan(first))
    apply_plan(twice, HeadPlan(second))
    once = copy.deepcopy(model)
    apply_plan(once, HeadPlan(first).merged(HeadPlan(second)))
    with torch.no_grad():
        assert torch.equal(twice(**batch).logits, once(**batch).logits)
    assert HeadPlan.of_model(build_inventory(twice)).removed == HeadPlan(first).merged(HeadPlan(second)).removed


TOLERANCE = 1e-5  # the tolerance of the masked == shrunk checks above


def _shrunk_logits(path, plan, damage=None):
    model, batch = model_and_batch(path)
    shrunk = copy.deepcopy(model)
    apply_plan(shrunk, HeadPlan(plan))
    if damage:
        with torch.no_grad():
            damage(build_inventory(shrunk))
    with torch.no_grad():
        return shrunk(**batch).logits


def _drop_biases(inventory):
    for layer in inventory.layers:
        for role in ("query", "key", "value"):
            layer.module(role).bias.zero_()


def _swap_rows(inventory):
    value = inventory.layers[1].module("value").weight
    value[[0, 9]] = value[[9, 0]]


@pytest.mark.parametrize("path_fixture", ["bert_dir", "marian_dir"])
def test_the_equality_check_fails_far_above_tolerance_on_broken_shrinking(request, path_fixture):
    path = request.getfixturevalue(path_fixture)
    model, batch = model_and_batch(path)
    inventory = build_inventory(model)
    plan = {kind: {0: [1, 2], 1: [0]} for kind in inventory.kinds}
    wrong_head = {kind: {0: [1, 3], 1: [0]} for kind in inventory.kinds}
    with torch.no_grad(), HeadGates(inventory).mask(plan):
        masked = model(**batch).logits
    assert (masked - _shrunk_logits(path, plan)).abs().max() <= TOLERANCE
    for broken in (_shrunk_logits(path, wrong_head), _shrunk_logits(path, plan, _drop_biases),
                   _shrunk_logits(path, plan, _swap_rows)):
        assert (masked - broken).abs().max() > 1000 * TOLERANCE
