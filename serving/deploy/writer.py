"""``headprune deploy``: the Kubernetes objects or Helm values for a model repository's deployments, checked
against their schemas and written together into one folder.

The folder holds, beside the manifests, ``deployments.json`` (what was written, for machines),
``README.md`` (the commands to run), ``descriptions/``: each served model's config.pbtxt and
deployment.json without its weights, which ``headprune compare --repo`` reads to measure the
cluster's deployments from a machine that has neither the checkpoints nor the ONNX files, and for a
canary, ``canary-repository/``: the candidate's models under the baseline's names.
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
from serving.deploy.served import (
    ADMIN_HEADER,
    ADMIN_KEY_VARIABLE,
    ServedDeployment,
    renamed_models,
    served_deployment,
    write_renamed_repository,
)
from serving.deploy.settings import KUBERNETES_VERSION, DeploySettings, Storage, kubernetes_name

FORMAT = "headprune-deploy/1"
DESCRIPTIONS = "descriptions"
CANARY_REPOSITORY = "canary-repository"
HELM_VALUES = "helm/values.yaml"
FIRST_LOCAL_PORT = 8000


@dataclass(frozen=True)
class DeployResult:
    """What deploy wrote: the folder, its files (relative paths) and deployments.json's data."""

    out: Path
    files: list[str]
    manifest: dict


def _deployments(settings: DeploySettings) -> dict[str, ServedDeployment]:
    repository = ModelRepository(settings.repo)
    if not repository.root.is_dir():
        raise HeadpruneError(
            f"model repository '{settings.repo}' does not exist",
            "export models into it with `headprune export`, or give --repo",
        )
    names = list(
        dict.fromkeys(
            [*(settings.deployments or repository.deployments()), *filter(None, (settings.baseline, settings.canary))]
        )
    )
    if not names:
        raise HeadpruneError(
            f"model repository '{settings.repo}' holds no deployment",
            "export a model into it with `headprune export` first",
        )
    served = {
        name: served_deployment(repository.root, name, kubernetes_name(name, settings.name_limit)) for name in names
    }
    services: dict[str, str] = {}
    for name, deployment in served.items():
        if deployment.service in services:
            raise HeadpruneError(
                f"deployments {services[deployment.service]!r} and {name!r} both become the "
                f"Kubernetes name {deployment.service!r}",
                "deploy one of them (--deployment)",
            )
        services[deployment.service] = name
    return served


def _manifest_path(deployment: ServedDeployment) -> str:
    return f"kserve/{deployment.service}.yaml"


def _canary_path(baseline: ServedDeployment) -> str:
    return f"kserve/{baseline.service}-canary.yaml"


def _kserve(settings: DeploySettings, served: dict[str, ServedDeployment]) -> dict[str, list[dict]]:
    files = {_manifest_path(d): [kserve.inference_service(d, settings)] for d in served.values()}
    if settings.canary:
        baseline, candidate = served[settings.baseline], served[settings.canary]
        files[_canary_path(baseline)] = [
            kserve.inference_service(
                candidate,
                settings,
                name=baseline.service,
                models=list(renamed_models(candidate, baseline).values()),
                storage_uri=settings.canary_storage_uri,
                canary_percent=settings.canary_percent,
            )
        ]
    check_inference_services([resource for objects in files.values() for resource in objects])
    return files


def _helm(settings: DeploySettings, storage: Storage, served: dict[str, ServedDeployment]) -> dict[str, list[dict]]:
    values = helm.chart_values(list(served.values()), settings, storage)
    for resource in helm.chart_objects(values, settings.release, settings.namespace):
        check_kubernetes(resource)
    return {HELM_VALUES: [values]}


def _files_of(settings: DeploySettings, deployment: ServedDeployment, served: dict[str, ServedDeployment]) -> list[str]:
    """Returns the files that serve ``deployment``: its manifest or the values, and the canary split it takes part in."""
    if settings.target == "helm":
        return [HELM_VALUES]
    canary = (
        [_canary_path(served[settings.baseline])] if deployment.name in (settings.baseline, settings.canary) else []
    )
    return [_manifest_path(deployment), *canary]


def _upload(repo: Path, storage: Storage) -> str:
    return {
        "s3": f"aws s3 sync {repo} {storage.uri}",
        "gs": f"gsutil -m rsync -r {repo} {storage.uri}",
        "pvc": f"kubectl cp {repo}/. POD:/mnt/{storage.path}  "
        f"# POD: any pod that mounts the claim {storage.holder} at /mnt",
    }[storage.scheme]


def _compare(served: dict[str, ServedDeployment], baseline: str | None, addresses: dict[str, str]) -> str:
    """Returns the compare command for the baseline (or the first deployment) and the others of the same task."""
    first = served[baseline or next(iter(served))]
    alike = [d.name for d in served.values() if d.description.task == first.description.task and d is not first]
    compared = [first.name, *alike]
    shared = {addresses[n] for n in compared}
    endpoints = (
        f"--url {shared.pop()}" if len(shared) == 1 else " ".join(f"--endpoint {n}={addresses[n]}" for n in compared)
    )
    candidates = " ".join(f"--candidate {n}" for n in alike) or "--candidate NAME"
    return (
        f"headprune compare --repo {DESCRIPTIONS} {endpoints} --baseline {first.name} {candidates} "
        "--data EVAL.jsonl --out report"
    )


def _commands(settings: DeploySettings, storage: Storage, served: dict[str, ServedDeployment]) -> list[str]:
    """Returns the shell commands, run from the deploy folder, that upload, apply and measure the deployments."""
    ns = f"-n {settings.namespace}"
    commands = [
        f"kubectl create secret generic {settings.admin_secret} {ns} "
        f"--from-literal={ADMIN_KEY_VARIABLE}=$(openssl rand -hex 16)  # the key of Triton's model "
        f"repository API (header {ADMIN_HEADER})",
        _upload(Path(settings.repo).resolve(), storage),
    ]
    if settings.canary:
        commands.append(_upload(Path(CANARY_REPOSITORY), Storage.parse(settings.canary_storage_uri)))
    ports = {name: FIRST_LOCAL_PORT + index for index, name in enumerate(served)}
    if settings.target == "kserve":
        commands += [f"kubectl apply {ns} -f {_manifest_path(d)}" for d in served.values()]
        if settings.canary:
            commands.append(
                f"kubectl apply {ns} -f {_canary_path(served[settings.baseline])}  # once the baseline "
                "is Ready: the canary split"
            )
        commands.append(f"kubectl get inferenceservices {ns}")
        port = kserve.PORTS[settings.protocol]["containerPort"]
        commands += [
            f"kubectl port-forward {ns} $(kubectl get pod {ns} -l serving.kserve.io/inferenceservice="
            f"{d.service},component=predictor -o name | head -n 1) {ports[d.name]}:{port} &"
            for d in served.values()
        ]
        addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    else:
        chart = "server/deploy/k8s-onprem"
        name = settings.release if helm.CHART in settings.release else f"{settings.release}-{helm.CHART}"
        commands += [
            "git clone https://github.com/triton-inference-server/server  # Triton's chart",
            f"helm dependency build {chart}  # its prometheus-adapter and traefik subcharts",
            f"helm install {settings.release} {chart} {ns} -f {HELM_VALUES}",
            f"kubectl port-forward {ns} deployment/{name} {FIRST_LOCAL_PORT}:8000 &",
        ]
        addresses = {name: f"127.0.0.1:{FIRST_LOCAL_PORT}" for name in served}
    return commands + [_compare(served, settings.baseline, addresses)]


def _copy_descriptions(repo: Path, served: dict[str, ServedDeployment], folder: Path) -> None:
    repository, copy = ModelRepository(repo), ModelRepository(folder)
    for model in dict.fromkeys(m for deployment in served.values() for m in deployment.models):
        copy.folder(model).mkdir(parents=True)
        shutil.copyfile(repository.config_path(model), copy.config_path(model))
        version = repository.served_version(model)
        source = repository.version_folder(model, version) / DESCRIPTION_FILE
        if source.is_file():
            target = copy.version_folder(model, version)
            target.mkdir()
            shutil.copyfile(source, target / DESCRIPTION_FILE)


def _checked_against(target: str) -> dict[str, str]:
    from importlib.metadata import version

    schemas = f"kubernetes-validate {version('kubernetes-validate')} strict schemas, Kubernetes {KUBERNETES_VERSION}"
    if target == "kserve":
        return {"InferenceService": f"KServe SDK {version('kserve')} models; embedded Kubernetes types: {schemas}"}
    return {"Deployment, HorizontalPodAutoscaler (what the chart makes of the values)": schemas}


def _readme(manifest: dict) -> str:
    lines = [
        f"# headprune deploy: {manifest['target']}",
        "",
        f"Serves {', '.join(manifest['deployments'])} from `{manifest['storage_uri']}` in namespace "
        f"`{manifest['namespace']}` with `{manifest['image']}`.",
        "",
    ]
    if manifest["canary"]:
        canary = manifest["canary"]
        lines += [
            f"Canary: `{canary['candidate']}` takes {canary['percent']} % of `{canary['baseline']}`'s traffic "
            f"once the canary file is applied over the running baseline (KServe serverless mode). It serves the "
            f"candidate under the baseline's model names from `{canary['storage_uri']}` (upload "
            f"`{CANARY_REPOSITORY}/` there). Promote it by removing `canaryTrafficPercent`; roll back by "
            "applying the baseline's file again.",
            "",
        ]
    lines += [
        "Checked against: " + "; ".join(f"{k}: {v}" for k, v in manifest["checked_against"].items()) + ".",
        "",
        "Run, from this folder (a pod must be running for each port-forward: keep `--min-replicas` at 1 or "
        "more while measuring; a port-forward bypasses the ingress and its autoscaler):",
        "",
        "```sh",
        *manifest["commands"],
        "```",
        "",
        "`deployments.json` lists every file and deployment; `descriptions/` holds each served model's "
        "config.pbtxt and deployment.json (no weights) for `headprune compare --repo descriptions`.",
        "",
    ]
    return "\n".join(lines)


def write_deployment(settings: DeploySettings, overwrite: bool = False) -> DeployResult:
    """Writes the manifests (``kserve/``) or chart values (``helm/``) of the repository's deployments into
    ``settings.out``, with deployments.json, README.md, descriptions/ and a canary's repository, all at once; returns
    what it wrote. Every object is checked against its schema first; an existing non-empty folder is replaced only
    with ``overwrite``."""
    storage = settings.check()
    served = _deployments(settings)
    renamed = renamed_models(served[settings.canary], served[settings.baseline]) if settings.canary else {}
    files = _kserve(settings, served) if settings.target == "kserve" else _helm(settings, storage, served)
    manifest = {
        "format": FORMAT,
        "target": settings.target,
        "repository": str(settings.repo),
        "storage_uri": storage.uri,
        "namespace": settings.namespace,
        "image": settings.image,
        "admin_secret": settings.admin_secret,
        "deployments": {
            d.name: {
                "service": d.service,
                "models": d.models,
                "version": d.version,
                "files": _files_of(settings, d, served),
                "task": d.description.task,
                "heads": d.description.heads,
                "original_heads": d.description.original_heads,
                "precision": d.description.precision,
            }
            for d in served.values()
        },
        "canary": {
            "baseline": settings.baseline,
            "candidate": settings.canary,
            "percent": settings.canary_percent,
            "storage_uri": Storage.parse(settings.canary_storage_uri).uri,
            "models": renamed,
        }
        if settings.canary
        else None,
        "checked_against": _checked_against(settings.target),
        "commands": _commands(settings, storage, served),
    }
    with atomic_dir(settings.out, overwrite=overwrite) as staging:
        for path, objects in files.items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(staging / path, yaml.safe_dump_all(objects, sort_keys=False))
        atomic_write_json(staging / "deployments.json", manifest)
        atomic_write_text(staging / "README.md", _readme(manifest))
        _copy_descriptions(Path(settings.repo), served, staging / DESCRIPTIONS)
        if renamed:
            write_renamed_repository(Path(settings.repo), renamed, staging / CANARY_REPOSITORY)
    written = sorted(str(p.relative_to(settings.out)) for p in Path(settings.out).rglob("*") if p.is_file())
    return DeployResult(Path(settings.out), written, manifest)
