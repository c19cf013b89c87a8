"""What the served benchmarks share: export checkpoints into a temporary repository and compare them through Triton."""

from __future__ import annotations

import tempfile
from pathlib import Path

from exporter.triton.config import DeploymentOptions
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings
from serving.demo.pipeline import DemoBudget
from serving.progress import PhaseBars
from serving.report.runner import run_comparison


def compare_served(models: dict[str, tuple[Path, str]], data: Path, out: Path, batch_sizes: list[int], trials: int,
                   command: list[str], seq_len: int = 128) -> Path:
    """Exports each ``name: (checkpoint, precision)`` and runs ``compare`` with the first as the baseline (accuracy on
    ``data`` through the text front ends, throughput at ``batch_sizes`` and ``seq_len`` tokens); returns the report.md written into ``out``."""
    with tempfile.TemporaryDirectory(prefix="headprune-bench-") as folder:
        repo = Path(folder) / "repo"
        for name, (checkpoint, precision) in models.items():
            export_to_repository(checkpoint, repo, name, options=DeploymentOptions(max_batch_size=max(batch_sizes)),
                                 precision=precision)
        baseline, *candidates = models
        settings = CompareSettings(repo=repo, baseline=baseline, candidates=candidates, data=data, out=out,
                                   max_drop=1.0, batch_sizes=batch_sizes, concurrency=[1], trials=trials,
                                   seq_len=seq_len, seed=DemoBudget().seed)
        bars = PhaseBars()
        try:
            return run_comparison(settings, overwrite=True, phases=bars, command=command)
        finally:
            bars.close()
