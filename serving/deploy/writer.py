"""``headprune deploy``: the Kubernetes objects or Helm values for a model repository's deployments, checked
against their schemas and written together into one folder.

The folder holds, beside the manifests, ``deployments.json`` (what was written, for machines),
``README.md`` (the commands to run) and ``descriptions/``: each served model's config.pbtxt and
deployment.json without its weights, which ``headprune compare --repo`` reads to measure the
cluster's deployments from a machine that has neither the checkpoints nor the ONNX files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from exporter.atomic import atomic_dir, atomic_write_json, atomic_write_text
from exporter.errors import HeadpruneError
from exporter.triton.description import FILE as DESCRIPTION_FILE
from exporter.triton.layout import ModelRepository
from serving.deploy import helm, kserve
from serving.deploy.schemas import check_inference_services, check_kubernetes
from serving.deploy.served import ServedDeployment, served_deployment
from serving.deploy.settings import (
    HELM_NAME_LIMIT,
    KSERVE_NAME_LIMIT,
    KUBERNETES_VERSION,
    DeploySettings,
    Storage,
    kubernetes_name,
)

FORMAT = "headprune-deploy/1"
DESCRIPTIONS = "descriptions"


@dataclass(frozen=True)
class DeployResult:
    """What deploy wrote: the folder, its files (relative paths) and deployments.json's data."""

    out: Path
    files: list[str]
    manifest: dict


def _deployments(settings: DeploySettings) -> dict[str, ServedDeployment]:
    repository = ModelRepository(settings.repo)
    if not repository.root.is_dir():
        raise HeadpruneError(f"model repository '{settings.repo}' does not exist",
                             "export models into it with `headprune export`, or give --repo")
    names = list(dict.fromkeys([*(settings.deployments or repository.deployments()),
                                *filter(None, (settings.baseline, settings.canary))]))
    if not names:
        raise HeadpruneError(f"model repository '{settings.repo}' holds no deployment",
                             "export a model into it with `headprune export` first")
    limit = KSERVE_NAME_LIMIT if settings.target == "kserve" else HELM_NAME_LIMIT
    served = {name: served_deployment(repository.root, name, kubernetes_name(name, limit)) for name in names}
    services: dict[str, str] = {}
    for name, deployment in served.items():
        if deployment.service in services:
            raise HeadpruneError(f"deployments {services[deployment.service]!r} and {name!r} both become the "
                                 f"Kubernetes name {deployment.service!r}", "deploy one of them (--deployment)")
        services[deployment.service] = name
    if settings.canary:
        tasks = {served[n].description.task for n in (settings.baseline, settings.canary)}
        if len(tasks) > 1:
            raise HeadpruneError(f"--canary {settings.canary!r} and --baseline {settings.baseline!r} do different "
                                 "tasks, so one cannot take the other's traffic", "split traffic between like models")
    return served


def _kserve(settings: DeploySettings, served: dict[str, ServedDeployment]) -> dict[str, list[dict]]:
    files = {f"kserve/{d.service}.yaml": [kserve.inference_service(d, settings)] for d in served.values()}
    if settings.canary:
        baseline = served[settings.baseline]
        files[f"kserve/{baseline.service}-canary.yaml"] = [kserve.inference_service(
            served[settings.canary], settings, name=baseline.service, canary_percent=settings.canary_percent)]
    check_inference_services([resource for objects in files.values() for resource in objects])
    return files


def _helm(settings: DeploySettings, storage: Storage, served: dict[str, ServedDeployment]) -> dict[str, list[dict]]:
    files = {}
    for deployment in served.values():
        values = helm.chart_values(deployment, settings, storage)
        for resource in helm.chart_objects(values, deployment.service, settings.namespace, deployment):
            check_kubernetes(resource)
        files[f"helm/{deployment.service}/values.yaml"] = [values]
    return files


def _commands(settings: DeploySettings, storage: Storage, served: dict[str, ServedDeployment],
              files: dict[str, list[dict]]) -> list[str]:
    repo = Path(settings.repo).resolve()
    upload = {"s3": f"aws s3 sync {repo} {storage.uri}", "gs": f"gsutil -m rsync -r {repo} {storage.uri}",
              "pvc": f"kubectl cp {repo}/. POD:/mnt/{storage.path}  "
                     f"# POD: any pod that mounts the claim {storage.holder} at /mnt"}[storage.scheme]
    commands = [upload]
    if settings.target == "kserve":
        canary = [path for path in files if path.endswith("-canary.yaml")]
        commands += [f"kubectl apply -f {path}" for path in files if path not in canary]
        commands += [f"kubectl apply -f {path}  # once the baseline is Ready: the canary split" for path in canary]
        commands.append(f"kubectl get inferenceservices -n {settings.namespace}")
        port = kserve.PORTS[settings.protocol]["containerPort"]
        forward = [f"kubectl port-forward -n {settings.namespace} $(kubectl get pod -n {settings.namespace} -l "
                   f"serving.kserve.io/inferenceservice={d.service} -o name | head -n 1) {8000 + i}:{port}  "
                   f"# {d.name} on 127.0.0.1:{8000 + i}" for i, d in enumerate(served.values())]
    else:
        commands.append("git clone https://github.com/triton-inference-server/server  # Triton's chart: "
                        "server/deploy/k8s-onprem")
        commands += [f"helm install {d.service} server/deploy/k8s-onprem -n {settings.namespace} "
                     f"-f helm/{d.service}/values.yaml" for d in served.values()]
        forward = [f"kubectl port-forward -n {settings.namespace} deployment/{d.service}-{helm.CHART} "
                   f"{8000 + i}:8000  # {d.name} on 127.0.0.1:{8000 + i}" for i, d in enumerate(served.values())]
    # A comparison of the baseline (or the first deployment) with the others that do the same task.
    ports = {d.name: 8000 + i for i, d in enumerate(served.values())}
    baseline = served[settings.baseline or next(iter(served))]
    alike = [d.name for d in served.values() if d.description.task == baseline.description.task and d is not baseline]
    endpoints = " ".join(f"--endpoint {n}=127.0.0.1:{ports[n]}" for n in [baseline.name, *alike])
    candidates = " ".join(f"--candidate {n}" for n in alike) or "--candidate NAME"
    commands += forward + [f"headprune compare --repo {DESCRIPTIONS} {endpoints} --baseline {baseline.name} "
                           f"{candidates} --data EVAL.jsonl --out report"]
    return commands


def _copy_descriptions(repo: Path, served: dict[str, ServedDeployment], folder: Path) -> None:
    repository, copy = ModelRepository(repo), ModelRepository(folder)
    for deployment in served.values():
        for model in deployment.models:
            copy.folder(model).mkdir(parents=True)
            shutil.copyfile(repository.config_path(model), copy.config_path(model))
            version = repository.served_version(model)
            source = repository.version_folder(model, version) / DESCRIPTION_FILE
            if source.is_file():
                target = copy.version_folder(model, version)
                target.mkdir()
                shutil.copyfile(source, target / DESCRIPTION_FILE)


def write_deployment(settings: DeploySettings, overwrite: bool = False) -> DeployResult:
    """Writes the manifests (``kserve/``) or chart values (``helm/``) of the repository's deployments into
    ``settings.out``, with deployments.json, README.md and descriptions/, all at once; returns what it wrote. Every
    object is checked against its schema first; an existing non-empty folder is replaced only with ``overwrite``."""
    storage = settings.check()
    served = _deployments(settings)
    files = _kserve(settings, served) if settings.target == "kserve" else _helm(settings, storage, served)
    commands = _commands(settings, storage, served, files)
    manifest = {
        "format": FORMAT, "target": settings.target, "repository": str(settings.repo), "storage_uri": storage.uri,
        "namespace": settings.namespace, "image": settings.image,
        "deployments": {d.name: {"service": d.service, "models": d.models, "version": d.version,
                                 "files": _files_of(settings, d, served),
                                 "task": d.description.task, "heads": d.description.heads,
                                 "original_heads": d.description.original_heads,
                                 "precision": d.description.precision} for d in served.values()},
        "canary": {"baseline": settings.baseline, "candidate": settings.canary,
                   "percent": settings.canary_percent} if settings.canary else None,
        "checked_against": _checked_against(settings.target), "commands": commands}
    with atomic_dir(settings.out, overwrite=overwrite) as staging:
        for path, objects in files.items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(staging / path, yaml.safe_dump_all(objects, sort_keys=False))
        atomic_write_json(staging / "deployments.json", manifest)
        atomic_write_text(staging / "README.md", _readme(manifest))
        _copy_descriptions(Path(settings.repo), served, staging / DESCRIPTIONS)
    written = sorted(str(p.relative_to(settings.out)) for p in Path(settings.out).rglob("*") if p.is_file())
    return DeployResult(Path(settings.out), written, manifest)


def _files_of(settings: DeploySettings, deployment: ServedDeployment, served: dict[str, ServedDeployment]) -> list[str]:
    """Returns the files that serve ``deployment``: its manifest or values, and the canary split it takes part in."""
    if settings.target == "helm":
        return [f"helm/{deployment.service}/values.yaml"]
    canary = [f"kserve/{served[settings.baseline].service}-canary.yaml"] \
        if deployment.name in (settings.baseline, settings.canary) else []
    return [f"kserve/{deployment.service}.yaml", *canary]


def _checked_against(target: str) -> dict[str, str]:
    from importlib.metadata import version

    if target == "kserve":
        return {"InferenceService": f"KServe SDK {version('kserve')} models; embedded Kubernetes types: "
                                    f"kubernetes-validate {version('kubernetes-validate')} strict schemas, "
                                    f"Kubernetes {KUBERNETES_VERSION}"}
    return {"Deployment, HorizontalPodAutoscaler (what the chart makes of the values)":
            f"kubernetes-validate {version('kubernetes-validate')} strict schemas, Kubernetes {KUBERNETES_VERSION}"}


def _readme(manifest: dict) -> str:
    lines = [f"# headprune deploy: {manifest['target']}", "",
             f"Serves {', '.join(manifest['deployments'])} from `{manifest['storage_uri']}` in namespace "
             f"`{manifest['namespace']}` with `{manifest['image']}`.", "",
             "Checked against: " + "; ".join(f"{k}: {v}" for k, v in manifest["checked_against"].items()) + ".", "",
             "Run, from this folder:", "", "```sh", *manifest["commands"], "```", "",
             "`deployments.json` lists every file and deployment; `descriptions/` holds each served model's "
             "config.pbtxt and deployment.json (no weights) for `headprune compare --repo descriptions`.", ""]
    if manifest["canary"]:
        canary = manifest["canary"]
        lines[4:4] = [f"Canary: `{canary['candidate']}` takes {canary['percent']} % of `{canary['baseline']}`'s traffic "
                      "once the canary file is applied over the running baseline (KServe serverless mode); promote it "
                      "by removing `canaryTrafficPercent`, roll back by applying the baseline's file again.", ""]
    return "\n".join(lines)

