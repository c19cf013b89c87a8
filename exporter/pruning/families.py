"""Model families, described once as data.

Every stage (inventory, gating, scoring, shrinking, export, reports) reads these
descriptions instead of special-casing model classes. Paths are dotted attribute
paths: ``layers`` from the model's ``base_model``, the rest from one layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from transformers.cache_utils import EncoderDecoderCache

from exporter.errors import HeadpruneError


@dataclass(frozen=True)
class AttentionType:
    """Where one attention type lives in a layer stack.

    ``attention`` is the module that computes all heads (and is replaced when a
    layer loses every head); ``output`` is the projection that mixes the heads,
    whose input is (..., heads * head_size). ``query_side`` names the token mask
    ("encoder" or "decoder") that covers this attention's query positions.
    ``query``, ``key`` and ``value`` may name one module (GPT-2's fused ``c_attn``):
    its output rows are then the query, key and value blocks in that order.
    ``head_count_attr`` (None when the module infers its head count from the
    projections' width) and ``width_attr`` are updated on shrinking. With grouped-query
    attention, ``key_value_heads`` names the config's key/value head count and
    ``groups_attr`` the module's query heads per key/value head; a key/value head is
    then removed only with every query head of its group. ``headless_cache``, if set, is called by a layer left with zero heads with the
    arguments its attention module would have received, and must leave the model's
    KV cache as that module would have (the model may read lengths from it); None
    when this attention never sees a cache. ``per_head_extras`` are further
    projections with one block of output rows per head (DeBERTa's positional key and
    query), shrunk with Q/K/V wherever a layer has them. ``on_shrink``, if set, is called with a
    shrunk attention module and its kept original heads, for per-head inputs that
    come from outside the module (MPNet's relative position bias).
    """

    name: str
    layers: str
    attention: str
    query: str
    key: str
    value: str
    output: str
    config_heads: str = "num_attention_heads"
    head_count_attr: str | None = "num_attention_heads"
    head_size_attr: str = "attention_head_size"
    width_attr: str | None = None
    query_side: str = "encoder"
    headless_cache: Callable[..., None] | None = None
    key_value_heads: str | None = None
    groups_attr: str | None = None
    per_head_extras: tuple[str, ...] = ()
    on_shrink: Callable[[nn.Module, list[int]], None] | None = None


@dataclass(frozen=True)
class ModelFamily:
    """A family of Hugging Face architectures sharing one attention layout."""

    name: str
    model_types: tuple[str, ...]
    attention_types: tuple[AttentionType, ...]
    # The attention type that ``pruned_heads`` in config.json names: transformers 4.x's ``prune_heads`` wrote it (with
    # the tensors shrunk) for the families whose classes could prune; None for the others.
    pruned_heads_type: str | None = None


def _inside(module: str, query: str, key: str, value: str, output: str, output_module: str | None = None) -> dict:
    """Returns the paths of an attention module and its projections (the output projection under ``output_module``
    when it lives outside the attention module)."""
    return {
        "attention": module,
        "query": f"{module}.{query}",
        "key": f"{module}.{key}",
        "value": f"{module}.{value}",
        "output": f"{output_module or module}.{output}",
    }


def _bert_attention() -> AttentionType:
    return AttentionType(
        name="encoder",
        layers="encoder.layer",
        **_inside("attention.self", "query", "key", "value", "dense", "attention.output"),
        width_attr="all_head_size",
    )


def _distilbert_attention() -> AttentionType:
    # Its forward infers the head count from the projections' width.
    return AttentionType(
        name="encoder",
        layers="transformer.layer",
        **_inside("attention", "q_lin", "k_lin", "v_lin", "out_lin"),
        config_heads="n_heads",
        head_count_attr="n_heads",
    )


def _deberta_attention() -> AttentionType:
    return AttentionType(
        name="encoder",
        layers="encoder.layer",
        **_inside("attention.self", "query_proj", "key_proj", "value_proj", "dense", "attention.output"),
        width_attr="all_head_size",
        # Absent with share_att_key (DeBERTa-v3), where the positional terms reuse query_proj and key_proj.
        per_head_extras=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
    )


def _vit_attention() -> AttentionType:
    return AttentionType(
        name="encoder",
        layers="layers",
        **_inside("attention", "q_proj", "k_proj", "v_proj", "o_proj"),
        head_size_attr="head_dim",
    )


def _kept_position_bias(attention: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    # MPNetAttention passes the bias as the third positional argument; a keyword is accepted too.
    kept = attention.headprune_bias_heads
    if len(args) > 2 and args[2] is not None:
        args = (*args[:2], args[2][:, kept], *args[3:])
    elif kwargs.get("position_bias") is not None:
        kwargs = {**kwargs, "position_bias": kwargs["position_bias"][:, kept]}
    return args, kwargs


def mpnet_position_bias(attention: nn.Module, kept: list[int]) -> None:
    """Makes a shrunk MPNet attention module add only its kept heads' rows of the relative position bias, which
    the encoder computes once, one row per original head, for every layer."""
    attention.headprune_bias_heads = list(kept)
    if not getattr(attention, "headprune_bias_hooked", False):
        attention.register_forward_pre_hook(_kept_position_bias, with_kwargs=True)
        attention.headprune_bias_hooked = True


def _mpnet_attention() -> AttentionType:
    return AttentionType(
        name="encoder",
        layers="encoder.layer",
        **_inside("attention.attn", "q", "k", "v", "o"),
        width_attr="all_head_size",
        on_shrink=mpnet_position_bias,
    )


def bart_headless_cache(
    attention: nn.Module,
    hidden_states,
    key_value_states=None,
    cache=None,
    attention_mask=None,
    past_key_values=None,
    **kwargs,
) -> None:
    """Updates a bart-family KV cache for a headless attention layer exactly where BartAttention would.

    Marian, BART and mBART take the position of the next decoder token from the length of decoder
    layer 0's self-attention cache, so a headless self-attention layer appends one entry per new
    token, and a headless cross-attention layer writes one per source token once and marks itself
    updated. The entries are placeholders (one head of width 1) that nothing reads: zero-head states
    would not do, as DynamicLayer reports the length of a cache holding no elements as 0.
    """
    cache = cache if cache is not None else past_key_values  # the real forward still accepts the old name
    if cache is None:
        return
    cross = key_value_states is not None
    layer_cache = cache
    if isinstance(cache, EncoderDecoderCache):
        if cross and cache.is_updated.get(attention.layer_idx):
            return
        layer_cache = cache.cross_attention_cache if cross else cache.self_attention_cache
    states = key_value_states if cross else hidden_states
    placeholder = states.new_zeros(states.shape[0], 1, states.shape[1], 1)
    layer_cache.update(placeholder, placeholder, attention.layer_idx, kwargs=kwargs)
    if cross and isinstance(cache, EncoderDecoderCache):
        cache.is_updated[attention.layer_idx] = True


def causal_headless_cache(
    attention: nn.Module, hidden_states, *args, cache=None, past_key_values=None, **kwargs
) -> None:
    """Appends one placeholder entry per new token to a decoder-only model's KV cache for a headless layer, as its
    attention module would have: generation reads the number of tokens seen so far from the cache."""
    cache = cache if cache is not None else past_key_values
    if cache is None:
        return
    placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
    cache.update(placeholder, placeholder, attention.layer_idx)


def _gpt2_attention() -> AttentionType:
    # One Conv1D computes [query | key | value].
    return AttentionType(
        name="decoder",
        layers="h",
        **_inside("attn", "c_attn", "c_attn", "c_attn", "c_proj"),
        head_count_attr="num_heads",
        head_size_attr="head_dim",
        width_attr="split_size",
        query_side="decoder",
        headless_cache=causal_headless_cache,
    )


def _llama_attention() -> AttentionType:
    return AttentionType(
        name="decoder",
        layers="layers",
        **_inside("self_attn", "q_proj", "k_proj", "v_proj", "o_proj"),
        head_count_attr=None,
        head_size_attr="head_dim",
        query_side="decoder",
        headless_cache=causal_headless_cache,
        key_value_heads="num_key_value_heads",
        groups_attr="num_key_value_groups",
    )


def _bart_attention(name: str, stack: str, module: str, config_heads: str, query_side: str) -> AttentionType:
    return AttentionType(
        name=name,
        layers=f"{stack}.layers",
        **_inside(module, "q_proj", "k_proj", "v_proj", "out_proj"),
        config_heads=config_heads,
        head_count_attr="num_heads",
        head_size_attr="head_dim",
        query_side=query_side,
        headless_cache=bart_headless_cache,
    )


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        name="bert-encoder",
        model_types=("bert", "roberta", "electra", "xlm-roberta", "camembert"),
        attention_types=(_bert_attention(),),
        pruned_heads_type="encoder",
    ),
    ModelFamily(
        name="distilbert-encoder",
        model_types=("distilbert",),
        attention_types=(_distilbert_attention(),),
        pruned_heads_type="encoder",
    ),
    ModelFamily(
        name="mpnet-encoder",
        model_types=("mpnet",),
        attention_types=(_mpnet_attention(),),
        pruned_heads_type="encoder",
    ),
    ModelFamily(
        name="deberta-v2-encoder",
        model_types=("deberta-v2",),
        attention_types=(_deberta_attention(),),
    ),
    ModelFamily(
        name="vit-encoder",
        model_types=("vit",),
        attention_types=(_vit_attention(),),
    ),
    ModelFamily(
        name="bart-encoder-decoder",
        model_types=("marian", "bart", "mbart"),
        attention_types=(
            _bart_attention("encoder", "encoder", "self_attn", "encoder_attention_heads", "encoder"),
            _bart_attention("decoder", "decoder", "self_attn", "decoder_attention_heads", "decoder"),
            _bart_attention("cross", "decoder", "encoder_attn", "decoder_attention_heads", "decoder"),
        ),
    ),
    ModelFamily(
        name="gpt2-decoder",
        model_types=("gpt2",),
        attention_types=(_gpt2_attention(),),
        pruned_heads_type="decoder",
    ),
    ModelFamily(
        name="llama-decoder",
        model_types=("llama", "qwen2", "mistral"),
        attention_types=(_llama_attention(),),
    ),
)


# Model types numbering positions from padding_idx + 1 (RoBERTa's scheme): that many fewer tokens fit.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")


def usable_positions(config) -> int:
    """Returns how many tokens fit the model's position embeddings (0 when it has none)."""
    positions = getattr(config, "max_position_embeddings", 0) or 0
    if positions and config.model_type in PADDING_OFFSET_POSITIONS:
        positions -= (config.pad_token_id or 0) + 1
    return max(positions, 0)


def image_tokens(config) -> int:
    """Returns the number of tokens an image model attends over: its patches and the [CLS] token ViT prepends."""
    patches = (config.image_size // config.patch_size) ** 2
    return patches + 1


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
