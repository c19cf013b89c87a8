"""headprune's exporter: from a trained Hugging Face model to pruned checkpoints, ONNX files and Triton models."""

from .checkpoint import load_model, load_pruned, load_tokenizer, save_pruned
from .errors import HeadpruneError
from .families import FAMILIES, family_for
from .gates import HeadGates
from .inventory import HeadInventory, build_inventory
from .plan import HeadPlan, plan_from_scores
from .quality import Evaluator, QualityScore
from .scoring import HeadScores, compute_importance
from .shrink import apply_plan

__all__ = [
    "FAMILIES", "Evaluator", "HeadGates", "HeadInventory", "HeadPlan", "HeadScores", "HeadpruneError",
    "QualityScore", "apply_plan", "build_inventory", "compute_importance", "family_for", "load_model",
    "load_pruned", "load_tokenizer", "plan_from_scores", "save_pruned",
]
