"""Model families, described once as data.

Every stage (inventory, gating, scoring, shrinking, export, reports) reads these
descriptions instead of special-casing model classes. Paths are dotted attribute
paths: ``layers`` from the model's ``base_model``, the rest from one layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import HeadpruneError


@dataclass(frozen=True)
class AttentionKind:
    """Where one attention type lives in a layer stack.

    ``attention`` is the module that computes all heads (and is replaced when a
    layer loses every head); ``output`` is the projection that mixes the heads,
    whose input is (..., heads * head_size). ``query_side`` names the token mask
    ("encoder" or "decoder") that covers this attention's query positions.
    """

    name: str
    layers: str
    attention: str
    query: str
    key: str
    value: str
    output: str
    config_heads: str
    head_count_attr: str
    head_size_attr: str
    width_attr: str | None
    query_side: str


@dataclass(frozen=True)
class ModelFamily:
    """A family of Hugging Face architectures sharing one attention layout."""

    name: str
    model_types: tuple[str, ...]
    kinds: tuple[AttentionKind, ...]
    seq2seq: bool


def _bert_kind() -> AttentionKind:
    return AttentionKind(
        name="encoder",
        layers="encoder.layer",
        attention="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        output="attention.output.dense",
        config_heads="num_attention_heads",
        head_count_attr="num_attention_heads",
        head_size_attr="attention_head_size",
        width_attr="all_head_size",
        query_side="encoder",
    )


def _bart_kind(name: str, stack: str, module: str, config_heads: str, query_side: str) -> AttentionKind:
    return AttentionKind(
        name=name,
        layers=f"{stack}.layers",
        attention=module,
        query=f"{module}.q_proj",
        key=f"{module}.k_proj",
        value=f"{module}.v_proj",
        output=f"{module}.out_proj",
        config_heads=config_heads,
        head_count_attr="num_heads",
        head_size_attr="head_dim",
        width_attr=None,
        query_side=query_side,
    )


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        name="bert-encoder",
        model_types=("bert", "roberta", "electra", "xlm-roberta", "camembert"),
        kinds=(_bert_kind(),),
        seq2seq=False,
    ),
    ModelFamily(
        name="bart-encoder-decoder",
        model_types=("marian", "bart", "mbart"),
        kinds=(
            _bart_kind("encoder", "encoder", "self_attn", "encoder_attention_heads", "encoder"),
            _bart_kind("decoder", "decoder", "self_attn", "decoder_attention_heads", "decoder"),
            _bart_kind("cross", "decoder", "encoder_attn", "decoder_attention_heads", "decoder"),
        ),
        seq2seq=True,
    ),
)


def supported_model_types() -> list[str]:
    """Returns every ``config.model_type`` headprune can prune."""
    return sorted(t for family in FAMILIES for t in family.model_types)


def family_for(model_type: str) -> ModelFamily:
    """Returns the family describing ``model_type``; raises a HeadpruneError listing the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    listing = "; ".join(f"{f.name}: {', '.join(f.model_types)}" for f in FAMILIES)
    raise HeadpruneError(
        f"model type '{model_type}' is not supported by headprune",
        f"use a model of a supported family ({listing})",
    )
