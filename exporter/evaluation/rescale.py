"""Retraining-free recovery: rescale each surviving head so every layer reproduces the unpruned layer.

After heads are removed, a layer's attention output ``W_o · concat(heads) + b`` misses the
removed heads' share. Following the mask-tuning idea of Kwon et al. (2022), each kept head
``h`` gets one scale ``m_h`` chosen by least squares so that ``Σ m_h · W_o[:, h] · head_h + b``
is as close as possible to the unpruned model's attention output of that layer, on sample
data, with the pruned model's own (already rescaled) lower layers as input. The scales are
folded into the output projection's columns: the model keeps its shape and exports as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from exporter.atomic import refuse_existing
from exporter.data import batches, encode_batch
from exporter.errors import HeadpruneError
from exporter.pruning.checkpoint import load_model, load_tokenizer, model_task, save_pruned
from exporter.pruning.inventory import AttentionLayer, build_inventory

RECORD_FILE = "recovery.json"

# Pulls the scales gently towards 1 (no change) where the sample data barely constrain them.
RIDGE = 1e-3


def _capture(module: nn.Module, store: dict) -> torch.utils.hooks.RemovableHandle:
    def hook(_, inputs, output):
        store["input"], store["output"] = inputs[0].detach(), output.detach()

    return module.register_forward_hook(hook)


def _layer_scales(
    pruned_layer: AttentionLayer,
    base_layer: AttentionLayer,
    run_pruned: Callable,
    run_base: Callable,
    encoded: list[dict],
) -> torch.Tensor:
    """Returns the least-squares scale of each kept head of ``pruned_layer`` over the ``encoded`` batches."""
    output = pruned_layer.module("output")
    kept, size = len(pruned_layer.kept), pruned_layer.head_size
    weight = output.weight.detach().reshape(output.out_features, kept, size)
    bias = output.bias.detach() if output.bias is not None else 0.0
    gram, right = torch.zeros(kept, kept, dtype=torch.float64), torch.zeros(kept, dtype=torch.float64)
    pruned_store, base_store = {}, {}
    handles = [_capture(output, pruned_store), _capture(base_layer.module("output"), base_store)]
    try:
        for batch in encoded:
            run_pruned(batch)
            run_base(batch)
            tokens = batch["attention_mask"].reshape(-1).bool()
            context = pruned_store["input"].reshape(-1, kept, size)[tokens]
            # Each head's contribution to the output: [tokens, heads, features].
            parts = torch.einsum("ths,fhs->thf", context, weight).double()
            target = (base_store["output"].reshape(-1, output.out_features)[tokens] - bias).double()
            gram += torch.einsum("thf,tkf->hk", parts, parts)
            right += torch.einsum("thf,tf->h", parts, target)
    finally:
        for handle in handles:
            handle.remove()
    ridge = RIDGE * gram.diagonal().mean()
    return torch.linalg.solve(gram + ridge * torch.eye(kept, dtype=torch.float64), right + ridge).float()


@torch.no_grad()
def rescale_heads(pruned: nn.Module, base: nn.Module, encoded: list[dict]) -> dict[str, dict[int, list[float]]]:
    """Rescales the kept heads of ``pruned`` in place, layer by layer from the bottom, so that each layer's attention
    output matches ``base``'s on the ``encoded`` batches (inputs with ``attention_mask``); returns the scales applied,
    per attention type and layer (headless layers are left alone)."""
    pruned.eval()
    base.eval()
    pruned_inventory, base_inventory = build_inventory(pruned), build_inventory(base)
    scales: dict[str, dict[int, list[float]]] = {}
    for layer in pruned_inventory.layers:
        if not layer.kept:
            continue
        base_layer = base_inventory.get(layer.attention_type.name, layer.index)
        found = _layer_scales(layer, base_layer, lambda b: pruned(**b), lambda b: base(**b), encoded)
        output = layer.module("output")
        columns = found.repeat_interleave(layer.head_size)
        output.weight.mul_(columns.to(output.weight.dtype))
        scales.setdefault(layer.attention_type.name, {})[layer.index] = [round(float(s), 4) for s in found]
    return scales


def load_pruned_and_teacher(
    pruned_dir: str | Path, teacher_dir: str | Path, tasks: tuple[str, ...] = ("classification", "regression")
) -> tuple[nn.Module, nn.Module]:
    """Returns the pruned model (of one of ``tasks``) and the unpruned one it came from; raises HeadpruneError when
    they do not match."""
    task = model_task(pruned_dir)
    if task not in tasks:
        raise HeadpruneError(
            f"'{pruned_dir}' is a {task} model; this recovery works on {', '.join(tasks)} models",
            "recover a pruned model of one of those tasks",
        )
    pruned, teacher = load_model(pruned_dir), load_model(teacher_dir)
    if (
        type(pruned) is not type(teacher)
        or teacher.config.hidden_size != pruned.config.hidden_size
        or teacher.config.num_labels != pruned.config.num_labels
    ):
        raise HeadpruneError(
            f"'{teacher_dir}' ({type(teacher).__name__}) is not the model '{pruned_dir}' was pruned "
            f"from ({type(pruned).__name__})",
            "pass the unpruned checkpoint as the teacher",
        )
    return pruned, teacher


def recover_by_rescaling(
    pruned_dir: str | Path,
    teacher_dir: str | Path,
    examples: list[dict],
    out: str | Path,
    batch_size: int = 32,
    overwrite: bool = False,
) -> dict:
    """Writes to ``out`` the pruned classifier of ``pruned_dir`` with its heads rescaled against the unpruned
    ``teacher_dir`` on ``examples`` (texts; labels unused); returns the record also saved as ``out/recovery.json``."""
    refuse_existing(out, overwrite)
    if not examples:
        raise HeadpruneError("the sample data holds no examples", "pass a file of texts from the task's domain")
    pruned, teacher = load_pruned_and_teacher(pruned_dir, teacher_dir)
    tokenizer = load_tokenizer(pruned_dir)
    encoded = []
    for chunk in batches(examples, batch_size):
        batch = encode_batch(tokenizer, chunk, "classification", pruned.config)
        batch.pop("labels", None)
        encoded.append(batch)
    scales = rescale_heads(pruned, teacher, encoded)
    record = {"method": "rescale", "teacher": str(teacher_dir), "examples": len(examples), "scales": scales}
    save_pruned(pruned, tokenizer, out, source=pruned_dir, overwrite=overwrite, records={RECORD_FILE: record})
    return record
