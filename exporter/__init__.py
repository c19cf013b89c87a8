"""headprune's exporter: from a trained Hugging Face model to pruned checkpoints, ONNX files and Triton models.

The stages live in sub-packages: ``pruning`` (families, inventory, gates, scoring,
plans, shrinking, checkpoints), ``evaluation`` (quality, experiments, fine-tuning),
``training`` (translation models), ``onnx`` (export, fusion, encoder/decoder with a KV
cache) and ``triton`` (configs, repository, descriptions, translation models). The
names below are loaded on first use, so importing ``exporter.errors`` or the Triton
config helpers does not import torch.
"""

from importlib import import_module

_NAMES = {
    "load_model": "exporter.pruning.checkpoint",
    "load_pruned": "exporter.pruning.checkpoint",
    "load_tokenizer": "exporter.pruning.checkpoint",
    "save_pruned": "exporter.pruning.checkpoint",
    "HeadpruneError": "exporter.errors",
    "FAMILIES": "exporter.pruning.families",
    "family_for": "exporter.pruning.families",
    "HeadGates": "exporter.pruning.gates",
    "HeadInventory": "exporter.pruning.inventory",
    "build_inventory": "exporter.pruning.inventory",
    "HeadPlan": "exporter.pruning.plan",
    "plan_from_scores": "exporter.pruning.plan",
    "Evaluator": "exporter.evaluation.quality",
    "QualityScore": "exporter.evaluation.metrics",
    "HeadScores": "exporter.pruning.scores",
    "compute_importance": "exporter.pruning.scoring",
    "apply_plan": "exporter.pruning.shrink",
    "TranslationSettings": "exporter.training.settings",
    "train_translation": "exporter.training.translation",
    "export_translation_to_repository": "exporter.triton.translation",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'exporter' has no attribute {name!r}")
    return getattr(import_module(_NAMES[name]), name)
