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
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
from torch import nn
from transformers.pytorch_utils import Conv1D

from exporter.atomic import atomic_dir, atomic_write_json, remove_stale, signals_deferred, staging_dir, swap_in, writing
from exporter.data import task_of
from exporter.digest import checkpoint_hash
from exporter.errors import HeadpruneError
from exporter.onnx.export import Validation, export_onnx, pixel_shape, require_valid, validate_onnx
from exporter.onnx.quantize import (
    MAX_PERPLEXITY_INCREASE,
    MIN_AGREEMENT,
    MIN_GENERATION_AGREEMENT,
    PRECISIONS,
    Int8Check,
    PerplexityCheck,
    quantize_int8,
    quantize_language_model,
)
from exporter.pruning.checkpoint import load_model, load_tokenizer, model_task
from exporter.pruning.families import image_tokens, usable_positions
from exporter.pruning.inventory import HeadInventory, build_inventory
from exporter.pruning.plan import HeadPlan
from exporter.triton.config import DeploymentOptions, classifier_config, image_config, text_config, write_config
from exporter.triton.description import CONFIG_PARAMETER, DeploymentDescription
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
        return {"name": self.name, "version": self.version, "model_path": str(self.model_path),
                "validation": self.validation.to_dict(), "fused_attention": self.fused_attention,
                # text_model: the front end's key before image models had front ends of their own.
                "front_end": self.front_end, "text_model": self.front_end, "heads": self.heads,
                "original_heads": self.original_heads,
                "precision": self.precision, "quantization": self.quantization and self.quantization.to_dict(),
                "generation": self.generation}


def input_ranges(config, names: list[str]) -> dict[str, list[int]]:
    """Returns the valid [low, high) range of each integer input, from the model's vocabulary sizes."""
    ranges = {"input_ids": [0, getattr(config, "vocab_size", 0)], "attention_mask": [0, 2],
              "token_type_ids": [0, getattr(config, "type_vocab_size", 1) or 1]}
    return {name: ranges[name] for name in names if name in ranges}  # pixel values are not integers


def check_precision(precision: str) -> None:
    """Raises HeadpruneError unless ``precision`` is one the classifier export knows."""
    if precision not in PRECISIONS:
        raise HeadpruneError(f"precision '{precision}' is unknown", f"use one of {', '.join(PRECISIONS)}")


def check_version(version: int | None) -> None:
    """Raises HeadpruneError unless ``version`` is None (next free version) or a positive integer."""
    if version is not None and version < 1:
        raise HeadpruneError(f"version {version} is not a positive integer", "give a version of 1 or higher")


def image_preprocessing(model_dir: Path) -> dict:
    """Returns what the served image front end needs of the folder's image processor (resize to height x width,
    resampling filter, rescale factor, normalization mean and std); raises HeadpruneError for one it cannot mirror."""
    processor = load_tokenizer(model_dir)
    settings = processor.to_dict() if processor is not None else {}
    size = settings.get("size") or {}
    if processor is None or set(size) != {"height", "width"} or settings.get("do_center_crop") \
            or settings.get("do_pad"):
        raise HeadpruneError(f"'{model_dir}' has no image processor the image front end can mirror (it needs "
                             "preprocessor_config.json resizing to a height and width, without crop or padding)",
                             "save the model's ViT image processor into the folder (ViTImageProcessor.save_pretrained)")
    return {"resize": bool(settings.get("do_resize", True)), "height": size["height"], "width": size["width"],
            "resample": int(settings.get("resample", 2)),
            "rescale_factor": settings.get("rescale_factor") if settings.get("do_rescale", True) else None,
            "mean": list(settings["image_mean"]) if settings.get("do_normalize", True) else None,
            "std": list(settings["image_std"]) if settings.get("do_normalize", True) else None}


def require_fast_tokenizer(model_dir: Path):
    """Returns the model folder's fast tokenizer, which the served text front ends run; raises HeadpruneError without one."""
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None or not tokenizer.is_fast:
        raise HeadpruneError(f"'{model_dir}' has no fast tokenizer (tokenizer.json) for the text front end",
                             "save a fast tokenizer (AutoTokenizer with use_fast=True) into the model folder")
    return tokenizer


def flop_coefficients(model: nn.Module, inventory: HeadInventory) -> tuple[int, int]:
    """Returns (linear, attention): forward FLOPs per example = seq * linear + seq**2 * attention.

    Every linear layer counts 2 * in * out per token (the pooler and classifier too, a
    slight overcount); each attention layer adds 2 * 2 * heads * head_size per pair of
    positions, for the scores and the weighted sum. A layer without heads costs nothing there.
    """
    # Linear and Conv1D layers; an image model's patch embedding, applied once per patch, counts like one too.
    linear = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D, nn.Conv2d)))
    attention = sum(4 * len(layer.kept) * layer.head_size for layer in inventory.layers)
    return linear, attention


def describe_model(model, inventory: HeadInventory, *, inputs: list[str], max_length: int, source: Path,
                   onnx_bytes: int, validation: dict) -> DeploymentDescription:
    """Returns the description of an exported classifier or language model."""
    summary = inventory.summary(model)
    config = model.config
    task = task_of(model)
    linear, attention = flop_coefficients(model, inventory)
    labelled = task in ("classification", "image-classification")
    return DeploymentDescription(
        family=summary["family"], model_type=summary["model_type"], source_checkpoint=str(source.resolve()),
        weights_sha256=checkpoint_hash(source), head_plan=HeadPlan.of_model(inventory).to_dict(),
        heads=summary["heads"], original_heads=summary["original_heads"],
        heads_per_layer={k: v["heads_per_layer"] for k, v in summary["attention_types"].items()},
        parameters=summary["parameters"], attention_parameters=summary["attention_parameters"],
        flops_linear=linear, flops_attention=attention, inputs=inputs, input_ranges=input_ranges(config, inputs),
        id2label={str(k): v for k, v in config.id2label.items()} if labelled else {},
        label2id={str(k): int(v) for k, v in config.label2id.items()} if labelled else {},
        vocab_size=getattr(config, "vocab_size", 0) or 0, type_vocab_size=getattr(config, "type_vocab_size", 0) or 0,
        max_positions=image_tokens(config) if task == "image-classification" else usable_positions(config),
        max_length=image_tokens(config) if task == "image-classification" else max_length,
        onnx_bytes=onnx_bytes, validation=validation,
        task=task if task in ("language-modeling", "image-classification") else "classification",
        input_shape=pixel_shape(config) if task == "image-classification" else [],
    )


@contextmanager
def version_staging(repository: ModelRepository, name: str, version: int) -> Iterator[Path]:
    """Yields an empty folder beside the repository (Triton loads every folder inside it) to build version ``version``
    of model ``name`` in; it is removed after the block unless install_version moved it in. Staging folders of
    killed runs are removed first."""
    with writing(repository.version_folder(name, version)):
        repository.root.mkdir(parents=True, exist_ok=True)
        remove_stale(repository.staging)  # any model's leftovers, not only this version's
        with staging_dir(repository.staging, f"{name}-{version}-") as staged:
            yield staged


def install_version(repository: ModelRepository, name: str, version: int, staged: Path) -> Path:
    """Renames the finished folder ``staged`` in as version ``version`` of model ``name`` (replacing that version);
    returns the version folder."""
    target = repository.version_folder(name, version)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        swap_in(staged, target)
    return target


def install_with_configs(repository: ModelRepository, name: str, version: int, staged: Path,
                         write_configs: Callable[[], None]) -> Path:
    """Renames ``staged`` in as version ``version`` of model ``name``, after ``write_configs()`` when that version is
    the one Triton serves (the highest) or the model has no config yet; returns the version folder.

    Signals wait until all is done, so the version and the configs describing it go in together; re-exporting an
    older version leaves the configs describing the served one."""
    serves = version >= max(repository.versions(name), default=0) or not repository.config_path(name).exists()
    with signals_deferred():
        if serves:
            write_configs()
        return install_version(repository, name, version, staged)


def _write_front_end(repository: ModelRepository, name: str, config, code: str, tokenizer=None) -> None:
    """Writes the Python front end ``name`` (its ``code`` file from exporter/triton/models, and the tokenizer)."""
    with atomic_dir(repository.folder(name), repository.staging, overwrite=True) as staging:
        version = staging / "1"
        version.mkdir()
        (version / "model.py").write_text(resources.files("exporter.triton.models").joinpath(code).read_text())
        if tokenizer is not None:
            tokenizer.save_pretrained(version / "tokenizer")
        write_config(config, staging)


def validation_sources(tokenizer, count: int = 24, seed: int = 0) -> list[str]:
    """Returns ``count`` seeded pseudo-sentences of 3 to 12 vocabulary tokens, for validating without data."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    return [tokenizer.decode([rng.choice(ids) for _ in range(rng.randint(3, 12))]).strip() or "a" for _ in range(count)]


def text_feeds(tokenizer, texts: list[str], names: list[str], max_length: int, batch_size: int = 32) -> list[dict]:
    """Returns ONNX input batches (int64 arrays of the graph's ``names``) of ``texts`` as the text front end
    tokenises them: padded on the right, with the end-of-sequence token where the tokenizer has no padding token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    feeds = []
    for start in range(0, len(texts), batch_size):
        rows = [tokenizer(text, truncation=True, max_length=max_length) for text in texts[start:start + batch_size]]
        width = max(len(row["input_ids"]) for row in rows)
        feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in names}
        feed["input_ids"][:] = pad
        for index, row in enumerate(rows):
            length = len(row["input_ids"])
            feed["attention_mask"][index, :length] = 1
            for name in names:
                if name in row and name != "attention_mask":
                    feed[name][index, :length] = row[name]
        feeds.append(feed)
    return feeds


# Texts a language model's INT8 graph is checked on when none are given.
LANGUAGE_MODEL_TEXTS = 64


def require_same_decisions(check: Int8Check) -> None:
    """Raises HeadpruneError when the INT8 graph changed the predicted class of too many validation texts."""
    if check.agreement is not None and check.agreement < check.min_agreement:
        raise HeadpruneError(f"the INT8 model predicts another class than the FP32 model on "
                             f"{100 * (1 - check.agreement):.1f} % of the {check.texts} validation texts (at most "
                             f"{100 * (1 - check.min_agreement):g} % allowed); nothing was written",
                             "export this model in FP32, or recover it (distil) before quantizing")


def require_perplexity_kept(check: PerplexityCheck) -> None:
    """Raises HeadpruneError when a language model's INT8 graph raised the validation texts' perplexity too much."""
    if not check.passed:
        raise HeadpruneError(f"the INT8 language model's perplexity on the {check.texts} validation texts is "
                             f"{check.perplexity_int8:.4g} against {check.perplexity_fp32:.4g} in FP32 "
                             f"(+{100 * check.increase:.2f} %, at most +{100 * check.max_increase:g} % allowed); "
                             "nothing was written", "export this model in FP32, or recover it (distil) before quantizing")


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


def export_to_repository(model_dir: str | Path, repo: str | Path, name: str, version: int | None = None,
                         atol: float = 1e-4, optimize: bool = False,
                         options: DeploymentOptions = DeploymentOptions(), precision: str = "fp32",
                         validation_texts: list[str] | None = None, min_agreement: float = MIN_AGREEMENT,
                         max_perplexity_increase: float = MAX_PERPLEXITY_INCREASE,
                         min_generation_agreement: float = MIN_GENERATION_AGREEMENT) -> ExportResult:
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
            model.config.is_encoder_decoder or not type(model).__name__.endswith("ForSequenceClassification")):
        raise HeadpruneError(f"'{model_dir}' is not a sequence or image classifier or causal language model "
                             f"({type(model).__name__})",
                             "export a *ForSequenceClassification model (fine-tune one with 'headprune finetune'), a "
                             "*ForImageClassification or a *ForCausalLM one")
    if images and (optimize or precision != "fp32"):
        raise HeadpruneError(f"'{model_dir}' is an image model: attention fusion and INT8 are measured for text models "
                             "only", "export it without `optimize` and in fp32")
    if language_model and optimize:
        raise HeadpruneError(f"'{model_dir}' is a language model: attention fusion is measured for text classifiers "
                             "only", "export it without `optimize`")
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
            quantization = quantize_language_model(staged, MODEL_FILE,
                                                   text_feeds(tokenizer, texts, names, options.max_length),
                                                   max_perplexity_increase)
            require_perplexity_kept(quantization)
        elif precision == "int8":
            feeds = text_feeds(tokenizer, validation_texts, names, options.max_length) if validation_texts else None
            quantization = quantize_int8(model, staged / MODEL_FILE, names, feeds=feeds, min_agreement=min_agreement)
            require_same_decisions(quantization)
            require_valid(quantization, "the INT8 model (against the FP32 graph)")
        checked = {**validation.to_dict(), "fused_attention": fused,
                   "quantization": quantization and quantization.to_dict()}
        atomic_write_json(staged / "validation.json", checked)
        description = replace(describe_model(model, inventory, inputs=names, max_length=options.max_length,
                                             source=model_dir, onnx_bytes=(staged / MODEL_FILE).stat().st_size,
                                             validation=checked), precision=precision)
        description.write(staged)
        config = classifier_config(name, names, model.config.num_labels, options, _classifier_parameters(description),
                                   vocab_size=model.config.vocab_size if language_model else None,
                                   pixels=description.input_shape or None)

        def write_configs() -> None:  # the front end's tokenizer and limits describe the served version too
            id2label = None if language_model else {int(k): v for k, v in model.config.id2label.items()}
            if images:
                _write_front_end(repository, front_end, image_config(front_end, name, id2label, options, preprocessing),
                                 "image.py")
            else:
                # Language models' tokenizers often have no padding token; padded positions are masked, as in scoring.
                pad_id, pad_token = (tokenizer.pad_token_id, tokenizer.pad_token) if tokenizer.pad_token is not None \
                    else (tokenizer.eos_token_id, tokenizer.eos_token)
                text = text_config(front_end, name, names, id2label, options, pad_id, pad_token)
                _write_front_end(repository, front_end, text, "text.py", tokenizer)
            write_config(config, repository.folder(name))

        generation = None
        if language_model:  # validated and installed first: a failure leaves the scoring model uninstalled too
            from exporter.triton.generation import export_generation  # it builds on this module

            generation = export_generation(model, tokenizer, model_dir, repository, name, version, options,
                                           precision=precision, texts=validation_texts,
                                           min_agreement=min_generation_agreement).to_dict()
        target = install_with_configs(repository, name, version, staged, write_configs)
    return ExportResult(name, version, target / MODEL_FILE, validation, fused, front_end,
                        inventory.kept_head_count(), inventory.original_head_count(), precision, quantization,
                        generation)
