"""What the served benchmarks share: export checkpoints into a repository and compare them through Triton."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.inprocess import session
from exporter.triton.config import DeploymentOptions, classifier_config, write_config
from exporter.triton.layout import MODEL_FILE, ModelRepository
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings
from serving.demo.pipeline import DemoBudget
from serving.progress import PhaseBars
from serving.report.runner import run_comparison


def export_variants(models: dict[str, tuple], repo: Path, max_batch_size: int) -> None:
    """Exports each ``name: (checkpoint, precision[, export keyword arguments])`` into ``repo``."""
    for name, (checkpoint, precision, *extra) in models.items():
        kwargs = dict(extra[0]) if extra else {}
        options = kwargs.pop("options", DeploymentOptions(max_batch_size=max_batch_size))
        export_to_repository(checkpoint, repo, name, options=options, precision=precision, **kwargs)


def onnx_path(repo: Path, name: str) -> Path:
    """Returns the served version's model.onnx of ``name``."""
    repository = ModelRepository(repo)
    return repository.version_folder(name, repository.served_version(name)) / MODEL_FILE


def compare_repository(repo: Path, names: list[str], data: Path, out: Path, command: list[str], **settings) -> Path:
    """Runs ``compare`` on the deployments ``names`` of ``repo`` (the first is the baseline; ``settings`` override
    CompareSettings' defaults); returns the report.md written into ``out``."""
    baseline, *candidates = names
    settings = CompareSettings(
        repo=repo,
        baseline=baseline,
        candidates=candidates,
        data=data,
        out=out,
        max_drop=1.0,
        seed=DemoBudget().seed,
        **settings,
    )
    bars = PhaseBars()
    try:
        return run_comparison(settings, overwrite=True, phases=bars, command=command)
    finally:
        bars.close()


def compare_served(
    models: dict[str, tuple],
    data: Path,
    out: Path,
    batch_sizes: list[int],
    trials: int,
    command: list[str],
    seq_len: int = 128,
) -> Path:
    """Exports each ``name: (checkpoint, precision)`` into a temporary repository and runs ``compare`` with the
    first as the baseline (accuracy on ``data`` through the text front ends, throughput at ``batch_sizes`` and
    ``seq_len`` tokens); returns the report.md written into ``out``."""
    with tempfile.TemporaryDirectory(prefix="headprune-bench-") as folder:
        repo = Path(folder) / "repo"
        export_variants(models, repo, max(batch_sizes))
        return compare_repository(
            repo,
            list(models),
            data,
            out,
            command,
            batch_sizes=batch_sizes,
            concurrency=[1],
            trials=trials,
            seq_len=seq_len,
        )


def stage_onnx_models(repo: Path, models: dict[str, Path], max_batch_size: int) -> None:
    """Writes a repository serving each ``name: ONNX file`` (linked) under a classifier config of its own inputs."""
    for name, onnx_file in models.items():
        version = repo / name / "1"
        version.mkdir(parents=True)
        (version / "model.onnx").symlink_to(onnx_file.resolve())
        inputs = [i.name for i in session(onnx_file).get_inputs()]
        write_config(
            classifier_config(name, inputs, 2, DeploymentOptions(max_batch_size=max_batch_size), {}), repo / name
        )
