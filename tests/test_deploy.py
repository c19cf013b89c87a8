"""headprune deploy: KServe InferenceServices and Triton Helm values, checked with the real schemas, and their
Triton arguments run by the real server; compare measures such deployments from their descriptions alone."""

from __future__ import annotations

import copy
import json
import re
from importlib.metadata import version

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError
from exporter.triton.config import read_config
from exporter.triton.layout import ModelRepository
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings
from serving.cli import main
from serving.client import TritonClient
from serving.deploy import helm
from serving.deploy.schemas import SchemaError, check_inference_services, check_kubernetes
from serving.deploy.served import ADMIN_HEADER, model_args, served_deployment
from serving.deploy.settings import DeploySettings, Storage
from serving.deploy.writer import write_deployment
from serving.report.runner import run_comparison
from serving.server.process import TritonServer, free_port

BUCKET = "s3://models-bucket/headprune/repo"
CANARY_BUCKET = "s3://models-bucket/headprune/canary"


@pytest.fixture(scope="module")
def repo(bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    export_to_repository(bert_dir, root / "repo", "base")
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    apply_plan(model, HeadPlan({"encoder": {0: [0, 1], 1: [1, 2]}}))
    export_to_repository(save_pruned(model, tokenizer, root / "pruned", source=bert_dir), root / "repo", "base_p50")
    return root / "repo"


def settings(repo, out, **extra) -> DeploySettings:
    return DeploySettings(**({"repo": repo, "target": "kserve", "out": out, "storage_uri": BUCKET} | extra))


def documents(path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def test_kserve_writes_an_inference_service_per_deployment_and_a_canary_split(repo, tmp_path):
    result = write_deployment(
        settings(
            repo,
            tmp_path / "k",
            baseline="base",
            canary="base_p50",
            canary_percent=25,
            canary_storage_uri=CANARY_BUCKET,
            min_replicas=0,
            max_replicas=4,
            scale_metric="rps",
            scale_target=30,
            gpus=1,
        )
    )
    out = tmp_path / "k"
    (base,), (pruned,), (canary,) = (
        documents(out / "kserve" / f) for f in ("base.yaml", "base-p50.yaml", "base-canary.yaml")
    )
    for service, name, models in (
        (base, "base", ["base", "base_text"]),
        (pruned, "base-p50", ["base_p50", "base_p50_text"]),
    ):
        assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
        assert service["metadata"]["name"] == name and service["metadata"]["namespace"] == "default"
        predictor = service["spec"]["predictor"]
        assert (
            predictor["minReplicas"],
            predictor["maxReplicas"],
            predictor["scaleMetric"],
            predictor["scaleTarget"],
        ) == (0, 4, "rps", 30) and "canaryTrafficPercent" not in predictor
        model = predictor["model"]
        assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
        assert model["storageUri"] == BUCKET and model["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
        assert model["args"] == model_args(models) and model["args"][: len(models) + 1] == [
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
        ]
        assert model["env"] == [
            {
                "name": "HEADPRUNE_ADMIN_KEY",
                "valueFrom": {"secretKeyRef": {"name": "headprune-admin", "key": "HEADPRUNE_ADMIN_KEY"}},
            }
        ]
        assert model["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
        assert model["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    # The canary takes the baseline's name and its model names, so applied over it, the new revision answers the
    # requests the baseline answers: the candidate's files, renamed, from a repository of their own.
    predictor = canary["spec"]["predictor"]
    assert canary["metadata"]["name"] == "base" and predictor["canaryTrafficPercent"] == 25
    assert predictor["model"]["args"] == base["spec"]["predictor"]["model"]["args"]
    assert predictor["model"]["storageUri"] == CANARY_BUCKET
    renamed = ModelRepository(out / "canary-repository")
    assert renamed.models() == ["base", "base_text"]
    assert (renamed.version_folder("base", 1) / "model.onnx").read_bytes() == (
        repo / "base_p50" / "1" / "model.onnx"
    ).read_bytes()
    text = read_config(renamed.config_path("base_text"))
    assert text.name == "base_text" and text.parameters["classifier"].string_value == "base"
    manifest = json.loads((out / "deployments.json").read_text())
    assert manifest == result.manifest and manifest["canary"] == {
        "baseline": "base",
        "candidate": "base_p50",
        "percent": 25,
        "storage_uri": CANARY_BUCKET,
        "models": {"base_p50": "base", "base_p50_text": "base_text"},
    }
    assert manifest["deployments"]["base_p50"]["heads"] == 8 and manifest["deployments"]["base"]["heads"] == 12
    assert manifest["deployments"]["base"]["files"] == ["kserve/base.yaml", "kserve/base-canary.yaml"]
    assert "KServe SDK" in manifest["checked_against"]["InferenceService"]
    # Descriptions only: configs and deployment.json, never weights.
    described = sorted(
        p.relative_to(out / "descriptions").as_posix() for p in (out / "descriptions").rglob("*") if p.is_file()
    )
    assert described == [
        "base/1/deployment.json",
        "base/config.pbtxt",
        "base_p50/1/deployment.json",
        "base_p50/config.pbtxt",
        "base_p50_text/config.pbtxt",
        "base_text/config.pbtxt",
    ]
    readme = (out / "README.md").read_text()
    assert (
        "kubectl apply -n default -f kserve/base-canary.yaml" in readme
        and f"canary-repository {CANARY_BUCKET}" in readme
    )


def test_helm_values_fill_tritons_chart_for_one_release_and_its_objects_pass_kubernetes_schema(repo, tmp_path):
    write_deployment(
        settings(
            repo,
            tmp_path / "h",
            target="helm",
            storage_uri="pvc://model-claim/exports/repo",
            queue_target_us=200,
            max_replicas=5,
            namespace="serving",
        )
    )
    (values,) = documents(tmp_path / "h" / "helm" / "values.yaml")
    assert values["serverArgs"] == [
        "--model-repository=/models/exports/repo",
        *model_args(["base", "base_text", "base_p50", "base_p50_text"]),
    ]
    assert values["envFrom"] == [{"secretRef": {"name": "headprune-admin"}}]
    assert values["volumes"] == [
        {"name": "model-repository", "persistentVolumeClaim": {"claimName": "model-claim", "readOnly": True}}
    ]
    assert values["volumeMounts"][0]["mountPath"] == "/models"
    scaling = values["autoscaling"]
    assert (scaling["minReplicas"], scaling["maxReplicas"]) == (1, 5)
    assert scaling["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "avg_time_queue_us"},
                "target": {"type": "AverageValue", "averageValue": "200"},
            },
        }
    ]
    rule = values["prometheus-adapter"]["rules"]["custom"][0]
    assert rule["name"] == {"matches": "nv_inference_queue_duration_us", "as": "avg_time_queue_us"}
    assert 'namespace="serving"' in rule["seriesQuery"] and "nv_inference_request_success" in rule["metricsQuery"]
    s3 = helm.chart_values(
        [served_deployment(repo, "base", "base")], settings(repo, tmp_path, target="helm"), Storage.parse(BUCKET)
    )
    assert s3["serverArgs"][0] == f"--model-repository={BUCKET}" and "volumes" not in s3
    readme = (tmp_path / "h" / "README.md").read_text()
    assert "helm dependency build server/deploy/k8s-onprem" in readme
    assert "helm install headprune server/deploy/k8s-onprem -n serving -f helm/values.yaml" in readme


def test_the_schema_checks_refuse_broken_objects(repo, tmp_path):
    (service,) = documents(write_deployment(settings(repo, tmp_path / "k")).out / "kserve" / "base.yaml")
    assert check_inference_services([service]) == version("kserve")
    broken = {
        "spec.predictor.minReplica": lambda s: s["spec"]["predictor"].__setitem__("minReplica", 1),
        "spec.predictor.canaryTrafficPercent": lambda s: s["spec"]["predictor"].__setitem__(
            "canaryTrafficPercent", "9"
        ),
        "spec.predictor.model.ports[0].containerPort": lambda s: s["spec"]["predictor"]["model"]["ports"][
            0
        ].__setitem__("containerPort", "8080"),
        "spec.predictor.model.resources": lambda s: s["spec"]["predictor"]["model"]["resources"].__setitem__(
            "limit", {}
        ),
        "metadata.labels.app": lambda s: s["metadata"]["labels"].__setitem__("app", 3),
    }
    for path, breaks in broken.items():
        changed = copy.deepcopy(service)
        breaks(changed)
        with pytest.raises(SchemaError, match=re.escape(f"at {path}:")):
            check_inference_services([changed])
    deployment = served_deployment(repo, "base", "base")
    values = helm.chart_values([deployment], settings(repo, tmp_path, target="helm"), Storage.parse(BUCKET))
    objects = helm.chart_objects(values, "headprune", "default")
    assert [check_kubernetes(o) for o in objects] == ["1.30", "1.30"]
    hpa = copy.deepcopy(objects[1])
    hpa["spec"]["metrics"][0]["pod"] = hpa["spec"]["metrics"][0].pop("pods")  # a field HPA's metrics do not have
    deployment_object = copy.deepcopy(objects[0])
    deployment_object["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    for broken_object in (hpa, deployment_object):
        with pytest.raises(SchemaError, match="fails its schema at spec"):
            check_kubernetes(broken_object)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--target", "nomad"], "unknown deploy target 'nomad'"),
        (["--storage-uri", "http://example.com/repo"], "is not a model repository location"),
        (["--storage-uri", "s3://Upper/repo"], "is not a model repository location"),
        (["--storage-uri", "pvc://claim/../etc"], "is not a model repository location"),
        (["--namespace", "Team_A"], "--namespace 'Team_A' is not a Kubernetes name"),
        (["--baseline", "base", "--canary", "base_p50"], "a canary needs --canary-storage-uri"),
        (["--deployment", "missing"], "has no deployment 'missing' (it holds: base, base_p50)"),
        (["--baseline", "base"], "needs both --baseline and --canary"),
        (["--baseline", "base", "--canary", "base_p50", "--target", "helm"], "a canary split is a KServe feature"),
        (["--cpu", "two"], "--cpu 'two' is not a Kubernetes quantity"),
        (["--min-replicas", "3", "--max-replicas", "2"], "are not a range"),
    ],
)
def test_bad_input_is_named_with_its_fix_and_nothing_is_written(repo, tmp_path, arguments, message):
    defaults = {"--target": "kserve", "--storage-uri": BUCKET}
    given = dict(zip(arguments[::2], arguments[1::2]))
    options = [x for key, value in (defaults | given).items() for x in (key, value)]
    result = CliRunner().invoke(main, ["deploy", "--repo", str(repo), "--out", str(tmp_path / "d"), *options])
    assert result.exit_code == 2 and message in result.output and "fix:" in result.output, result.output
    assert not (tmp_path / "d").exists()


def test_names_that_are_not_kubernetes_names_are_refused(repo, tmp_path):
    odd = repo.parent / "odd"
    for name in ("9lives", "x" * 46):
        odd.mkdir(exist_ok=True)
        (odd / name).symlink_to((repo / "base").resolve())
        with pytest.raises(HeadpruneError, match="is not a Kubernetes name"):
            write_deployment(settings(odd, tmp_path / "d"))
        (odd / name).unlink()
    assert not (tmp_path / "d").exists()
    write_deployment(settings(repo, tmp_path / "d"))
    with pytest.raises(HeadpruneError, match="not empty|non-empty|exists"):
        write_deployment(settings(repo, tmp_path / "d"))  # an earlier deploy is kept unless --overwrite


ADMIN_KEY = "test-admin-key"


def start_from_manifest(repo, path) -> TritonServer:
    """Starts Triton on ``repo`` with the arguments of the InferenceService at ``path``, the admin key in place of
    the variable Kubernetes expands."""
    (manifest,) = documents(path)
    args = tuple(a.replace("$(HEADPRUNE_ADMIN_KEY)", ADMIN_KEY) for a in manifest["spec"]["predictor"]["model"]["args"])
    return TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), model_args=args
    ).start()


@pytest.mark.slow
def test_each_manifest_loads_its_deployment_in_triton_and_compare_measures_them_from_descriptions(
    repo, tmp_path, cls_data
):
    out = write_deployment(
        settings(repo, tmp_path / "k", baseline="base", canary="base_p50", canary_storage_uri=CANARY_BUCKET)
    ).out
    servers = {}
    try:
        for name, service in (("base", "base"), ("base_p50", "base-p50")):
            servers[name] = start_from_manifest(repo, out / "kserve" / f"{service}.yaml")
            client = httpclient.InferenceServerClient(servers[name].http_url)
            # The repository API answers only with the admin key; inference needs none.
            with pytest.raises(InferenceServerException, match="restricted|denied|[Uu]nauthorized|API"):
                client.get_model_repository_index()
            index = client.get_model_repository_index(headers={ADMIN_HEADER: ADMIN_KEY})
            client.close()
            ready = sorted(m["name"] for m in index if m.get("state") == "READY")
            assert ready == sorted(served_deployment(repo, name, service).models)
        # The canary revision answers the baseline's requests with the candidate's model.
        servers["canary"] = start_from_manifest(out / "canary-repository", out / "kserve" / "base-canary.yaml")
        texts = ["a few words here", "another short sentence", "one more"]
        answers = {}
        for name, model in (("canary", "base_text"), ("base_p50", "base_p50_text"), ("base", "base_text")):
            client = TritonClient(servers[name].http_url, "http")
            answers[name] = client.classify_text(model, texts)[0]
            client.close()
        assert np.allclose(answers["canary"], answers["base_p50"], atol=1e-6)
        assert not np.allclose(answers["canary"], answers["base"], atol=1e-3)
        # From a folder with descriptions only: no checkpoint, no ONNX file.
        assert not list((out / "descriptions").rglob("*.onnx"))
        path = run_comparison(
            CompareSettings(
                repo=out / "descriptions",
                baseline="base",
                candidates=["base_p50"],
                data=cls_data,
                out=tmp_path / "r",
                endpoints={name: servers[name].http_url for name in ("base", "base_p50")},
                batch_sizes=[1],
                concurrency=[1],
                seq_len=16,
                trials=1,
                requests=8,
                examples=8,
                max_windows=1,
                warmup=1,
            )
        )
    finally:
        for server in servers.values():
            server.stop()
    report = json.loads((path.parent / "report.json").read_text())
    assert report["complete"] and {n: d["heads"] for n, d in report["deployments"].items()} == {
        "base": 12,
        "base_p50": 8,
    }
    assert all(d["quality"]["examples"] == 64 for d in report["deployments"].values())
    assert report["signature"]["endpoints"] == {name: servers[name].http_url for name in ("base", "base_p50")}


def test_compare_endpoints_are_checked(repo, tmp_path, cls_data):
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--repo",
            str(repo),
            "--baseline",
            "base",
            "--candidate",
            "base_p50",
            "--data",
            str(cls_data),
            "--out",
            str(tmp_path / "r"),
            "--endpoint",
            "base",
        ],
    )
    assert result.exit_code == 2 and "is not NAME=HOST:PORT" in result.output
    stray = CompareSettings(
        repo=repo,
        baseline="base",
        candidates=["base_p50"],
        data=cls_data,
        out=tmp_path / "r",
        endpoints={"other": "127.0.0.1:8000"},
    )
    with pytest.raises(HeadpruneError, match="an endpoint is given for 'other', which is not compared"):
        stray.check()
