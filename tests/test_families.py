"""Every family headprune claims to support: masked == shrunk on a tiny random model of each architecture."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from exporter import HeadGates, HeadPlan, apply_plan, build_inventory
from exporter.pruning.families import supported_model_types
from tests.helpers import random_plan, randomize

ENCODER = dict(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
)
SEQ2SEQ = dict(
    vocab_size=50,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=40,
)
ARCHITECTURES = {
    "bert": ("BertConfig", "BertForSequenceClassification", ENCODER),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", ENCODER),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", ENCODER | {"embedding_size": 32}),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification", ENCODER),
    "camembert": ("CamembertConfig", "CamembertForSequenceClassification", ENCODER),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        dict(vocab_size=50, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=40),
    ),
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification", ENCODER | {"pad_token_id": 1}),
    # DeBERTa-v2's own positional key/query projections, and v3's sharing of query_proj/key_proj instead.
    "deberta-v2": (
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        ENCODER
        | {
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "share_att_key": False,
            "max_relative_positions": 16,
            "type_vocab_size": 0,
        },
    ),
    "deberta-v3": (
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        ENCODER
        | {
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "share_att_key": True,
            "position_buckets": 8,
            "norm_rel_ebd": "layer_norm",
            "type_vocab_size": 0,
        },
    ),
    "vit": (
        "ViTConfig",
        "ViTForImageClassification",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=16,
            patch_size=4,
        ),
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=40)),
    # Grouped-query attention: 4 query heads over 2 key/value heads (Qwen2 adds Q/K/V biases).
    "llama": ("LlamaConfig", "LlamaForCausalLM", ENCODER | {"num_key_value_heads": 2, "attention_bias": True}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", ENCODER | {"num_key_value_heads": 2}),
    "mistral": ("MistralConfig", "MistralForCausalLM", ENCODER | {"num_key_value_heads": 2, "sliding_window": 4}),
    "marian": ("MarianConfig", "MarianMTModel", SEQ2SEQ | {"decoder_start_token_id": 0, "pad_token_id": 0}),
    "bart": ("BartConfig", "BartForConditionalGeneration", SEQ2SEQ),
    "mbart": ("MBartConfig", "MBartForConditionalGeneration", SEQ2SEQ),
}


def test_every_supported_type_is_tested():
    tested = {getattr(transformers, config_name).model_type for config_name, _, _ in ARCHITECTURES.values()}
    assert sorted(tested) == supported_model_types()


@functools.cache
def tiny(model_type: str) -> tuple:
    """Returns a tiny random model of ``model_type`` (non-zero biases) and inputs for it."""
    config_name, model_name, values = ARCHITECTURES[model_type]
    torch.manual_seed(0)
    model = randomize(getattr(transformers, model_name)(getattr(transformers, config_name)(**values)).eval())
    ids = torch.randint(3, 50, (2, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model_type == "vit":
        inputs = {"pixel_values": torch.randn(2, 3, 16, 16)}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.randint(3, 50, (2, 5))
    return model, inputs


def masked_and_shrunk(model_type: str, plan: dict) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """Returns the logits of the model with ``plan``'s heads masked and shrunk away, and the shrunk model."""
    model, inputs = tiny(model_type)
    with torch.no_grad(), HeadGates(build_inventory(model)).mask(plan):
        masked = model(**inputs).logits
    shrunk = copy.deepcopy(model)
    apply_plan(shrunk, HeadPlan(plan))
    with torch.no_grad():
        return masked, shrunk(**inputs).logits, shrunk


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_masked_equals_shrunk(model_type):
    inventory = build_inventory(tiny(model_type)[0])
    plan = {kind: {0: [0, 2], 1: [0, 1, 2, 3]} for kind in inventory.attention_types}
    masked, shrunk, model = masked_and_shrunk(model_type, plan)
    assert (masked - shrunk).abs().max().item() <= 1e-5
    assert build_inventory(model).kept_head_count() == inventory.original_head_count() - 6 * len(
        inventory.attention_types
    )


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
@settings(max_examples=6, deadline=None, derandomize=True)
@given(data=st.data())
def test_masked_equals_shrunk_under_random_plans(model_type, data):
    plan = random_plan(data.draw, build_inventory(tiny(model_type)[0]))
    masked, shrunk, _ = masked_and_shrunk(model_type, plan)
    assert (masked - shrunk).abs().max().item() <= 1e-5
