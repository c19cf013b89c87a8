"""Loading Hugging Face models and the pruned checkpoint format.

A pruned checkpoint is a folder with ``model.safetensors`` (the shrunk weights),
the original ``config.json``, the tokenizer files and ``head_plan.json``.
``from_pretrained`` cannot read it (shapes differ from the config), so
``load_pruned`` rebuilds the model from the config, shrinks it by the plan and
loads the weights. Only safetensors are read; no code from the folder is run:
a folder whose files ask for their own code (``auto_map``) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_model as save_safetensors_from
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, PreTrainedModel

from exporter.atomic import atomic_dir, read_json
from exporter.data import task_of_config
from exporter.digest import checkpoint_hash
from exporter.errors import HeadpruneError
from exporter.pruning.families import ModelFamily, family_for
from exporter.pruning.inventory import build_inventory
from exporter.pruning.plan import HeadPlan
from exporter.pruning.shrink import apply_plan

PLAN_FILE = "head_plan.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "headprune-pruned/1"
# Keys through which a Hugging Face file asks for Python code shipped in the model folder to be imported.
CODE_KEYS = ("auto_map", "custom_pipelines")
CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
DAMAGED = "the checkpoint is damaged; re-create it with 'headprune prune'"


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


def _json_object(file: Path, fix: str) -> dict:
    """Returns the JSON object stored in ``file``; raises HeadpruneError naming the file when it is anything else."""
    try:
        data = read_json(file, f"'{file}' does not exist", fix)
    except UnicodeDecodeError as error:
        raise HeadpruneError(f"'{file}' is not UTF-8 text (byte {error.start})", fix) from error
    if not isinstance(data, dict):
        raise HeadpruneError(f"'{file}' is not a JSON object", fix)
    return data


def refuse_custom_code(path: str | Path) -> None:
    """Raises HeadpruneError when a file of the model folder asks for Python code shipped in the folder
    (``auto_map``, custom pipelines): headprune never imports it. Returns None otherwise."""
    for name in CODE_FILES:
        file = Path(path) / name
        if not file.is_file():
            continue
        asked = [key for key in CODE_KEYS if key in _json_object(file, "restore the file saved with the model")]
        if asked:
            raise HeadpruneError(
                f"'{file}' asks for custom code from the model folder ({asked[0]}); headprune never runs code "
                "from a model folder",
                "use a model whose architecture is built into transformers, saved with save_pretrained",
            )


def _check_heads(config, family: ModelFamily, path: Path) -> None:
    hidden = getattr(config, "hidden_size", None)
    for attention_type in family.attention_types:
        heads = getattr(config, attention_type.config_heads, None)
        if (
            not isinstance(heads, int)
            or isinstance(heads, bool)
            or heads < 1
            or not isinstance(hidden, int)
            or hidden % heads
        ):
            raise HeadpruneError(
                f"'{path / 'config.json'}' sets {attention_type.config_heads} = {heads!r}, which does not divide "
                f"the hidden size {hidden!r} into heads",
                "restore the config.json saved with the weights",
            )


def _read_config(path: Path):
    if not (path / "config.json").is_file():
        raise HeadpruneError(
            f"'{path}' is not a Hugging Face model folder (no config.json)",
            "pass a folder written by save_pretrained or by 'headprune prune'",
        )
    refuse_custom_code(path)
    # Checked before transformers reads the config: an unknown type would send it looking for code.
    family = family_for(
        _json_object(path / "config.json", "restore the config.json saved with the model").get("model_type")
    )
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    _check_heads(config, family, path)
    return config


def model_task(path: str | Path) -> str:
    """Returns the task of a model folder, as ``task_of_config`` (reads config.json only)."""
    return task_of_config(_read_config(Path(path)))


def model_config(path: str | Path):
    """Returns the checked config of a model folder (reads config.json only)."""
    return _read_config(Path(path))


def load_tokenizer(path: str | Path):
    """Returns the input processor stored in a model folder: its tokenizer, or for an image model without one its
    image processor (``preprocessor_config.json``); None when the folder has neither."""
    path = Path(path)
    if not any((path / name).exists() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        if not (path / "preprocessor_config.json").is_file():
            return None
        refuse_custom_code(path)
        return AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
    refuse_custom_code(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def require_tokenizer(path: str | Path):
    """Returns the tokenizer stored in a model folder; raises HeadpruneError when it has none."""
    tokenizer = load_tokenizer(path)
    if tokenizer is None:
        raise HeadpruneError(
            f"'{path}' has no tokenizer files (nor an image processor config)",
            "save the tokenizer (or image processor) into the model folder (save_pretrained)",
        )
    return tokenizer


def _weight_files(path: Path) -> list[Path]:
    """Returns the safetensors files holding a folder's weights (one file, or the shards)."""
    return [path / WEIGHTS_FILE] if (path / WEIGHTS_FILE).is_file() else sorted(path.glob("model-*.safetensors"))


def _check_weight_files(files: list[Path], fix: str) -> None:
    # safe_open parses the header and checks that the file covers every tensor it declares,
    # which catches garbage and truncated files before any tensor is read.
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise HeadpruneError(f"weights file '{file}' is damaged or truncated ({error})", fix) from error


def _refuse_mismatched(path: Path, info: dict) -> None:
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        shown = "; ".join(
            f"{key}: {list(stored)} stored, {list(expected)} by the config" for key, stored, expected in mismatched[:3]
        )
        raise HeadpruneError(
            f"weights in '{path}' do not have the shapes its config.json describes ({len(mismatched)} tensors; {shown})",
            "restore the config.json saved with these weights",
        )


def check_model_folder(path: str | Path):
    """Returns the config of the plain Hugging Face model folder ``path`` once its config (supported family, head
    counts, no custom code) and safetensors weights are checked; raises HeadpruneError otherwise."""
    path = Path(path)
    config = _read_config(path)
    files = _weight_files(path)
    if not files:
        raise HeadpruneError(
            f"'{path}' has no safetensors weights",
            "headprune only loads safetensors; re-save the model with save_pretrained(safe_serialization=True)",
        )
    _check_weight_files(files, "re-download the model or re-save it with save_pretrained")
    return config


def load_model(path: str | Path) -> PreTrainedModel:
    """Returns the model in ``path`` (plain Hugging Face folder, pruned checkpoint, or a checkpoint pruned by
    transformers 4.x: ``pruned_heads`` in config.json), in eval mode."""
    path = Path(path)
    if (path / PLAN_FILE).is_file():
        return load_pruned(path)
    config = check_model_folder(path)
    plan = pruned_heads_plan(config, path)
    if plan is not None:
        return _load_classic_pruned(path, config, plan)
    # Mismatched shapes are refused below: loading them into a model that ignores them would
    # silently re-initialise those weights.
    model, info = _model_class(config).from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, ignore_mismatched_sizes=True, output_loading_info=True
    )
    _refuse_mismatched(path, info)
    return model.eval()


def pruned_heads_plan(config, path: Path) -> HeadPlan | None:
    """Returns the plan, in original head indices, of the ``pruned_heads`` that transformers 4.x's ``prune_heads``
    recorded in config.json (None when there are none); raises HeadpruneError where the family never had them."""
    pruned = getattr(config, "pruned_heads", None)
    source = f"pruned_heads of '{path / 'config.json'}'"
    if pruned and not isinstance(pruned, dict):
        raise HeadpruneError(
            f"{source} is not an object of layers and head lists ({pruned!r})",
            "restore the config.json saved with these weights",
        )
    if not pruned or not any(pruned.values()):
        return None
    family = family_for(config.model_type)
    if family.pruned_heads_type is None:
        raise HeadpruneError(
            f"{source}: transformers 4.x could not prune heads of {config.model_type} models, so these "
            "weights were not shrunk by it",
            "restore the config.json saved with these weights",
        )
    return HeadPlan.from_dict({family.pruned_heads_type: pruned}, source=source)


def _load_classic_pruned(path: Path, config, plan: HeadPlan) -> PreTrainedModel:
    """Returns the checkpoint that transformers 4.x pruned (its tensors shrunk, ``plan`` in its config), rebuilt
    full size, shrunk by the plan and loaded; its config no longer lists pruned_heads (the model's shape says it)."""
    del config.pruned_heads
    model = _model_class(config)(config)
    source = f"pruned_heads of '{path / 'config.json'}'"
    try:
        apply_plan(model, plan)
    except HeadpruneError as error:
        raise HeadpruneError(
            f"{source} does not fit the model: {error.message}", "restore the config.json saved with these weights"
        ) from error
    _load_state(
        model,
        _stored_tensors(_weight_files(path)),
        f"weights in '{path}' do not have the shapes its pruned_heads give",
        "restore the config.json saved with these weights",
    )
    return model.eval()


def _stored_tensors(files: list[Path]) -> dict:
    """Returns every tensor of the safetensors ``files``, by name."""
    stored = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            stored |= {key: handle.get_tensor(key) for key in handle.keys()}
    return stored


def _load_state(model, stored: dict, problem: str, fix: str) -> None:
    """Loads the tensors ``stored`` into ``model``; raises HeadpruneError saying ``problem`` when a shape differs or a
    tensor is missing or unexpected."""
    try:
        missing, unexpected = model.load_state_dict(stored, strict=False)
    except RuntimeError as error:
        raise HeadpruneError(f"{problem} ({str(error).splitlines()[-1].strip()})", fix) from error
    _require_complete(model, missing, unexpected, problem, fix)


def _require_complete(model, missing: list[str], unexpected: list[str], problem: str, fix: str) -> None:
    """Ties the model's shared weights once the stored ones are in; raises HeadpruneError saying ``problem`` when a
    tensor other than a tied one is missing, or one is unexpected."""
    # Tied weights (e.g. shared embeddings) are stored once; anything else missing is corruption.
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    real_missing = [k for k in missing if k not in tied]
    if real_missing or unexpected:
        raise HeadpruneError(f"{problem} (missing {real_missing[:3]}, unexpected {unexpected[:3]})", fix)
    model.tie_weights()


def read_plan_file(path: str | Path) -> dict:
    """Returns the parsed head_plan.json of a pruned checkpoint; raises HeadpruneError naming it when malformed."""
    file = Path(path) / PLAN_FILE
    record = _json_object(file, DAMAGED)
    if record.get("format") != FORMAT or "plan" not in record:
        raise HeadpruneError(f"'{file}' is not a {FORMAT} record", DAMAGED)
    return record


def _plan_of_record(path: Path, record: dict, model) -> None:
    """Shrinks ``model`` by the checkpoint's recorded plan; errors name head_plan.json."""
    source = f"'{path / PLAN_FILE}'"
    try:
        plan = HeadPlan.from_dict(record["plan"], source=source)
    except HeadpruneError as error:
        raise HeadpruneError(error.message, DAMAGED) from error
    try:
        apply_plan(model, plan)
    except HeadpruneError as error:
        raise HeadpruneError(
            f"{source} does not fit the model its config.json describes: {error.message}", DAMAGED
        ) from error


def load_pruned(path: str | Path) -> PreTrainedModel:
    """Returns a pruned checkpoint rebuilt from its config, head plan and weights, in eval mode."""
    path = Path(path)
    config = _read_config(path)
    if not (path / PLAN_FILE).exists():
        raise HeadpruneError(
            f"'{path}' is not a pruned checkpoint (it has no {PLAN_FILE}): load_pruned reads what "
            "'headprune prune' writes",
            "load an unpruned model with load_model (or any command: they read both kinds)",
        )
    record = read_plan_file(path)
    _check_weight_files([path / WEIGHTS_FILE], DAMAGED)
    model = _model_class(config)(config)
    _plan_of_record(path, record, model)
    problem = f"weights in '{path}' do not match its config.json and head plan"
    try:
        # safetensors' own loader: it knows which tied tensors save_model stored once, under which name.
        missing, unexpected = load_safetensors_into(model, path / WEIGHTS_FILE, strict=False)
    except (RuntimeError, OSError) as error:
        raise HeadpruneError(f"{problem} ({str(error).splitlines()[-1].strip()})", DAMAGED) from error
    _require_complete(model, missing, unexpected, problem, DAMAGED)
    return model.eval()


def save_pruned(
    model: PreTrainedModel,
    tokenizer,
    out_dir: str | Path,
    source: str | Path | None = None,
    overwrite: bool = False,
    records: dict[str, dict] | None = None,
) -> Path:
    """Writes ``model`` (pruned or not) as a pruned checkpoint folder, atomically; returns the folder.

    ``records`` are written into it too, as JSON files named by their keys. An existing
    non-empty ``out_dir`` is refused unless ``overwrite``."""
    inventory = build_inventory(model)
    plan = HeadPlan.of_model(inventory)
    record = {"format": FORMAT, "plan": plan.to_dict(), "removed_heads": plan.count()}
    if inventory.removed_key_value_heads():  # grouped-query attention: derived from the plan, for readers
        record["removed_key_value_heads"] = inventory.removed_key_value_heads()
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
