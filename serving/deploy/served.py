"""The deployments of a model repository as a cluster serves them: their models, names and descriptions, and the
Triton arguments that load exactly those models."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import HeadpruneError
from exporter.triton.config import read_config, write_config
from exporter.triton.description import DeploymentDescription
from exporter.triton.layout import ModelRepository, translate_model_name

# Loading only some models needs Triton's explicit model control, which also opens its model repository API (load,
# unload, upload: code execution through a Python model). In a cluster that API answers only requests carrying this
# header with the key from the Secret, which Kubernetes puts into the container's environment.
ADMIN_HEADER = "headprune-admin-key"
ADMIN_KEY_VARIABLE = "HEADPRUNE_ADMIN_KEY"
RESTRICTED_APIS = "model-repository,shared-memory,logging,trace"


@dataclass(frozen=True)
class ServedDeployment:
    """One deployment: its name in the repository, its Kubernetes name, the models that serve it (the measured one
    first) and the description of that model's served version."""

    name: str
    service: str
    models: list[str]
    version: int
    description: DeploymentDescription


def model_args(models: list[str]) -> list[str]:
    """Returns the Triton arguments that load exactly ``models`` from a repository holding more, with the model
    repository API restricted to requests that carry the admin key (``$(HEADPRUNE_ADMIN_KEY)``, which Kubernetes
    expands from the container's environment)."""
    key = f"{RESTRICTED_APIS}:{ADMIN_HEADER}=$({ADMIN_KEY_VARIABLE})"
    return [
        "--model-control-mode=explicit",
        *(f"--load-model={model}" for model in models),
        f"--http-restricted-api={key}",
        f"--grpc-restricted-protocol={key}",
    ]


def served_deployment(repo: Path, name: str, service: str) -> ServedDeployment:
    """Returns deployment ``name`` of repository ``repo``; raises HeadpruneError when the repository lacks it."""
    repository = ModelRepository(repo)
    models = repository.deployment_models(name)
    if not models:
        held = ", ".join(repository.deployments()) or "none"
        raise HeadpruneError(
            f"model repository '{repo}' has no deployment {name!r} (it holds: {held})",
            "export it first with `headprune export`, or name one it holds",
        )
    measured = translate_model_name(name) if translate_model_name(name) in models else name
    models = [measured, *(m for m in models if m != measured)]
    version = repository.served_version(measured)
    return ServedDeployment(
        name, service, models, version, DeploymentDescription.read(repository.version_folder(measured, version))
    )


def renamed_models(candidate: ServedDeployment, baseline: ServedDeployment) -> dict[str, str]:
    """Returns {candidate model: the baseline model it stands in for} (``minilm_pruned50_text`` -> ``minilm_text``);
    raises HeadpruneError when the two deployments are not served by models of the same kinds."""
    renamed = {model: baseline.name + model.removeprefix(candidate.name) for model in candidate.models}
    if sorted(renamed.values()) != sorted(baseline.models):
        raise HeadpruneError(
            f"{candidate.name!r} is served by {', '.join(candidate.models)} and {baseline.name!r} by "
            f"{', '.join(baseline.models)}: one cannot take the other's requests",
            "split traffic between deployments of the same kind (same task and front end)",
        )
    return renamed


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # the canary's weights are the candidate's: no second copy on the same disk
    except OSError:
        shutil.copy2(source, target)


def write_renamed_repository(repo: Path, renamed: dict[str, str], folder: Path) -> None:
    """Writes into ``folder`` a repository holding each model of ``renamed`` under its new name: the same files, and
    a config naming the new model (and the new names wherever a parameter named an old one, as a front end names its
    classifier)."""
    repository, target = ModelRepository(repo), ModelRepository(folder)
    for old, new in renamed.items():
        shutil.copytree(repository.folder(old), target.folder(new), copy_function=_link_or_copy)
        config = read_config(target.config_path(new))
        config.name = new
        for parameter in config.parameters.values():
            if parameter.string_value in renamed:
                parameter.string_value = renamed[parameter.string_value]
        write_config(config, target.folder(new))  # replaced by a rename: the original it was linked to is untouched
