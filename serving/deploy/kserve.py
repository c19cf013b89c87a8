"""KServe InferenceServices that serve one deployment of the repository each with KServe's Triton runtime.

Each InferenceService reads the whole repository from the storage URI and loads only its
deployment's models (explicit model control: the runtime's own arguments come first, these are
appended). A canary reuses the baseline's name and serves the candidate under the baseline's model names,
from a repository of its own (the candidate's files renamed), with ``canaryTrafficPercent``:
applied over the running baseline, KServe sends that share of the traffic to the new revision
and the rest to the previous one (serverless mode), and both answer the same requests.
"""

from __future__ import annotations

from serving.deploy.served import ADMIN_KEY_VARIABLE, ServedDeployment, model_args
from serving.deploy.settings import DeploySettings

RUNTIME = "kserve-tritonserver"
# KServe's Triton runtime serves HTTP on 8080 and gRPC on 9000; Knative names the one exposed port by protocol.
PORTS = {
    "http": {"name": "http1", "containerPort": 8080, "protocol": "TCP"},
    "grpc": {"name": "h2c", "containerPort": 9000, "protocol": "TCP"},
}
PROTOCOL_VERSIONS = {"http": "v2", "grpc": "grpc-v2"}


def resources(settings: DeploySettings) -> dict:
    """Returns the container's resource requests and limits (GPUs as nvidia.com/gpu limits)."""
    amounts = {"cpu": settings.cpu, "memory": settings.memory}
    limits = {**amounts, **({"nvidia.com/gpu": str(settings.gpus)} if settings.gpus else {})}
    return {"requests": dict(amounts), "limits": limits}


def admin_key(settings: DeploySettings) -> dict:
    """Returns the environment variable that carries the Secret's admin key into the container."""
    return {
        "name": ADMIN_KEY_VARIABLE,
        "valueFrom": {"secretKeyRef": {"name": settings.admin_secret, "key": ADMIN_KEY_VARIABLE}},
    }


def labels(deployment: ServedDeployment) -> dict[str, str]:
    """Returns the labels that tie a Kubernetes object to the headprune deployment it serves."""
    return {
        "app.kubernetes.io/managed-by": "headprune",
        "headprune.io/deployment": deployment.name,
        "headprune.io/heads": f"{deployment.description.heads}-of-{deployment.description.original_heads}",
    }


def inference_service(
    deployment: ServedDeployment,
    settings: DeploySettings,
    *,
    models: list[str] | None = None,
    name: str | None = None,
    storage_uri: str | None = None,
    canary_percent: int | None = None,
) -> dict:
    """Returns the InferenceService serving ``deployment``: under its own Kubernetes name and models from
    ``settings.storage_uri``, unless ``name``, ``models`` and ``storage_uri`` say otherwise (a canary serves the
    candidate under the baseline's names), with ``canaryTrafficPercent`` when ``canary_percent`` is given."""
    predictor = {
        "minReplicas": settings.min_replicas,
        "maxReplicas": settings.max_replicas,
        "scaleMetric": settings.scale_metric,
        "scaleTarget": settings.scale_target,
    }
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    predictor["model"] = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": PROTOCOL_VERSIONS[settings.protocol],
        "runtime": RUNTIME,
        "storageUri": (storage_uri or settings.storage_uri).rstrip("/"),
        "image": settings.image,
        "args": model_args(models or deployment.models),
        "env": [admin_key(settings)],
        "ports": [dict(PORTS[settings.protocol])],
        "resources": resources(settings),
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name or deployment.service, "namespace": settings.namespace, "labels": labels(deployment)},
        "spec": {"predictor": predictor},
    }
