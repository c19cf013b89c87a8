"""The deployments of a model repository as a cluster serves them: their models, names and descriptions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.errors import HeadpruneError
from exporter.triton.description import DeploymentDescription
from exporter.triton.layout import ModelRepository, translate_model_name


@dataclass(frozen=True)
class ServedDeployment:
    """One deployment: its name in the repository, its Kubernetes name, the models that serve it (the first one is
    measured) and the description of that model's served version."""

    name: str
    service: str
    models: list[str]
    version: int
    description: DeploymentDescription

    @property
    def model(self) -> str:
        """Returns the model latency and facts are read from: the classifier or LM itself, or the translation model."""
        return self.models[0]


def model_args(models: list[str]) -> list[str]:
    """Returns the Triton arguments that load exactly ``models`` from a repository holding more."""
    return ["--model-control-mode=explicit", *(f"--load-model={model}" for model in models)]


def served_deployment(repo: Path, name: str, service: str) -> ServedDeployment:
    """Returns deployment ``name`` of repository ``repo``; raises HeadpruneError when the repository lacks it."""
    repository = ModelRepository(repo)
    models = repository.deployment_models(name)
    if not models:
        held = ", ".join(repository.deployments()) or "none"
        raise HeadpruneError(f"model repository '{repo}' has no deployment {name!r} (it holds: {held})",
                             "export it first with `headprune export`, or name one it holds")
    measured = translate_model_name(name) if translate_model_name(name) in models else name
    models = [measured, *(m for m in models if m != measured)]
    version = repository.served_version(measured)
    return ServedDeployment(name, service, models, version,
                            DeploymentDescription.read(repository.version_folder(measured, version)))
