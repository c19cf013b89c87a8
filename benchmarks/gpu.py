"""The GPU section: the headline's deployments served with CUDA instances (ONNX Runtime's CUDA provider),
compared through Triton like on the CPU. Skipped, with the reason recorded, where no GPU is usable."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmarks.models import BenchModels
from benchmarks.served import compare_repository, export_variants
from exporter.triton.config import DeploymentOptions


def gpu_unavailable() -> str | None:
    """Returns why the GPU section cannot run here, or None when it can."""
    import onnxruntime as ort
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    return None


def gpu_section(models: BenchModels, out: Path) -> dict:
    """Returns the GPU comparison's report path and speedups, or {"skipped": reason}."""
    reason = gpu_unavailable()
    if reason:
        print(f"gpu: skipped ({reason})")
        return {"skipped": reason}
    options = DeploymentOptions(max_batch_size=64, kind="gpu")
    with tempfile.TemporaryDirectory(prefix="headprune-gpu-") as folder:
        repo = Path(folder) / "repo"
        export_variants(
            {
                "minilm": (models.base, "fp32", {"options": options}),
                "minilm_pruned50": (models.pruned50, "fp32", {"options": options}),
                "minilm_best_fp32": (models.headline, "fp32", {"options": options}),
            },
            repo,
            64,
        )
        path = compare_repository(
            repo,
            ["minilm", "minilm_pruned50", "minilm_best_fp32"],
            models.splits["eval"],
            out,
            ["make", "bench"],
            batch_sizes=[1, 16, 64],
            concurrency=[1],
            trials=3,
        )
    report = json.loads((out / "report.json").read_text())
    return {"report": str(path), "speedups": report["speedups"]}
