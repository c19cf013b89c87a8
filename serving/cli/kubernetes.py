"""CLI command that deploys a model repository to Kubernetes: deploy."""

from __future__ import annotations

from pathlib import Path

import click

from serving.cli.app import default_of, emit, friendly_errors, main
from serving.deploy.settings import KSERVE_SCALE_METRICS, TARGETS, DeploySettings


def setting(name: str):
    """Returns DeploySettings' default for field ``name``."""
    return default_of(DeploySettings, name)


@main.command()
@click.option(
    "--repo",
    default="model_repo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The exported model repository (the same one the cluster reads from --storage-uri).",
)
@click.option("--target", required=True, help=f"What runs it: {' or '.join(TARGETS)} (Triton's own Helm chart).")
@click.option(
    "--storage-uri",
    required=True,
    help="Where the cluster reads the repository: s3://BUCKET/PATH, gs://BUCKET/PATH or pvc://CLAIM/PATH.",
)
@click.option("--out", default="deploy", show_default=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--deployment",
    "deployments",
    multiple=True,
    help="A deployment to serve (repeatable; default: every one the repository holds).",
)
@click.option("--baseline", default=None, help="KServe canary: the deployment whose traffic is split.")
@click.option("--canary", default=None, help="KServe canary: the pruned deployment that takes --canary-percent of it.")
@click.option("--canary-percent", default=setting("canary_percent"), show_default=True)
@click.option(
    "--canary-storage-uri",
    default=None,
    help="KServe canary: where you will upload the canary repository deploy writes (the candidate's models "
    "under the baseline's names, so the canary answers the baseline's requests).",
)
@click.option("--namespace", default=setting("namespace"), show_default=True)
@click.option(
    "--release",
    default=setting("release"),
    show_default=True,
    help="Helm: the one release that serves the deployments side by side.",
)
@click.option(
    "--admin-secret",
    default=setting("admin_secret"),
    show_default=True,
    help="The Secret whose HEADPRUNE_ADMIN_KEY guards Triton's model repository API (create it first: "
    "see the README deploy writes).",
)
@click.option(
    "--image",
    default=setting("image"),
    show_default=True,
    help="Triton container (the default is the release of the server the tests run).",
)
@click.option("--min-replicas", default=setting("min_replicas"), show_default=True, help="KServe: 0 scales to zero.")
@click.option("--max-replicas", default=setting("max_replicas"), show_default=True)
@click.option(
    "--scale-metric",
    type=click.Choice(KSERVE_SCALE_METRICS),
    default=setting("scale_metric"),
    show_default=True,
    help="KServe: what the autoscaler watches.",
)
@click.option(
    "--scale-target",
    default=setting("scale_target"),
    show_default=True,
    help="KServe: the scale metric's target per replica.",
)
@click.option(
    "--queue-target-us",
    default=setting("queue_target_us"),
    show_default=True,
    help="Helm: mean queue time per request (µs) the autoscaler holds (nv_inference_queue_duration_us).",
)
@click.option(
    "--prometheus-url",
    default=setting("prometheus_url"),
    show_default=True,
    help="Helm: the Prometheus the chart's metrics adapter reads.",
)
@click.option("--cpu", default=setting("cpu"), show_default=True, help="CPU request and limit per replica.")
@click.option("--memory", default=setting("memory"), show_default=True, help="Memory request and limit per replica.")
@click.option("--gpus", default=setting("gpus"), show_default=True, help="GPUs per replica (nvidia.com/gpu).")
@click.option(
    "--protocol",
    type=click.Choice(["http", "grpc"]),
    default=setting("protocol"),
    show_default=True,
    help="KServe: the protocol its one exposed port speaks.",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--json", "as_json", is_flag=True, help="Print deployments.json's data.")
@friendly_errors
def deploy(
    repo,
    target,
    storage_uri,
    out,
    deployments,
    baseline,
    canary,
    canary_percent,
    canary_storage_uri,
    namespace,
    release,
    admin_secret,
    image,
    min_replicas,
    max_replicas,
    scale_metric,
    scale_target,
    queue_target_us,
    prometheus_url,
    cpu,
    memory,
    gpus,
    protocol,
    overwrite,
    as_json,
):
    """Write what Kubernetes runs to serve the repository's deployments with Triton: a KServe InferenceService per
    deployment (and a canary split of a baseline's traffic to a pruned candidate), or values for one release of
    Triton's Helm chart, autoscaled on queue time. Every object is checked against its schema (Kubernetes', KServe's) before --out is
    written; --out also gets README.md (the commands to run), deployments.json and descriptions/ (what `compare
    --repo` needs to measure the cluster, no weights)."""
    from serving.deploy.writer import write_deployment

    settings = DeploySettings(
        repo=repo,
        target=target,
        out=out,
        storage_uri=storage_uri,
        deployments=list(deployments),
        baseline=baseline,
        canary=canary,
        canary_percent=canary_percent,
        canary_storage_uri=canary_storage_uri,
        namespace=namespace,
        release=release,
        admin_secret=admin_secret,
        image=image,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        scale_metric=scale_metric,
        scale_target=scale_target,
        queue_target_us=queue_target_us,
        prometheus_url=prometheus_url,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        protocol=protocol,
    )
    result = write_deployment(settings, overwrite=overwrite)
    lines = [
        f"{name} -> {', '.join(entry['files'])} ({entry['service']}: {', '.join(entry['models'])})"
        for name, entry in result.manifest["deployments"].items()
    ]
    lines += [
        "checked against: " + "; ".join(result.manifest["checked_against"].values()),
        f"next: {result.out / 'README.md'}",
    ]
    emit(result.manifest, as_json, "\n".join(lines))
