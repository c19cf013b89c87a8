"""Loading Hugging Face models and the pruned checkpoint format.

A pruned checkpoint is a folder with ``model.safetensors`` (the shrunk weights),
the original ``config.json``, the tokenizer files and ``head_plan.json``.
``from_pretrained`` cannot read it (shapes differ from the config), so
``load_pruned`` rebuilds the model from the config, shrinks it by the plan and
loads the weights. Only safetensors are read; no code from the folder is run.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_model as save_safetensors_from
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from exporter.atomic import atomic_dir
from exporter.digest import checkpoint_hash
from exporter.errors import HeadpruneError
from exporter.pruning.families import family_for
from exporter.pruning.inventory import build_inventory
from exporter.pruning.plan import HeadPlan
from exporter.pruning.shrink import apply_plan

PLAN_FILE = "head_plan.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "headprune-pruned/1"


def _model_class(config) -> type[PreTrainedModel]:
    names = config.architectures or []
    for name in names:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            return cls
    raise HeadpruneError(
        f"config.json names no Hugging Face model class headprune can build (architectures: {names})",
        "save the model with transformers' save_pretrained so config.json lists its class",
    )


def _read_config(path: Path):
    if not (path / "config.json").is_file():
        raise HeadpruneError(
            f"'{path}' is not a Hugging Face model folder (no config.json)",
            "pass a folder written by save_pretrained or by 'headprune prune'",
        )
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    family_for(config.model_type)
    return config


def model_task(path: str | Path) -> str:
    """Returns "translation" for an encoder-decoder model folder, "classification" otherwise (reads config.json only)."""
    return "translation" if _read_config(Path(path)).is_encoder_decoder else "classification"


def load_tokenizer(path: str | Path):
    """Returns the tokenizer stored in a model folder, or None when the folder has none."""
    path = Path(path)
    if not any((path / name).exists() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def require_tokenizer(path: str | Path):
    """Returns the tokenizer stored in a model folder; raises HeadpruneError when it has none."""
    tokenizer = load_tokenizer(path)
    if tokenizer is None:
        raise HeadpruneError(f"'{path}' has no tokenizer files", "save the tokenizer into the model folder "
                             "(tokenizer.save_pretrained)")
    return tokenizer


def load_model(path: str | Path) -> PreTrainedModel:
    """Returns the model in ``path`` (plain Hugging Face folder or pruned checkpoint), in eval mode."""
    path = Path(path)
    if (path / PLAN_FILE).is_file():
        return load_pruned(path)
    config = _read_config(path)
    if not (path / WEIGHTS_FILE).is_file() and not any(path.glob("model-*.safetensors")):
        raise HeadpruneError(
            f"'{path}' has no safetensors weights",
            "headprune only loads safetensors; re-save the model with save_pretrained(safe_serialization=True)",
        )
    model = _model_class(config).from_pretrained(path, use_safetensors=True, trust_remote_code=False)
    return model.eval()


def read_plan_file(path: str | Path) -> dict:
    """Returns the parsed head_plan.json of a pruned checkpoint."""
    return json.loads((Path(path) / PLAN_FILE).read_text())


def load_pruned(path: str | Path) -> PreTrainedModel:
    """Returns a pruned checkpoint rebuilt from its config, head plan and weights, in eval mode."""
    path = Path(path)
    config = _read_config(path)
    record = read_plan_file(path)
    if record.get("format") != FORMAT:
        raise HeadpruneError(f"'{path / PLAN_FILE}' is not a {FORMAT} record", "re-create the checkpoint with 'headprune prune'")
    model = _model_class(config)(config)
    apply_plan(model, HeadPlan.from_dict(record["plan"], source=str(path / PLAN_FILE)))
    try:
        missing, unexpected = load_safetensors_into(model, path / WEIGHTS_FILE, strict=False)
    except (RuntimeError, OSError) as error:
        raise HeadpruneError(
            f"weights in '{path}' do not match its head plan ({str(error).splitlines()[-1].strip()})",
            "the checkpoint is damaged; re-create it with 'headprune prune'",
        ) from error
    # Tied weights (e.g. shared embeddings) are stored once; anything else missing is corruption.
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    real_missing = [k for k in missing if k not in tied]
    if real_missing or unexpected:
        raise HeadpruneError(
            f"weights in '{path}' do not match its head plan (missing {real_missing[:3]}, unexpected {unexpected[:3]})",
            "the checkpoint is damaged; re-create it with 'headprune prune'",
        )
    model.tie_weights()
    return model.eval()


def save_pruned(model: PreTrainedModel, tokenizer, out_dir: str | Path, source: str | Path | None = None,
                overwrite: bool = False, records: dict[str, dict] | None = None) -> Path:
    """Writes ``model`` (pruned or not) as a pruned checkpoint folder, atomically; returns the folder.

    ``records`` are written into it too, as JSON files named by their keys. An existing
    non-empty ``out_dir`` is refused unless ``overwrite``."""
    plan = HeadPlan.of_model(build_inventory(model))
    record = {"format": FORMAT, "plan": plan.to_dict(), "removed_heads": plan.count()}
    if source is not None:
        record["source"] = {"path": str(source), "weights": checkpoint_hash(source)}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as staging:
        model.config.save_pretrained(staging)
        save_safetensors_from(model, str(staging / WEIGHTS_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / PLAN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        for name, data in (records or {}).items():
            (staging / name).write_text(json.dumps(data, indent=2) + "\n")
    return out_dir
