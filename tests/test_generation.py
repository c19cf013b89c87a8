"""Generation with a KV cache: a shrunk model generates exactly what the masked model generates (issue 8).

Marian/BART take the position of each new decoder token from the length of decoder layer 0's self-attention
cache, so a layer left with zero heads must still keep its cache entries as long as the real module would.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import HeadGates, HeadPlan, apply_plan, build_inventory, load_model, load_tokenizer
from tests.helpers import make_marian

SOURCES = ["the movie was great fun", "a bad film"]
# A decoder prompt of several tokens: the first cached step writes 4 positions at once, so a headless
# layer that appends a fixed number of positions per call (instead of one per token) is caught too.
PROMPT = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
NEW_TOKENS = 10
TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def load_with_inputs(path):
    """Returns (model, inputs): the model in ``path``, its two source sentences and the decoder prompt."""
    tokenizer = load_tokenizer(path)
    inputs = dict(tokenizer(SOURCES, padding=True, return_tensors="pt"))
    inputs["decoder_input_ids"] = PROMPT
    return load_model(path), inputs


@pytest.fixture(scope="module")
def marian2(marian_dir):
    return load_with_inputs(marian_dir)


@pytest.fixture(scope="module")
def marian3(tmp_path_factory):
    return load_with_inputs(make_marian(tmp_path_factory.mktemp("generation") / "marian3", seed=3, layers=3))


@pytest.fixture(params=["marian2", "marian3"])
def loaded(request):
    return request.getfixturevalue(request.param)


def generate(model, inputs, use_cache: bool = True, num_beams: int = 1):
    """Greedy (or beam) generation of exactly NEW_TOKENS tokens; returns the output (sequences, scores, logits, cache)."""
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            forced_eos_token_id=None,
            num_beams=num_beams,
            do_sample=False,
            use_cache=use_cache,
            output_scores=True,
            output_logits=True,
            return_dict_in_generate=True,
        )


def cache_lengths(cache) -> dict:
    """Returns every decoder layer's self- and cross-attention cache length, and the cross 'is_updated' flags."""
    return {
        "self": [cache.self_attention_cache.get_seq_length(i) for i in range(len(cache.self_attention_cache))],
        "cross": [cache.cross_attention_cache.get_seq_length(i) for i in range(len(cache.cross_attention_cache))],
        "is_updated": dict(cache.is_updated),
    }


def assert_same_generation(expected, actual, what: str) -> None:
    assert torch.equal(expected.sequences, actual.sequences), (
        f"{what}: token sequences differ\n{expected.sequences.tolist()}\n{actual.sequences.tolist()}"
    )
    for name in ("logits", "scores"):
        want, got = torch.stack(getattr(expected, name), 1), torch.stack(getattr(actual, name), 1)
        torch.testing.assert_close(got, want, rtol=0, atol=TOLERANCE, msg=lambda m: f"{what}, {name}: {m}")


def check_generation(loaded, plan: dict) -> None:
    model, inputs = loaded
    inventory = build_inventory(model)
    with HeadGates(inventory).mask(plan):
        masked = generate(model, inputs)
    shrunk_model = copy.deepcopy(model)
    apply_plan(shrunk_model, HeadPlan(plan))
    shrunk = generate(shrunk_model, inputs)
    assert shrunk.sequences.shape[1] == PROMPT.shape[1] + NEW_TOKENS
    assert_same_generation(masked, shrunk, f"masked vs shrunk with cache, plan {plan}")
    assert cache_lengths(shrunk.cache) == cache_lengths(masked.cache)
    assert_same_generation(
        generate(shrunk_model, inputs, use_cache=False), shrunk, f"shrunk without vs with cache, plan {plan}"
    )


@st.composite
def plans(draw, inventory) -> dict:
    """Random head plans; each attention type is now and then left headless in every layer."""
    plan = {}
    for kind in inventory.attention_types:
        all_headless = draw(st.integers(0, 4)) == 0
        for layer in inventory.of_type(kind):
            everything = list(range(layer.original_heads))
            if all_headless or draw(st.integers(0, 2)) == 0:
                heads = everything
            else:
                heads = draw(st.lists(st.sampled_from(everything), max_size=layer.original_heads, unique=True))
            if heads:
                plan.setdefault(kind, {})[layer.index] = sorted(heads)
    return plan


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_shrunk_generates_what_masked_generates(loaded, data):
    check_generation(loaded, data.draw(plans(build_inventory(loaded[0]))))


def headless(loaded, *kinds: str, layers: tuple[int, ...] | None = None) -> dict:
    inventory = build_inventory(loaded[0])
    return {
        kind: {
            layer.index: list(range(layer.original_heads))
            for layer in inventory.of_type(kind)
            if layers is None or layer.index in layers
        }
        for kind in kinds
    }


@pytest.mark.parametrize(
    "kinds,layers",
    [
        (("decoder",), (0,)),  # the position of every new token is read from this layer's cache
        (("decoder", "cross"), (0,)),
        (("cross",), (0,)),
        (("decoder",), None),  # every layer of one type headless
        (("cross",), None),
        (("encoder",), None),
        (("encoder", "decoder", "cross"), None),  # no heads left at all
    ],
)
def test_headless_layers_generate_what_masked_generates(loaded, kinds, layers):
    check_generation(loaded, headless(loaded, *kinds, layers=layers))


def test_decoder_layer_0_headless_with_other_heads_pruned(marian3):
    plan = headless(marian3, "decoder", layers=(0,))
    plan["decoder"][2] = [1, 3]
    plan["cross"] = {0: [0], 1: [0, 1, 2, 3]}
    plan["encoder"] = {1: [2]}
    check_generation(marian3, plan)


def test_beam_search_reorders_the_headless_layers_cache(marian3):
    plan = headless(marian3, "decoder", "cross", layers=(0, 2))
    model, inputs = marian3
    with HeadGates(build_inventory(model)).mask(plan):
        masked = generate(model, inputs, num_beams=3)
    shrunk_model = copy.deepcopy(model)
    apply_plan(shrunk_model, HeadPlan(plan))
    shrunk = generate(shrunk_model, inputs, num_beams=3)
    assert torch.equal(masked.sequences, shrunk.sequences)
    torch.testing.assert_close(shrunk.sequences_scores, masked.sequences_scores, rtol=0, atol=TOLERANCE)
