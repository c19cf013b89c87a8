"""Values for Triton's own Helm chart (triton-inference-server/server, deploy/k8s-onprem): one release that serves
the chosen deployments side by side, autoscaled on the time requests wait in Triton's queue.

One release, not one per deployment: the chart gives its autoscaler a fixed name and installs a
cluster-wide metrics adapter, so a second release in the cluster would collide with the first.

The chart's autoscaler reads a per-pod custom metric that its prometheus-adapter computes from
Triton's ``nv_inference_queue_duration_us`` and ``nv_inference_request_success`` counters: the mean
queue time per request over the last minute. ``chart_objects`` builds the Deployment and
HorizontalPodAutoscaler the chart's templates make of these values, so they can be checked against
Kubernetes' schema without Helm.
"""

from __future__ import annotations

from serving.deploy.kserve import resources
from serving.deploy.served import ServedDeployment, model_args
from serving.deploy.settings import DeploySettings, Storage

CHART = "triton-inference-server"
QUEUE_METRIC = "avg_time_queue_us"
HPA = "triton-hpa"  # the chart's fixed name
MOUNT = "/models"
# Mean queue time per request (µs) of each pod: queued µs per second over successful requests per second.
QUEUE_QUERY = (
    "sum(rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>) / "
    "clamp_min(sum(rate(nv_inference_request_success{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>), 1e-9)"
)


def _repository(storage: Storage) -> tuple[str, list[dict], list[dict]]:
    """Returns Triton's --model-repository for ``storage``, and the volumes and mounts a claim needs (Triton reads
    s3:// and gs:// itself)."""
    if storage.scheme != "pvc":
        return storage.uri, [], []
    volume = {"name": "model-repository", "persistentVolumeClaim": {"claimName": storage.holder, "readOnly": True}}
    mount = {"name": "model-repository", "mountPath": MOUNT, "readOnly": True}
    return f"{MOUNT}/{storage.path}".rstrip("/"), [volume], [mount]


def chart_values(deployments: list[ServedDeployment], settings: DeploySettings, storage: Storage) -> dict:
    """Returns the values.yaml of the release of Triton's chart that serves ``deployments``."""
    repository, volumes, mounts = _repository(storage)
    models = [model for deployment in deployments for model in deployment.models]
    values = {
        # numGpus: what older versions of the chart read; newer ones take GPUs from resources.
        "image": {"imageName": settings.image, "pullPolicy": "IfNotPresent", "numGpus": settings.gpus},
        "serverArgs": [f"--model-repository={repository}", *model_args(models)],
        "envFrom": [{"secretRef": {"name": settings.admin_secret}}],
        "resources": resources(settings),
        "tags": {"autoscaling": True, "loadBalancing": False},
        "autoscaling": {
            "minReplicas": max(settings.min_replicas, 1),
            "maxReplicas": settings.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(settings.queue_target_us)},
                    },
                }
            ],
        },
        "prometheus-adapter": {
            "prometheus": {"url": settings.prometheus_url, "port": 9090},
            "rules": {
                "custom": [
                    {
                        "seriesQuery": f'nv_inference_queue_duration_us{{namespace="{settings.namespace}",pod!=""}}',
                        "resources": {
                            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
                        },
                        "name": {"matches": "nv_inference_queue_duration_us", "as": QUEUE_METRIC},
                        "metricsQuery": QUEUE_QUERY,
                    }
                ]
            },
        },
    }
    if volumes:
        values["volumes"], values["volumeMounts"] = volumes, mounts
    return values


def chart_objects(values: dict, release: str, namespace: str) -> list[dict]:
    """Returns the Deployment and HorizontalPodAutoscaler the chart makes of ``values`` for release ``release``."""
    name = (release if CHART in release else f"{release}-{CHART}")[:63].rstrip("-")
    selector = {"app": CHART, "release": release}
    container = {
        "name": CHART,
        "image": values["image"]["imageName"],
        "imagePullPolicy": values["image"]["pullPolicy"],
        "args": ["tritonserver", *values["serverArgs"]],
        "envFrom": values["envFrom"],
        "resources": values["resources"],
        "ports": [
            {"containerPort": 8000, "name": "http"},
            {"containerPort": 8001, "name": "grpc"},
            {"containerPort": 8002, "name": "metrics"},
        ],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
    }
    if "volumeMounts" in values:
        container["volumeMounts"] = values["volumeMounts"]
    pod = {"containers": [container], **({"volumes": values["volumes"]} if "volumes" in values else {})}
    metadata = {"name": name, "namespace": namespace, "labels": selector}
    autoscaling = values["autoscaling"]
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                "replicas": autoscaling["minReplicas"],
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": selector}, "spec": pod},
            },
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {**metadata, "name": HPA},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": autoscaling["minReplicas"],
                "maxReplicas": autoscaling["maxReplicas"],
                "metrics": autoscaling["metrics"],
            },
        },
    ]
