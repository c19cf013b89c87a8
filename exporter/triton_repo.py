"""Writing a classifier into a Triton model repository.

Layout: ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/<version>/model.onnx``,
plus the text front end ``<name>_text``: a Python (BLS) model that tokenises raw
strings, calls ``<name>`` and returns LOGITS and LABEL. A version is
built in a hidden folder and renamed into place only after it validated, so
Triton never sees a half-written version.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from .atomic import atomic_dir, atomic_write_json
from .checkpoint import checkpoint_hash, load_model, load_tokenizer
from .description import describe_model, write_description
from .errors import HeadpruneError
from .inventory import build_inventory
from .onnx_export import Validation, export_classifier_onnx, require_valid, validate_onnx
from .plan import HeadPlan
from .triton_config import DeploymentOptions, classifier_config, text_config, write_config

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class ExportResult:
    """What an export wrote and how well it matched the PyTorch model."""

    name: str
    version: int
    model_path: Path
    validation: Validation
    fused_attention: int | None
    text_model: str
    heads: int
    original_heads: int

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {"name": self.name, "version": self.version, "model_path": str(self.model_path),
                "validation": self.validation.to_dict(), "fused_attention": self.fused_attention,
                "text_model": self.text_model, "heads": self.heads, "original_heads": self.original_heads}


def input_ranges(config, names: list[str]) -> dict[str, list[int]]:
    """Returns the valid [low, high) range of each integer input, from the model's vocabulary sizes."""
    ranges = {"input_ids": [0, config.vocab_size], "attention_mask": [0, 2],
              "token_type_ids": [0, getattr(config, "type_vocab_size", 1) or 1]}
    return {name: ranges[name] for name in names}


def staging_area(repo: Path) -> Path:
    """Returns the folder beside ``repo`` where versions are built: Triton tries to load every
    folder inside a repository, hidden ones included, so nothing half-written may appear there."""
    return repo.resolve().parent / f".{repo.resolve().name}.staging"


def model_versions(folder: Path) -> list[int]:
    """Returns the version numbers (numeric subfolders) of a model folder, none if it does not exist."""
    return [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []


def _install_version(model_folder: Path, version: int, staged: Path) -> Path:
    target = model_folder / str(version)
    model_folder.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = staged.parent / f"{staged.name}.old"
        target.rename(old)
    staged.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _write_text_model(repo: Path, name: str, config, tokenizer) -> None:
    with atomic_dir(repo / name, staging_area(repo), overwrite=True) as staging:
        version = staging / "1"
        version.mkdir()
        (version / "model.py").write_text(resources.files("exporter.triton_models").joinpath("text.py").read_text())
        tokenizer.save_pretrained(version / "tokenizer")
        write_config(config, staging)


def export_to_repository(model_dir: str | Path, repo: str | Path, name: str, version: int | None = None,
                         atol: float = 1e-4, optimize: bool = False,
                         options: DeploymentOptions = DeploymentOptions()) -> ExportResult:
    """Exports the classifier in ``model_dir`` into the Triton repository ``repo``; returns what was written.

    Raises HeadpruneError (and writes nothing) when the model is not a classifier,
    the name is unusable, or the ONNX file fails validation.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise HeadpruneError(f"model name '{name}' is not usable in a Triton repository",
                             "use letters, digits, '_', '-' and '.', starting with a letter or digit")
    if version is not None and version < 1:
        raise HeadpruneError(f"version {version} is not a positive integer", "pass --version 1 or higher")
    model_dir, repo = Path(model_dir), Path(repo)
    model = load_model(model_dir)
    if model.config.is_encoder_decoder or not type(model).__name__.endswith("ForSequenceClassification"):
        raise HeadpruneError(f"'{model_dir}' is not a sequence classifier ({type(model).__name__})",
                             "export a *ForSequenceClassification model (fine-tune one with 'headprune finetune')")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None or not tokenizer.is_fast:
        raise HeadpruneError(f"'{model_dir}' has no fast tokenizer (tokenizer.json) for the text front end",
                             "save a fast tokenizer (AutoTokenizer with use_fast=True) into the model folder")
    inventory = build_inventory(model)
    positions = getattr(model.config, "max_position_embeddings", 0) or options.max_length
    # Texts tokenised beyond the model's positions would fail inside ONNX Runtime.
    options = replace(options, max_length=min(options.max_length, positions))
    model_folder = repo / name
    version = version or max(model_versions(model_folder), default=0) + 1
    repo.mkdir(parents=True, exist_ok=True)
    staging_area(repo).mkdir(exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=staging_area(repo)))
    staged.chmod(0o755)
    try:
        names = export_classifier_onnx(model, staged / "model.onnx")
        validation = validate_onnx(model, staged / "model.onnx", names, atol)
        require_valid(validation, "the exported ONNX model")
        fused = None
        if optimize:
            # Deferred: onnxruntime.transformers is slow to import and only --optimize needs it.
            from .onnx_optimize import optimize_attention

            fused, validation = optimize_attention(model, inventory, staged / "model.onnx", names, atol)
        checked = {**validation.to_dict(), "fused_attention": fused}
        atomic_write_json(staged / "validation.json", checked)
        ranges = input_ranges(model.config, names)
        description = describe_model(model, inventory, inputs=names, input_ranges=ranges, max_length=options.max_length,
                                     weights_sha256=checkpoint_hash(model_dir), source=str(model_dir.resolve()),
                                     validation=checked)
        write_description(staged, description)
        parameters = {
            "head_plan": json.dumps(description["head_plan"]),
            "heads": f"{description['heads']}/{description['original_heads']}",
            "source_checkpoint": description["source_checkpoint"],
            "weights_sha256": description["weights_sha256"],
            "vocab_size": str(model.config.vocab_size),
            "input_ranges": json.dumps(ranges),
            "max_abs_diff": f"{validation.max_abs_diff:.3g}",
        }
        config = classifier_config(name, names, model.config.num_labels, options, parameters)
        target = _install_version(model_folder, version, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    # Triton serves the highest version: the configs (and the text front end's tokenizer and
    # limits) describe that one. Re-exporting an older version must not make them describe a
    # version that is not served.
    if version >= max(model_versions(model_folder)) or not (model_folder / "config.pbtxt").exists():
        write_config(config, model_folder)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        text = text_config(f"{name}_text", name, names, id2label, options, tokenizer.pad_token_id, tokenizer.pad_token)
        _write_text_model(repo, f"{name}_text", text, tokenizer)
    return ExportResult(name, version, target / "model.onnx", validation, fused, f"{name}_text",
                        inventory.kept_head_count(), inventory.original_head_count())
