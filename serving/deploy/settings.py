"""What a Kubernetes deployment of a model repository is made of, checked before anything is written."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from exporter.errors import HeadpruneError

TARGETS = ("kserve", "helm")
# The NGC container of the Triton release the embedded server is (tritonserver 2.51.0): what the tests served.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
KSERVE_SCALE_METRICS = ("concurrency", "rps", "cpu", "memory")
KUBERNETES_VERSION = "1.30"

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?")
_BUCKET = r"(?P<holder>[a-z0-9][a-z0-9._-]{1,61}[a-z0-9])"
_CLAIM = r"(?P<holder>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
_PATH = r"(?P<path>/[^\s]*)?"
_STORAGE = {
    "s3": re.compile(f"s3://{_BUCKET}{_PATH}"),
    "gs": re.compile(f"gs://{_BUCKET}{_PATH}"),
    "pvc": re.compile(f"pvc://{_CLAIM}{_PATH}"),
}
# KServe serves an InferenceService at the host '<name>-predictor-<namespace>.<domain>', whose first label must
# stay within 63 characters; Helm release names are limited to 53.
KSERVE_HOST_SUFFIX = "-predictor-"
HELM_NAME_LIMIT = 53


@dataclass(frozen=True)
class Storage:
    """Where the cluster reads the model repository: ``scheme`` (s3, gs or pvc), bucket or claim, path inside."""

    uri: str
    scheme: str
    holder: str
    path: str

    @classmethod
    def parse(cls, uri: str) -> Storage:
        """Returns the parsed storage URI; raises HeadpruneError naming what is wrong with it."""
        uri = uri.rstrip("/")
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        pattern = _STORAGE.get(scheme)
        match = pattern.fullmatch(uri) if pattern else None
        if match is None or ".." in uri.split("/"):
            raise HeadpruneError(
                f"--storage-uri {uri!r} is not a model repository location KServe and Triton read",
                "give s3://BUCKET/PATH, gs://BUCKET/PATH or pvc://CLAIM/PATH (lower-case bucket or "
                "claim name, no '..'), where the repository was uploaded",
            )
        return cls(uri, scheme, match.group("holder"), (match.group("path") or "").strip("/"))


def is_dns_label(value: str, limit: int) -> bool:
    """Returns True when ``value`` is a DNS-1035 label (what Kubernetes names are) of at most ``limit`` characters."""
    return bool(_DNS_LABEL.fullmatch(value)) and len(value) <= limit


def kubernetes_name(deployment: str, limit: int) -> str:
    """Returns the Kubernetes name of deployment ``deployment`` (lower case, '-' for '_' and '.'); raises
    HeadpruneError when that is not a DNS-1035 label of at most ``limit`` characters."""
    name = re.sub(r"[_.]", "-", deployment.lower())
    if not is_dns_label(name, limit):
        raise HeadpruneError(
            f"deployment {deployment!r} becomes {name!r}, which is not a Kubernetes name (a DNS-1035 "
            f"label: a letter, then letters, digits and '-', at most {limit} characters)",
            "re-export the model under a shorter name that starts with a letter",
        )
    return name


def check_quantity(option: str, value: str) -> str:
    """Returns ``value`` if it is a Kubernetes resource quantity; raises HeadpruneError naming ``option``."""
    if not _QUANTITY.fullmatch(value):
        raise HeadpruneError(f"{option} {value!r} is not a Kubernetes quantity", f"give e.g. {option} 2, 500m or 4Gi")
    return value


@dataclass(frozen=True)
class DeploySettings:
    """Everything ``headprune deploy`` writes from: the repository, the target, where the cluster reads the
    repository, which deployments (all by default), a canary split, scaling and resources."""

    repo: Path
    target: str
    out: Path
    storage_uri: str
    deployments: list[str] = field(default_factory=list)
    baseline: str | None = None
    canary: str | None = None
    canary_percent: int = 10
    canary_storage_uri: str | None = None
    namespace: str = "default"
    release: str = "headprune"
    admin_secret: str = "headprune-admin"
    image: str = TRITON_IMAGE
    min_replicas: int = 1
    max_replicas: int = 3
    scale_metric: str = "concurrency"
    scale_target: int = 4
    queue_target_us: int = 50
    prometheus_url: str = "http://prometheus-operated.monitoring.svc"
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0
    protocol: str = "http"

    @property
    def name_limit(self) -> int:
        """Returns the longest Kubernetes name a deployment may get on this target and namespace."""
        if self.target == "kserve":
            return 63 - len(KSERVE_HOST_SUFFIX) - len(self.namespace)
        return HELM_NAME_LIMIT

    def check(self) -> Storage:
        """Returns the parsed storage URI; raises HeadpruneError for any setting that cannot work."""
        if self.target not in TARGETS:
            raise HeadpruneError(f"unknown deploy target {self.target!r}", f"choose one of {', '.join(TARGETS)}")
        storage = Storage.parse(self.storage_uri)
        for option, value, limit in (
            ("--namespace", self.namespace, 63),
            ("--admin-secret", self.admin_secret, 63),
            ("--release", self.release, HELM_NAME_LIMIT),
        ):
            if not is_dns_label(value, limit):
                raise HeadpruneError(
                    f"{option} {value!r} is not a Kubernetes name",
                    f"use lower-case letters, digits and '-', starting with a letter (at most {limit})",
                )
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise HeadpruneError(
                f"replicas {self.min_replicas}..{self.max_replicas} are not a range",
                "give 0 <= --min-replicas <= --max-replicas, and --max-replicas >= 1",
            )
        if self.scale_metric not in KSERVE_SCALE_METRICS:
            raise HeadpruneError(
                f"--scale-metric {self.scale_metric!r} is not one KServe scales on",
                f"choose one of {', '.join(KSERVE_SCALE_METRICS)}",
            )
        if self.scale_target < 1 or self.queue_target_us < 1 or self.gpus < 0:
            raise HeadpruneError(
                "--scale-target and --queue-target-us must be >= 1 and --gpus >= 0", "give larger values"
            )
        check_quantity("--cpu", self.cpu)
        check_quantity("--memory", self.memory)
        if not self.image or any(c.isspace() for c in self.image):
            raise HeadpruneError(
                f"--image {self.image!r} is not a container image reference", f"give e.g. {TRITON_IMAGE}"
            )
        self._check_canary(storage)
        return storage

    def _check_canary(self, storage: Storage) -> None:
        if (self.baseline is None) != (self.canary is None):
            raise HeadpruneError("a canary split needs both --baseline and --canary", "give both, or neither")
        if self.canary is not None:
            if self.target != "kserve":
                raise HeadpruneError("a canary split is a KServe feature", "use --target kserve, or drop --canary")
            if self.canary == self.baseline:
                raise HeadpruneError("--canary names the baseline itself", "name the pruned candidate")
            if not 1 <= self.canary_percent <= 99:
                raise HeadpruneError(
                    f"--canary-percent {self.canary_percent} is not a traffic share",
                    "give 1 to 99 (the candidate's share; the baseline keeps the rest)",
                )
            # The canary revision answers the baseline's requests, so it serves the candidate under the baseline's
            # model names: a repository of its own, which deploy writes and the user uploads.
            if not self.canary_storage_uri or Storage.parse(self.canary_storage_uri).uri == storage.uri:
                raise HeadpruneError(
                    "a canary needs --canary-storage-uri, a location other than --storage-uri",
                    f"give where you will upload the canary repository deploy writes (e.g. {storage.uri}-canary)",
                )
