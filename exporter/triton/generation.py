"""Writing a decoder-only language model's generation model into a Triton repository: ``<name>_generate``.

One version folder holds the step graph (``generate.onnx``, with a KV cache sized per layer), the decoding
code (``model.py``, ``search.py``, ``common.py``), the tokenizer and ``deployment.json``. It is built and
validated beside the repository (the step graph's logits and cache against PyTorch on fresh shapes, and
greedy continuations against transformers' ``generate``) and renamed in only then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporter.atomic import atomic_write_json
from exporter.errors import HeadpruneError
from exporter.onnx.causal import (
    GENERATE_FILE,
    CausalCacheLayout,
    CausalStep,
    export_causal_onnx,
    pytorch_greedy_continuations,
    step_inputs,
)
from exporter.onnx.quantize import MIN_GENERATION_AGREEMENT, agreement_check, quantize_checked
from exporter.pruning.families import usable_positions
from exporter.pruning.inventory import build_inventory
from exporter.triton.config import DeploymentOptions, generation_config, write_config
from exporter.triton.description import CONFIG_PARAMETER
from exporter.triton.facts import describe_model
from exporter.triton.inputs import validation_sources
from exporter.triton.install import install_with_configs, version_staging
from exporter.triton.layout import ModelRepository, generate_model_name
from exporter.triton.models.search import CausalSearch, session_runner

DEFAULT_NEW_TOKENS = 64
# (batch, new tokens, past tokens) of the step graph's checks: the prompt step, single steps, and neither.
STEP_SHAPES = ((3, 5, 0), (1, 1, 7), (2, 3, 4))
VALIDATION_NEW_TOKENS = 16
PROMPT_TOKENS = 12
# Prompts the INT8 step graph must continue as the FP32 one does.
INT8_PROMPTS = 64


@dataclass
class GenerationExport:
    """What a generation export wrote and how it matched PyTorch."""

    name: str
    version: int
    folder: Path
    step_max_abs_diff: float
    prompts: int
    exact_matches: int
    atol: float
    quantization: dict | None = None  # the INT8 step graph's check, when exported in INT8

    @property
    def passed(self) -> bool:
        """Returns True when every continuation matched and the step graph was within tolerance."""
        return self.exact_matches == self.prompts and self.step_max_abs_diff <= self.atol

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {
            "name": self.name,
            "version": self.version,
            "folder": str(self.folder),
            "step_max_abs_diff": self.step_max_abs_diff,
            "prompts": self.prompts,
            "exact_matches": self.exact_matches,
            "atol": self.atol,
            "passed": self.passed,
            "quantization": self.quantization,
        }


def step_difference(model, layout: CausalCacheLayout, path: Path) -> float:
    """Returns the largest |difference| between the step graph and PyTorch (logits and cache) over STEP_SHAPES."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = CausalStep(model, layout).eval()
    worst = 0.0
    for seed, (batch, new, past) in enumerate(STEP_SHAPES):
        inputs = step_inputs(model, layout, batch, new, past, seed=seed + 1)
        with torch.no_grad():
            expected = [t.numpy() for t in step(*inputs.values())]
        got = session.run(None, {name: value.numpy() for name, value in inputs.items()})
        worst = max(worst, *(float(np.abs(g - e).max()) for g, e in zip(got, expected)))
    return worst


def generation_settings(model, tokenizer, layout: CausalCacheLayout, max_new_tokens: int) -> dict:
    """Returns what the served search needs besides the graph: cache layout, end and padding ids, limits."""
    eos = (
        model.generation_config.eos_token_id
        if model.generation_config.eos_token_id is not None
        else model.config.eos_token_id
    )
    eos_ids = [int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    if not eos_ids:
        raise HeadpruneError(
            "the model names no end-of-sequence token (eos_token_id)",
            "set eos_token_id in its config.json or generation_config.json",
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    # Generation stops at any of them, as transformers' generate does (Llama 3 and Qwen2 chat models list several).
    return {
        "layout": layout.to_dict(),
        "eos_ids": eos_ids,
        "pad_id": int(pad),
        "positions": usable_positions(model.config),
        "max_new_tokens": int(max_new_tokens),
    }


def validation_prompts(tokenizer, count: int = 12, texts: list[str] | None = None) -> list[list[int]]:
    """Returns ``count`` prompts of 1 to 12 tokens as token ids: the starts of ``texts``, and seeded pseudo-sentences
    of the vocabulary for the rest."""
    texts = [t for t in texts or [] if t.strip()][:count]
    texts += validation_sources(tokenizer, count - len(texts))  # too few given: pseudo-sentences make up the count
    return [ids[:PROMPT_TOKENS] for ids in (tokenizer(text)["input_ids"] for text in texts) if ids]


def quantize_generation(
    folder: Path,
    settings: dict,
    prompts: list[list[int]],
    new_tokens: int,
    min_agreement: float = MIN_GENERATION_AGREEMENT,
) -> dict:
    """Replaces the step graph in ``folder`` by its dynamic INT8 version when greedy search over it continues at least
    ``min_agreement`` of ``prompts`` as over the FP32 graph (``new_tokens`` each); returns the check."""

    def same_continuations(quantized: Path) -> dict:
        fp32, int8 = (
            CausalSearch(
                session_runner(where / GENERATE_FILE), settings["layout"], settings["eos_ids"], settings["pad_id"]
            ).greedy(prompts, new_tokens)
            for where in (folder, quantized)
        )
        return agreement_check(sum(a == b for a, b in zip(fp32, int8)), len(prompts), min_agreement, "prompts")

    return quantize_checked(folder, [GENERATE_FILE], same_continuations)


def export_generation(
    model,
    tokenizer,
    model_dir: Path,
    repository: ModelRepository,
    name: str,
    version: int,
    options: DeploymentOptions = DeploymentOptions(),
    atol: float = 1e-3,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    threads: int = 0,
    precision: str = "fp32",
    texts: list[str] | None = None,
    min_agreement: float = MIN_GENERATION_AGREEMENT,
) -> GenerationExport:
    """Writes ``<name>_generate`` (version ``version``) for the causal language model ``model`` into ``repository``;
    returns what was written. Raises HeadpruneError, writing nothing, when the step graph or greedy search does
    not match PyTorch. ``precision`` "int8" then quantizes the step graph, kept only where greedy search over it
    continues ``min_agreement`` of the prompts (the starts of ``texts``, else pseudo-sentences) as the FP32 graph
    does."""
    served = generate_model_name(name)
    max_new_tokens = min(max_new_tokens, usable_positions(model.config) - 1)
    inventory = build_inventory(model)
    with version_staging(repository, served, version) as staged:
        layout = export_causal_onnx(model, staged)
        settings = generation_settings(model, tokenizer, layout, max_new_tokens)
        prompts = validation_prompts(tokenizer)
        search = CausalSearch(
            session_runner(staged / GENERATE_FILE), settings["layout"], settings["eos_ids"], settings["pad_id"]
        )
        new = min(VALIDATION_NEW_TOKENS, max_new_tokens)
        expected = pytorch_greedy_continuations(model, prompts, settings["pad_id"], settings["eos_ids"], new)
        matches = sum(a == b for a, b in zip(search.greedy(prompts, new), expected))
        result = GenerationExport(
            served,
            version,
            repository.version_folder(served, version),
            step_difference(model, layout, staged / GENERATE_FILE),
            len(prompts),
            matches,
            atol,
        )
        if not result.passed:
            raise HeadpruneError(
                f"the exported step graph's greedy search matched transformers on {matches} of {len(prompts)} prompts, "
                f"step outputs within {result.step_max_abs_diff:.3g} (tolerance {atol:g}); nothing was written",
                "report this model as a bug, or loosen the check with `atol`",
            )
        if precision == "int8":
            result.quantization = quantize_generation(
                staged, settings, validation_prompts(tokenizer, INT8_PROMPTS, texts), new, min_agreement
            )
            if not result.quantization["passed"]:
                raise HeadpruneError(
                    f"greedy search over the INT8 step graph continued {result.quantization['same']} of "
                    f"{result.quantization['prompts']} prompts as the FP32 graph does (at least "
                    f"{100 * min_agreement:g} % needed); nothing was written",
                    "export this model in FP32, or recover it (distil) before quantizing",
                )
        atomic_write_json(staged / "validation.json", result.to_dict())
        models = resources.files("exporter.triton.models")
        for target, source in (("model.py", "generate.py"), ("search.py", "search.py"), ("common.py", "common.py")):
            (staged / target).write_text(models.joinpath(source).read_text())
        tokenizer.save_pretrained(staged / "tokenizer")
        description = replace(
            describe_model(
                model,
                inventory,
                inputs=["PROMPT"],
                max_length=settings["positions"],
                source=model_dir,
                onnx_bytes=(staged / GENERATE_FILE).stat().st_size,
                validation=result.to_dict(),
            ),
            task="text-generation",
            generation=settings,
            id2label={},
            label2id={},
            precision=precision,
        )
        description.write(staged)
        config = generation_config(
            served,
            options,
            {
                CONFIG_PARAMETER: description.to_json(),
                "generation": json.dumps(settings),
                "threads": str(threads),
                "heads": f"{description.heads}/{description.original_heads}",
            },
            "PROMPT",
            "GENERATED",
        )
        install_with_configs(
            repository, served, version, staged, lambda: write_config(config, repository.folder(served))
        )
    return result
