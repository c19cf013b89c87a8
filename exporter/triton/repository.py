"""Writing a text or image classifier, or a causal language model, into a Triton model repository.

Each export writes ``<repo>/<name>/<version>/model.onnx`` with its ``deployment.json``,
the model's ``config.pbtxt``, and a Python (BLS) front end that calls ``<name>``: the text
front end ``<name>_text`` (raw strings in; LOGITS and LABEL out, or a language model's
NLL and TOKENS) or the image front end ``<name>_image`` (encoded images in). A language
model also gets ``<name>_generate`` (exporter.triton.generation). A version is built
beside the repository and renamed into place only after it validated, so Triton never
sees a half-written version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from exporter.atomic import atomic_dir, atomic_write_json
from exporter.errors import HeadpruneError
from exporter.onnx.export import Validation, export_onnx, require_valid, validate_onnx
from exporter.onnx.quantize import (
    MAX_PERPLEXITY_INCREASE,
    MIN_AGREEMENT,
    MIN_GENERATION_AGREEMENT,
    Int8Check,
    PerplexityCheck,
    quantize_int8,
    quantize_language_model,
)
from exporter.pruning.checkpoint import load_model, load_tokenizer, model_task
from exporter.pruning.families import usable_positions
from exporter.pruning.inventory import build_inventory
from exporter.triton.config import DeploymentOptions, classifier_config, image_config, text_config, write_config
from exporter.triton.description import CONFIG_PARAMETER, DeploymentDescription
from exporter.triton.facts import describe_model
from exporter.triton.generation import export_generation
from exporter.triton.inputs import check_precision, require_fast_tokenizer, text_feeds, validation_sources
from exporter.triton.install import check_version, install_with_configs, version_staging
from exporter.triton.layout import (
    MODEL_FILE,
    ModelRepository,
    check_name,
    generate_model_name,
    image_model_name,
    text_model_name,
)


@dataclass
class ExportResult:
    """What an export wrote and how well it matched the PyTorch model."""

    name: str
    version: int
    model_path: Path
    validation: Validation
    fused_attention: int | None
    front_end: str  # the text or image front end's model name
    heads: int
    original_heads: int
    precision: str = "fp32"
    quantization: Validation | PerplexityCheck | None = None  # a language model's: its perplexity check
    generation: dict | None = None  # a language model's <name>_generate, and how it matched PyTorch

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {
            "name": self.name,
            "version": self.version,
            "model_path": str(self.model_path),
            "validation": self.validation.to_dict(),
            "fused_attention": self.fused_attention,
            # text_model: the front end's key before image models had front ends of their own.
            "front_end": self.front_end,
            "text_model": self.front_end,
            "heads": self.heads,
            "original_heads": self.original_heads,
            "precision": self.precision,
            "quantization": self.quantization and self.quantization.to_dict(),
            "generation": self.generation,
        }


def image_preprocessing(model_dir: Path) -> dict:
    """Returns what the served image front end needs of the folder's image processor (resize to height x width,
    resampling filter, rescale factor, normalization mean and std); raises HeadpruneError for one it cannot mirror."""
    processor = load_tokenizer(model_dir)
    settings = processor.to_dict() if processor is not None else {}
    size = settings.get("size") or {}
    if (
        processor is None
        or set(size) != {"height", "width"}
        or settings.get("do_center_crop")
        or settings.get("do_pad")
    ):
        raise HeadpruneError(
            f"'{model_dir}' has no image processor the image front end can mirror (it needs "
            "preprocessor_config.json resizing to a height and width, without crop or padding)",
            "save the model's ViT image processor into the folder (ViTImageProcessor.save_pretrained)",
        )
    return {
        "resize": bool(settings.get("do_resize", True)),
        "height": size["height"],
        "width": size["width"],
        "resample": int(settings.get("resample", 2)),
        "rescale_factor": settings.get("rescale_factor") if settings.get("do_rescale", True) else None,
        "mean": list(settings["image_mean"]) if settings.get("do_normalize", True) else None,
        "std": list(settings["image_std"]) if settings.get("do_normalize", True) else None,
    }


def _write_front_end(repository: ModelRepository, name: str, config, code: str, tokenizer=None) -> None:
    """Writes the Python front end ``name`` (its ``code`` file from exporter/triton/models, and the tokenizer)."""
    with atomic_dir(repository.folder(name), repository.staging, overwrite=True) as staging:
        version = staging / "1"
        version.mkdir()
        (version / "model.py").write_text(resources.files("exporter.triton.models").joinpath(code).read_text())
        if tokenizer is not None:
            tokenizer.save_pretrained(version / "tokenizer")
        write_config(config, staging)


# Texts a language model's INT8 graph is checked on when none are given.
LANGUAGE_MODEL_TEXTS = 64


def require_same_decisions(check: Int8Check) -> None:
    """Raises HeadpruneError when the INT8 graph changed the predicted class of too many validation texts."""
    if check.agreement is not None and check.agreement < check.min_agreement:
        raise HeadpruneError(
            f"the INT8 model predicts another class than the FP32 model on "
            f"{100 * (1 - check.agreement):.1f} % of the {check.texts} validation texts (at most "
            f"{100 * (1 - check.min_agreement):g} % allowed); nothing was written",
            "export this model in FP32, or recover it (distil) before quantizing",
        )


def require_perplexity_kept(check: PerplexityCheck) -> None:
    """Raises HeadpruneError when a language model's INT8 graph raised the validation texts' perplexity too much."""
    if not check.passed:
        raise HeadpruneError(
            f"the INT8 language model's perplexity on the {check.texts} validation texts is "
            f"{check.perplexity_int8:.4g} against {check.perplexity_fp32:.4g} in FP32 "
            f"(+{100 * check.increase:.2f} %, at most +{100 * check.max_increase:g} % allowed); "
            "nothing was written",
            "export this model in FP32, or recover it (distil) before quantizing",
        )


def _classifier_parameters(description: DeploymentDescription) -> dict[str, str]:
    # The backend reads input_ranges; clients read the description (also from a remote server).
    return {
        CONFIG_PARAMETER: description.to_json(),
        "heads": f"{description.heads}/{description.original_heads}",
        "source_checkpoint": description.source_checkpoint,
        "weights_sha256": description.weights_sha256,
        "vocab_size": str(description.vocab_size),
        "input_ranges": json.dumps(description.input_ranges),
        "max_abs_diff": f"{description.validation['max_abs_diff']:.3g}",
    }


def export_to_repository(
    model_dir: str | Path,
    repo: str | Path,
    name: str,
    version: int | None = None,
    atol: float = 1e-4,
    optimize: bool = False,
    options: DeploymentOptions = DeploymentOptions(),
    precision: str = "fp32",
    validation_texts: list[str] | None = None,
    min_agreement: float = MIN_AGREEMENT,
    max_perplexity_increase: float = MAX_PERPLEXITY_INCREASE,
    min_generation_agreement: float = MIN_GENERATION_AGREEMENT,
) -> ExportResult:
    """Exports the text or image classifier or causal language model in ``model_dir`` into the Triton repository
    ``repo``; returns what was written.

    A text model gets a text front end (``<name>_text``), an image model an image front end (``<name>_image``). A
    language model is exported as its full-sequence forward (logits, and each row's ``nll``) with a text front end
    that scores texts, and as ``<name>_generate``: greedy generation over a step graph with a KV cache.
    ``precision`` "int8" quantizes a text classifier's validated FP32 graph (after fusion, if asked) and checks the
    INT8 logits against it, and given ``validation_texts`` (real texts of the task), requires the INT8 model to
    predict the FP32 model's class on at least ``min_agreement`` of them. A language model's two graphs are
    quantized too: the perplexity of ``validation_texts`` (default: seeded pseudo-sentences) may rise by at most
    ``max_perplexity_increase`` and greedy search must continue ``min_generation_agreement`` of their starts as in
    FP32. Raises HeadpruneError (and writes nothing) when the model is none of these, the name is unusable, or a
    graph fails its check.
    """
    check_precision(precision)
    check_name(name)
    check_version(version)
    model_dir, repository = Path(model_dir), ModelRepository(Path(repo))
    task = model_task(model_dir)  # from config.json alone: the names are checked before the model is loaded
    language_model, images = task == "language-modeling", task == "image-classification"
    front_end = image_model_name(name) if images else text_model_name(name)
    for served in (front_end, *([generate_model_name(name)] if language_model else [])):
        check_name(served)  # every name must fit before anything is written
    model = load_model(model_dir)
    if task not in ("language-modeling", "image-classification") and (
        model.config.is_encoder_decoder or not type(model).__name__.endswith("ForSequenceClassification")
    ):
        raise HeadpruneError(
            f"'{model_dir}' is not a sequence or image classifier or causal language model ({type(model).__name__})",
            "export a *ForSequenceClassification model (fine-tune one with 'headprune finetune'), a "
            "*ForImageClassification or a *ForCausalLM one",
        )
    if images and (optimize or precision != "fp32"):
        raise HeadpruneError(
            f"'{model_dir}' is an image model: attention fusion and INT8 are measured for text models only",
            "export it without `optimize` and in fp32",
        )
    if language_model and optimize:
        raise HeadpruneError(
            f"'{model_dir}' is a language model: attention fusion is measured for text classifiers only",
            "export it without `optimize`",
        )
    if images:
        preprocessing = image_preprocessing(model_dir)
    else:
        tokenizer = require_fast_tokenizer(model_dir)
    inventory = build_inventory(model)
    positions = usable_positions(model.config) or options.max_length
    # Texts tokenised beyond the model's positions would fail inside ONNX Runtime.
    options = replace(options, max_length=min(options.max_length, positions))
    version = version or max(repository.versions(name), default=0) + 1
    with version_staging(repository, name, version) as staged:
        names = export_onnx(model, staged / MODEL_FILE)
        validation = validate_onnx(model, staged / MODEL_FILE, names, atol)
        require_valid(validation, "the exported ONNX model")
        fused = None
        if optimize:
            # Deferred: onnxruntime.transformers is slow to import and only --optimize needs it.
            from exporter.onnx.fusion import optimize_attention

            fused, validation = optimize_attention(model, inventory, staged / MODEL_FILE, names, atol)
        quantization = None
        if precision == "int8" and language_model:
            texts = validation_texts or validation_sources(tokenizer, LANGUAGE_MODEL_TEXTS)
            quantization = quantize_language_model(
                staged, MODEL_FILE, text_feeds(tokenizer, texts, names, options.max_length), max_perplexity_increase
            )
            require_perplexity_kept(quantization)
        elif precision == "int8":
            feeds = text_feeds(tokenizer, validation_texts, names, options.max_length) if validation_texts else None
            quantization = quantize_int8(model, staged / MODEL_FILE, names, feeds=feeds, min_agreement=min_agreement)
            require_same_decisions(quantization)
            require_valid(quantization, "the INT8 model (against the FP32 graph)")
        checked = {
            **validation.to_dict(),
            "fused_attention": fused,
            "quantization": quantization and quantization.to_dict(),
        }
        atomic_write_json(staged / "validation.json", checked)
        description = replace(
            describe_model(
                model,
                inventory,
                inputs=names,
                max_length=options.max_length,
                source=model_dir,
                onnx_bytes=(staged / MODEL_FILE).stat().st_size,
                validation=checked,
            ),
            precision=precision,
        )
        description.write(staged)
        config = classifier_config(
            name,
            names,
            model.config.num_labels,
            options,
            _classifier_parameters(description),
            vocab_size=model.config.vocab_size if language_model else None,
            pixels=description.input_shape or None,
        )

        def write_configs() -> None:  # the front end's tokenizer and limits describe the served version too
            id2label = None if language_model else {int(k): v for k, v in model.config.id2label.items()}
            if images:
                _write_front_end(
                    repository, front_end, image_config(front_end, name, id2label, options, preprocessing), "image.py"
                )
            else:
                # Language models' tokenizers often have no padding token; padded positions are masked, as in scoring.
                pad_id, pad_token = (
                    (tokenizer.pad_token_id, tokenizer.pad_token)
                    if tokenizer.pad_token is not None
                    else (tokenizer.eos_token_id, tokenizer.eos_token)
                )
                text = text_config(front_end, name, names, id2label, options, pad_id, pad_token)
                _write_front_end(repository, front_end, text, "text.py", tokenizer)
            write_config(config, repository.folder(name))

        generation = None
        if language_model:  # validated and installed first: a failure leaves the scoring model uninstalled too
            generation = export_generation(
                model,
                tokenizer,
                model_dir,
                repository,
                name,
                version,
                options,
                precision=precision,
                texts=validation_texts,
                min_agreement=min_generation_agreement,
            ).to_dict()
        target = install_with_configs(repository, name, version, staged, write_configs)
    return ExportResult(
        name,
        version,
        target / MODEL_FILE,
        validation,
        fused,
        front_end,
        inventory.kept_head_count(),
        inventory.original_head_count(),
        precision,
        quantization,
        generation,
    )
