"""Structural shrinking computes exactly what head masking computes, for every attention type."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import HeadGates, HeadPlan, apply_plan, build_inventory, load_model, load_tokenizer
from tests.helpers import random_plan


@pytest.fixture(scope="module")
def bert(bert_dir):
    """The tiny BERT and two sentences' inputs."""
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    return model, dict(tokenizer(["the movie was great fun", "a bad film"], padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def marian(marian_dir):
    """The tiny Marian, two source sentences and decoder inputs."""
    model, tokenizer = load_model(marian_dir), load_tokenizer(marian_dir)
    batch = dict(tokenizer(["the movie was great fun", "a bad film"], padding=True, return_tensors="pt"))
    batch["decoder_input_ids"] = torch.tensor([[0, 5, 6, 7, 1], [0, 8, 9, 1, 0]])
    return model, batch


def check_masked_equals_shrunk(loaded, data):
    model, batch = loaded
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
        assert layer.kept == [
            h
            for h in range(layer.original_heads)
            if h not in plan.get(layer.attention_type.name, {}).get(layer.index, [])
        ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_masked_equals_shrunk_bert(bert, data):
    check_masked_equals_shrunk(bert, data)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_masked_equals_shrunk_marian_all_three_attention_types(marian, data):
    check_masked_equals_shrunk(marian, data)


def test_masking_a_head_changes_the_output(bert):
    model, batch = bert
    with torch.no_grad():
        full = model(**batch).logits
        with HeadGates(build_inventory(model)).mask({"encoder": {0: [0, 1]}}):
            masked = model(**batch).logits
    assert (full - masked).abs().max().item() > 1e-6


@pytest.mark.parametrize(
    "first,second",
    [
        ({"encoder": {0: [1, 3]}}, {"encoder": {0: [0], 2: [0, 1, 2, 3]}}),
        ({"encoder": {1: [0, 1]}}, {"encoder": {1: [0, 1, 2, 3]}}),
    ],
)
def test_pruning_a_pruned_model_composes(bert, first, second):
    model, batch = bert
    twice = copy.deepcopy(model)
    apply_plan(twice, HeadPlan(first))
    apply_plan(twice, HeadPlan(second))
    once = copy.deepcopy(model)
    apply_plan(once, HeadPlan(first).merged(HeadPlan(second)))
    with torch.no_grad():
        assert torch.equal(twice(**batch).logits, once(**batch).logits)
    assert HeadPlan.of_model(build_inventory(twice)).removed == HeadPlan(first).merged(HeadPlan(second)).removed


TOLERANCE = 1e-5  # the tolerance of the masked == shrunk checks above


def _shrunk_logits(loaded, plan, damage=None):
    model, batch = loaded
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


@pytest.mark.parametrize("model_fixture", ["bert", "marian"])
def test_the_equality_check_fails_far_above_tolerance_on_broken_shrinking(request, model_fixture):
    loaded = request.getfixturevalue(model_fixture)
    model, batch = loaded
    inventory = build_inventory(model)
    plan = {kind: {0: [1, 2], 1: [0]} for kind in inventory.attention_types}
    wrong_head = {kind: {0: [1, 3], 1: [0]} for kind in inventory.attention_types}
    with torch.no_grad(), HeadGates(inventory).mask(plan):
        masked = model(**batch).logits
    assert (masked - _shrunk_logits(loaded, plan)).abs().max() <= TOLERANCE
    for broken in (
        _shrunk_logits(loaded, wrong_head),
        _shrunk_logits(loaded, plan, _drop_biases),
        _shrunk_logits(loaded, plan, _swap_rows),
    ):
        assert (masked - broken).abs().max() > 1000 * TOLERANCE
