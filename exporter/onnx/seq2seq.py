"""ONNX export of encoder-decoder translation models with a KV cache, for uneven head counts.

Two graphs:
- ``encoder.onnx``: ``input_ids``, ``attention_mask`` -> ``cross.{l}.key`` / ``cross.{l}.value``
  for every decoder layer ``l`` whose cross attention keeps heads: the cross-attention
  keys and values, computed once per source from the encoder output.
- ``decoder.onnx``: one decoding step. ``input_ids`` (batch, 1), ``position_ids``
  (batch, 1; every row holds the same step), ``encoder_attention_mask``, the cross keys/values, and ``past.{l}.key`` /
  ``past.{l}.value`` (batch, heads_l, past, head_size) for every layer whose self
  attention keeps heads -> ``logits`` (batch, vocabulary) and ``present.{l}.key`` /
  ``present.{l}.value`` (past + 1 positions).

Every layer has its own head count (read from the model, per attention type); a layer
without heads has no cache tensors at all. The step graph runs the model's own decoder
layers over a KV cache rebuilt from those tensors, so what is exported is what
transformers computes; the position is an input because a decoder whose self
attention lost every head has no cache to count positions from.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from exporter.errors import HeadpruneError
from exporter.onnx.export import OPSET
from exporter.pruning.inventory import build_inventory

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"


@dataclass(frozen=True)
class CacheLayout:
    """Head count and head size of every decoder layer's self and cross attention (0 heads: no cache)."""

    self_heads: tuple[int, ...]
    cross_heads: tuple[int, ...]
    head_size: int

    @classmethod
    def of(cls, model) -> "CacheLayout":
        """Returns the layout of ``model`` as pruned."""
        inventory = build_inventory(model)
        heads = {name: [len(layer.kept) for layer in inventory.of_type(name)] for name in ("decoder", "cross")}
        sizes = {layer.head_size for layer in inventory.layers}
        return cls(tuple(heads["decoder"]), tuple(heads["cross"]), sizes.pop())

    def names(self, prefix: str, heads: tuple[int, ...]) -> list[str]:
        """Returns ``{prefix}.{l}.key``/``.value`` for each layer with heads."""
        return [f"{prefix}.{layer}.{part}" for layer, count in enumerate(heads) if count for part in ("key", "value")]

    @property
    def cross_names(self) -> list[str]:
        """Returns the cross-attention cache tensor names (encoder outputs, decoder inputs)."""
        return self.names("cross", self.cross_heads)

    @property
    def past_names(self) -> list[str]:
        """Returns the self-attention cache input names of the decoder step."""
        return self.names("past", self.self_heads)

    @property
    def present_names(self) -> list[str]:
        """Returns the self-attention cache output names of the decoder step."""
        return self.names("present", self.self_heads)

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {"self_heads": list(self.self_heads), "cross_heads": list(self.cross_heads), "head_size": self.head_size}


def _split_heads(states: torch.Tensor, head_size: int) -> torch.Tensor:
    return states.view(*states.shape[:-1], -1, head_size).transpose(1, 2)


class EncoderWithCrossCache(nn.Module):
    """The encoder followed by every decoder layer's cross-attention key and value projections."""

    def __init__(self, model, layout: CacheLayout):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, input_ids, attention_mask):
        encoded = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        outputs = []
        for layer, count in zip(self.model.get_decoder().layers, self.layout.cross_heads):
            if count:
                attention = layer.encoder_attn
                outputs += [
                    _split_heads(attention.k_proj(encoded), self.layout.head_size),
                    _split_heads(attention.v_proj(encoded), self.layout.head_size),
                ]
        return tuple(outputs)


class DecoderStep(nn.Module):
    """One decoding step of the model's own decoder layers over a KV cache given as tensors."""

    def __init__(self, model, layout: CacheLayout):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, input_ids, position_ids, encoder_attention_mask, *caches):
        decoder = self.model.get_decoder()
        cross = iter(caches[: len(self.layout.cross_names)])
        past = iter(caches[len(self.layout.cross_names) :])
        self_cache, cross_cache = DynamicCache(), DynamicCache()
        for index, (self_heads, cross_heads) in enumerate(zip(self.layout.self_heads, self.layout.cross_heads)):
            if self_heads:
                self_cache.update(next(past), next(past), index)
            if cross_heads:
                cross_cache.update(next(cross), next(cross), index)
        cache = EncoderDecoderCache(self_cache, cross_cache)
        for index in range(len(self.layout.cross_heads)):
            cache.is_updated[index] = True  # cross keys/values come from the encoder graph
        # Members of the family differ in small parts, applied when present: Marian scales the token
        # embeddings in the decoder (BART and mBART inside the embedding), BART and mBART normalise the
        # embeddings, mBART normalises the last layer's output, Marian and BART add a final logits bias.
        hidden = decoder.embed_tokens(input_ids) * getattr(decoder, "embed_scale", 1.0)
        # Every row is at the same step: one position, in the 1-D form every member's embedding accepts.
        hidden = hidden + decoder.embed_positions(input_ids, 0, position_ids[0])
        if getattr(decoder, "layernorm_embedding", None) is not None:
            hidden = decoder.layernorm_embedding(hidden)
        minimum = torch.finfo(hidden.dtype).min
        mask = (1.0 - encoder_attention_mask[:, None, None, :].to(hidden.dtype)) * minimum
        # Stands in for the encoder output: the layers read it only to know cross attention is wanted.
        marker = hidden.new_zeros(hidden.shape[0], encoder_attention_mask.shape[1], 1)
        for layer in decoder.layers:
            hidden = layer(hidden, None, marker, encoder_attention_mask=mask, cache=cache, use_cache=True)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        if getattr(decoder, "layer_norm", None) is not None:
            hidden = decoder.layer_norm(hidden)
        logits = self.model.lm_head(hidden[:, -1])
        if getattr(self.model, "final_logits_bias", None) is not None:
            logits = logits + self.model.final_logits_bias
        presents = []
        for index, heads in enumerate(self.layout.self_heads):
            if heads:
                presents += [self_cache.layers[index].keys, self_cache.layers[index].values]
        return (logits, *presents)


def example_inputs(model, layout: CacheLayout, batch: int = 2, source: int = 7, past: int = 3, seed: int = 0):
    """Returns (encoder inputs, decoder inputs) of random content with the given shapes, as torch tensors."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (batch, source), generator=generator)
    mask = torch.ones(batch, source, dtype=torch.long)
    mask[0, source - 2 :] = 0
    decoder = {
        "input_ids": torch.randint(3, model.config.vocab_size, (batch, 1), generator=generator),
        "position_ids": torch.full((batch, 1), past, dtype=torch.long),
        "encoder_attention_mask": mask,
    }
    for layer, count in enumerate(layout.cross_heads):
        if count:
            for part in ("key", "value"):
                decoder[f"cross.{layer}.{part}"] = torch.randn(
                    batch, count, source, layout.head_size, generator=generator
                )
    for layer, count in enumerate(layout.self_heads):
        if count:
            for part in ("key", "value"):
                decoder[f"past.{layer}.{part}"] = torch.randn(batch, count, past, layout.head_size, generator=generator)
    return {"input_ids": ids, "attention_mask": mask}, decoder


def export_seq2seq_onnx(model, folder: str | Path) -> CacheLayout:
    """Writes ``encoder.onnx`` and ``decoder.onnx`` for ``model`` into ``folder``; returns their cache layout."""
    folder = Path(folder)
    model.eval()
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    layout = CacheLayout.of(model)
    encoder_inputs, decoder_inputs = example_inputs(model, layout)
    batch_source = {0: "batch", 1: "source"}
    cache_axes = {0: "batch", 2: "source"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if layout.cross_names:  # without cross heads the source is never read: no encoder graph
                torch.onnx.export(
                    EncoderWithCrossCache(model, layout).eval(),
                    tuple(encoder_inputs.values()),
                    str(folder / ENCODER_FILE),
                    input_names=list(encoder_inputs),
                    output_names=layout.cross_names,
                    dynamic_axes={"input_ids": batch_source, "attention_mask": batch_source}
                    | {name: cache_axes for name in layout.cross_names},
                    opset_version=OPSET,
                    dynamo=False,
                )
            axes = {
                "input_ids": {0: "batch"},
                "position_ids": {0: "batch"},
                "encoder_attention_mask": batch_source,
                "logits": {0: "batch"},
            }
            axes |= {name: cache_axes for name in layout.cross_names}
            axes |= {name: {0: "batch", 2: "past"} for name in layout.past_names}
            axes |= {name: {0: "batch", 2: "past_and_one"} for name in layout.present_names}
            torch.onnx.export(
                DecoderStep(model, layout).eval(),
                tuple(decoder_inputs.values()),
                str(folder / DECODER_FILE),
                input_names=list(decoder_inputs),
                output_names=["logits", *layout.present_names],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
    return layout


def generation_settings(model, tokenizer, layout: CacheLayout, max_length: int) -> dict:
    """Returns what a search over the exported graphs needs besides them: cache layout, special ids, limits.

    Single-token ``bad_words_ids`` of the model's generation config are suppressed
    and ``forced_eos_token_id`` ends a sequence on its last allowed step, as
    transformers' ``generate`` does; ``max_length`` caps source tokens (and new tokens)."""
    config = model.generation_config
    if model.config.decoder_start_token_id is None or getattr(config, "forced_bos_token_id", None) is not None:
        raise HeadpruneError(
            "this model starts its translations with a forced or unset first token (e.g. an mBART "
            "language code), which the exported search does not handle",
            "set decoder_start_token_id (and no forced_bos_token_id) in the model's config",
        )
    suppressed = sorted({ids[0] for ids in (config.bad_words_ids or []) if len(ids) == 1})
    return {
        "layout": layout.to_dict(),
        "start_id": int(model.config.decoder_start_token_id),
        "eos_id": int(model.config.eos_token_id),
        "pad_id": int(tokenizer.pad_token_id),
        "suppressed_ids": suppressed,
        "forced_eos": config.forced_eos_token_id is not None,
        "vocab_size": int(model.config.vocab_size),
        "max_length": int(max_length),
    }


def source_batches(tokenizer, sources: list[str], max_length: int, batch_size: int):
    """Yields ``sources`` tokenised in consecutive batches of ``batch_size`` (numpy arrays, padded, cut to
    ``max_length``), as the served model's searches see them."""
    for start in range(0, len(sources), batch_size):
        yield tokenizer(
            sources[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )


def onnx_search(folder: str | Path, settings: dict, threads: int = 0):
    """Returns a Seq2SeqSearch over ``folder``'s encoder.onnx and decoder.onnx, run by ONNX Runtime on CPU."""
    from exporter.triton.models.search import Seq2SeqSearch, session_runner

    folder = Path(folder)
    encoder = session_runner(folder / ENCODER_FILE, threads) if any(settings["layout"]["cross_heads"]) else None
    return Seq2SeqSearch(
        encoder,
        session_runner(folder / DECODER_FILE, threads),
        settings["layout"],
        settings["start_id"],
        settings["eos_id"],
        settings["suppressed_ids"],
        settings["forced_eos"],
    )


@dataclass(frozen=True)
class GenerationValidation:
    """How the exported graphs' greedy search compares with transformers' on the same sources."""

    sentences: int
    exact_matches: int
    max_logit_diff: float
    atol: float

    @property
    def passed(self) -> bool:
        """Returns True when every sequence matched and every step's logits were within tolerance."""
        return self.exact_matches == self.sentences and self.max_logit_diff <= self.atol

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {
            "sentences": self.sentences,
            "exact_matches": self.exact_matches,
            "exact_match_rate": self.exact_matches / max(self.sentences, 1),
            "max_abs_diff": self.max_logit_diff,
            "atol": self.atol,
            "passed": self.passed,
        }


def pytorch_greedy(model, input_ids, attention_mask, max_new_tokens: int) -> list[list[int]]:
    """Returns transformers' greedy generations as token ids after the start token, cut after EOS."""
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.as_tensor(input_ids),
            attention_mask=torch.as_tensor(attention_mask),
            max_new_tokens=max_new_tokens,
            num_beams=1,
            do_sample=False,
        )
    return _after_start(model, generated)


def _after_start(model, generated) -> list[list[int]]:
    """Returns each generated row without its start token, cut after its first EOS."""
    eos = model.config.eos_token_id
    rows = [row[1:].tolist() for row in generated]
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


# What transformers 5's generate produces when the generation config sets no length at all.
TRANSFORMERS_NEW_TOKENS = 20


def generation_defaults(model, positions: int) -> dict:
    """Returns the checkpoint's own generation defaults, as transformers' ``generate`` reads them from its
    generation config: beams, new tokens (``max_new_tokens``, else ``max_length`` less the start token), beam
    search's ``early_stopping`` and ``length_penalty``; new tokens capped by the model's ``positions``."""
    config = model.generation_config
    if config.max_new_tokens is not None:
        new_tokens = config.max_new_tokens
    elif config.max_length is not None:
        new_tokens = config.max_length - 1  # an encoder-decoder's max_length counts its start token
    else:
        new_tokens = TRANSFORMERS_NEW_TOKENS
    return {
        "num_beams": int(config.num_beams or 1),
        "max_new_tokens": max(1, min(int(new_tokens), positions - 1)),
        "early_stopping": False if config.early_stopping is None else config.early_stopping,
        "length_penalty": 1.0 if config.length_penalty is None else float(config.length_penalty),
    }


def pytorch_beam(
    model, input_ids, attention_mask, num_beams: int, max_new_tokens: int, defaults: dict
) -> list[list[int]]:
    """Returns transformers' beam search outputs (token ids after the start token, cut after EOS) with the
    checkpoint's ``early_stopping`` and ``length_penalty``."""
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.as_tensor(input_ids),
            attention_mask=torch.as_tensor(attention_mask),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            early_stopping=defaults["early_stopping"],
            length_penalty=defaults["length_penalty"],
        )
    return _after_start(model, generated)


def validate_beam(
    model,
    tokenizer,
    folder: str | Path,
    settings: dict,
    sources: list[str],
    defaults: dict,
    num_beams: int = 4,
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> dict:
    """Returns how beam search over the exported graphs compares with transformers' (the checkpoint's
    ``early_stopping`` and ``length_penalty``) on ``sources``: sentences, exact matches, and whether they all
    matched."""
    search = onnx_search(folder, settings)
    matches = total = 0
    for batch in source_batches(tokenizer, sources, settings["max_length"], batch_size):
        expected = pytorch_beam(model, batch["input_ids"], batch["attention_mask"], num_beams, max_new_tokens, defaults)
        got = search.beam(
            batch["input_ids"],
            batch["attention_mask"],
            num_beams,
            max_new_tokens,
            defaults["length_penalty"],
            defaults["early_stopping"],
        )
        matches += sum(a == b for a, b in zip(got, expected))
        total += len(expected)
    return {
        "num_beams": num_beams,
        "sentences": total,
        "exact_matches": matches,
        "passed": matches == total,
        "early_stopping": defaults["early_stopping"],
        "length_penalty": defaults["length_penalty"],
    }


def step_logits_difference(model, search, input_ids, attention_mask, sequences: list[list[int]]) -> float:
    """Returns the largest |difference| between the decoder step's logits and transformers' teacher-forced logits
    along ``sequences`` (one per source, fed to both)."""
    width = max(map(len, sequences))
    start = model.config.decoder_start_token_id
    fed = np.array([[start] + s[:-1] + [start] * (width - len(s)) for s in sequences], dtype=np.int64)
    with torch.no_grad():
        expected = model(
            input_ids=torch.as_tensor(input_ids),
            attention_mask=torch.as_tensor(attention_mask),
            decoder_input_ids=torch.from_numpy(fed),
        ).logits.numpy()
    state = search.first_state(np.asarray(input_ids, np.int64), np.asarray(attention_mask, np.int64))
    worst = 0.0
    for step in range(width):
        got = search.step(state, fed[:, step], step, last_step=False)
        for row, sequence in enumerate(sequences):
            if step < len(sequence):
                finite = np.isfinite(got[row])
                worst = max(worst, float(np.abs(got[row][finite] - expected[row, step][finite]).max()))
    return worst


def validate_generation(
    model,
    tokenizer,
    folder: str | Path,
    settings: dict,
    sources: list[str],
    max_new_tokens: int = 32,
    atol: float = 1e-3,
    batch_size: int = 32,
) -> GenerationValidation:
    """Returns the comparison of greedy search over the exported graphs with transformers' on ``sources``."""
    search = onnx_search(folder, settings)
    matches, worst = 0, 0.0
    for batch in source_batches(tokenizer, sources, settings["max_length"], batch_size):
        expected = pytorch_greedy(model, batch["input_ids"], batch["attention_mask"], max_new_tokens)
        got = search.greedy(batch["input_ids"], batch["attention_mask"], max_new_tokens)
        matches += sum(a == b for a, b in zip(got, expected))
        worst = max(worst, step_logits_difference(model, search, batch["input_ids"], batch["attention_mask"], expected))
    return GenerationValidation(len(sources), matches, worst, atol)
