"""Writing a translation model into a Triton model repository: ``<name>_translate``.

One version folder holds both ONNX graphs (``encoder.onnx``, ``decoder.onnx``, with a
KV cache sized per layer), the decoding code (``model.py`` and ``search.py``), the
tokenizer and ``deployment.json``. It is built and validated beside the repository
(greedy tokens and step logits against transformers) and renamed in only then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from exporter.atomic import atomic_write_json
from exporter.errors import HeadpruneError
from exporter.onnx.quantize import MIN_GENERATION_AGREEMENT, quantize_seq2seq
from exporter.onnx.seq2seq import (
    DECODER_FILE,
    ENCODER_FILE,
    GenerationValidation,
    export_seq2seq_onnx,
    generation_defaults,
    generation_settings,
    validate_beam,
    validate_generation,
)
from exporter.pruning.checkpoint import load_model
from exporter.pruning.inventory import build_inventory
from exporter.triton.config import DeploymentOptions, translation_config, write_config
from exporter.triton.description import CONFIG_PARAMETER
from exporter.triton.facts import describe_model
from exporter.triton.inputs import check_precision, require_fast_tokenizer, validation_sources
from exporter.triton.install import check_version, install_with_configs, version_staging
from exporter.triton.layout import ModelRepository, check_name, translate_model_name

MAX_BEAMS = 8
DEFAULT_NEW_TOKENS = 64


@dataclass
class TranslationExport:
    """What a translation export wrote, how its greedy and beam search matched transformers', and the served
    defaults taken from the checkpoint's generation config."""

    name: str
    version: int
    folder: Path
    validation: GenerationValidation
    heads: int
    original_heads: int
    beam: dict | None = None
    defaults: dict | None = None
    quantization: dict | None = None  # the INT8 graphs' check, when exported in INT8

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {
            "name": self.name,
            "version": self.version,
            "folder": str(self.folder),
            "validation": self.validation.to_dict(),
            "heads": self.heads,
            "original_heads": self.original_heads,
            "beam": self.beam,
            "defaults": self.defaults,
            "quantization": self.quantization,
        }


def languages_of(config) -> dict[str, str]:
    """Returns the source and target language codes a translation model's config records (``source_lang``,
    ``target_lang``, as train-mt writes them), those it has."""
    codes = {"source": getattr(config, "source_lang", None), "target": getattr(config, "target_lang", None)}
    return {side: str(code) for side, code in codes.items() if code}


def _copy_code(folder: Path) -> None:
    models = resources.files("exporter.triton.models")
    (folder / "model.py").write_text(models.joinpath("translate.py").read_text())
    (folder / "search.py").write_text(models.joinpath("search.py").read_text())
    (folder / "common.py").write_text(models.joinpath("common.py").read_text())


def export_translation_to_repository(
    model_dir: str | Path,
    repo: str | Path,
    name: str,
    version: int | None = None,
    options: DeploymentOptions = DeploymentOptions(),
    sources: list[str] | None = None,
    atol: float = 1e-3,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    threads: int = 0,
    precision: str = "fp32",
    min_agreement: float = MIN_GENERATION_AGREEMENT,
    int8_sources: list[str] | None = None,
) -> TranslationExport:
    """Exports the translation model in ``model_dir`` as ``<name>_translate`` into ``repo``; returns what was written.

    Greedy search over the exported graphs must reproduce transformers' greedy tokens
    on ``sources`` (default: seeded pseudo-sentences) with step logits within ``atol``,
    or nothing is written. ``precision`` "int8" then quantizes both graphs (dynamic INT8 weights), kept only where
    greedy search over them gives the FP32 graphs' translation of ``min_agreement`` of ``int8_sources`` (default: the
    sources; else nothing is written). ``threads`` sets ONNX Runtime's threads in the server (0: all)."""
    check_precision(precision)
    check_name(name)
    served = check_name(translate_model_name(name))
    check_version(version)
    model_dir, repository = Path(model_dir), ModelRepository(Path(repo))
    model = load_model(model_dir)
    if not model.config.is_encoder_decoder:
        raise HeadpruneError(
            f"'{model_dir}' is not a translation (encoder-decoder) model ({type(model).__name__})",
            "export classifiers without `task` translation, or pass a Marian/BART/mBART checkpoint",
        )
    tokenizer = require_fast_tokenizer(model_dir)
    positions = getattr(model.config, "max_position_embeddings", 0) or options.max_length
    options = replace(options, max_length=min(options.max_length, positions))
    max_new_tokens = min(max_new_tokens, positions - 1)
    inventory = build_inventory(model)
    version = version or max(repository.versions(served), default=0) + 1
    with version_staging(repository, served, version) as staged:
        layout = export_seq2seq_onnx(model, staged)
        settings = generation_settings(model, tokenizer, layout, options.max_length)
        validation = validate_generation(
            model,
            tokenizer,
            staged,
            settings,
            sources or validation_sources(tokenizer),
            max_new_tokens=min(max_new_tokens, 32),
            atol=atol,
        )
        if not validation.passed:
            raise HeadpruneError(
                f"the exported graphs' greedy search matched transformers on {validation.exact_matches} of "
                f"{validation.sentences} sentences, step logits within {validation.max_logit_diff:.3g} (tolerance "
                f"{atol:g}); nothing was written",
                "report this model as a bug, or loosen the check with `atol`",
            )
        defaults = generation_defaults(model, positions)
        beam = validate_beam(
            model,
            tokenizer,
            staged,
            settings,
            (sources or validation_sources(tokenizer))[:32],
            defaults,
            num_beams=max(defaults["num_beams"], 2),
            max_new_tokens=min(max_new_tokens, 16),
        )
        quantization = None
        if precision == "int8":
            quantization = quantize_seq2seq(
                tokenizer,
                staged,
                settings,
                int8_sources or sources or validation_sources(tokenizer),
                min(max_new_tokens, 32),
                min_agreement,
            )
            if not quantization["passed"]:
                raise HeadpruneError(
                    f"greedy search over the INT8 graphs gave the FP32 graphs' translation of "
                    f"{quantization['same']} of {quantization['sentences']} sentences (at least "
                    f"{100 * min_agreement:g} % needed); nothing was written",
                    "export this model in FP32, or recover it (distil) before quantizing",
                )
        atomic_write_json(staged / "validation.json", {**validation.to_dict(), "beam": beam, "int8": quantization})
        _copy_code(staged)
        tokenizer.save_pretrained(staged / "tokenizer")
        onnx_bytes = sum((staged / f).stat().st_size for f in (ENCODER_FILE, DECODER_FILE) if (staged / f).exists())
        description = replace(
            describe_model(
                model,
                inventory,
                inputs=["input_ids", "attention_mask"],
                max_length=options.max_length,
                source=model_dir,
                onnx_bytes=onnx_bytes,
                validation=validation.to_dict(),
            ),
            task="translation",
            generation=settings,
            id2label={},
            label2id={},
            precision=precision,
            languages=languages_of(model.config),
        )
        description.write(staged)
        # The checkpoint's generation config sets the defaults, as in transformers' generate; beam search is served
        # only where the exported search gave transformers' beams with that config.
        limits = {
            "max_beams": MAX_BEAMS if beam["passed"] else 1,
            "max_new_tokens": max_new_tokens,
            "default_new_tokens": min(defaults["max_new_tokens"], max_new_tokens),
            "default_beams": defaults["num_beams"] if beam["passed"] else 1,
            "length_penalty": defaults["length_penalty"],
            "early_stopping": defaults["early_stopping"],
            "beam_refused": None
            if beam["passed"]
            else (
                f"the exported beam search matched transformers' on {beam['exact_matches']} of "
                f"{beam['sentences']} sentences with this checkpoint's generation config (early_stopping="
                f"{defaults['early_stopping']!r}); it serves greedy search only"
            ),
        }
        config = translation_config(
            served,
            options,
            {
                CONFIG_PARAMETER: description.to_json(),
                "generation": json.dumps(settings),
                "limits": json.dumps(limits),
                "threads": str(threads),
                "heads": f"{description.heads}/{description.original_heads}",
            },
        )
        install_with_configs(
            repository, served, version, staged, lambda: write_config(config, repository.folder(served))
        )
    return TranslationExport(
        served,
        version,
        repository.version_folder(served, version),
        validation,
        inventory.kept_head_count(),
        inventory.original_head_count(),
        beam,
        {"num_beams": limits["default_beams"], "max_new_tokens": limits["default_new_tokens"]},
        quantization,
    )
