"""headprune deploy: KServe InferenceServices and Triton Helm values, checked with the real schemas, and their
Triton arguments run by the real server; compare measures such deployments from their descriptions alone."""

from __future__ import annotations

import copy
import json
import re
from importlib.metadata import version

import pytest
import yaml
from click.testing import CliRunner

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings
from serving.cli import main
from serving.client import TritonClient
from serving.deploy import helm
from serving.deploy.schemas import SchemaError, check_inference_services, check_kubernetes
from serving.deploy.served import served_deployment
from serving.deploy.settings import DeploySettings, Storage
from serving.deploy.writer import write_deployment
from serving.report.runner import run_comparison
from serving.server.process import TritonServer, free_port

BUCKET = "s3://models-bucket/headprune/repo"


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
    result = write_deployment(settings(repo, tmp_path / "k", baseline="base", canary="base_p50", canary_percent=25,
                                       min_replicas=0, max_replicas=4, scale_metric="rps", scale_target=30, gpus=1))
    out = tmp_path / "k"
    (base,), (pruned,), (canary,) = (documents(out / "kserve" / f) for f in ("base.yaml", "base-p50.yaml",
                                                                               "base-canary.yaml"))
    for service, name, models in ((base, "base", ["base", "base_text"]), (pruned, "base-p50", ["base_p50", "base_p50_text"])):
        assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
        assert service["metadata"]["name"] == name and service["metadata"]["namespace"] == "default"
        predictor = service["spec"]["predictor"]
        assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) \
            == (0, 4, "rps", 30) and "canaryTrafficPercent" not in predictor
        model = predictor["model"]
        assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
        assert model["storageUri"] == BUCKET and model["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
        assert model["args"] == ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
        assert model["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
        assert model["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    # The canary takes the baseline's name, so applied over it, KServe splits that service's traffic.
    assert canary["metadata"]["name"] == "base" and canary["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert canary["spec"]["predictor"]["model"]["args"] == pruned["spec"]["predictor"]["model"]["args"]
    manifest = json.loads((out / "deployments.json").read_text())
    assert manifest == result.manifest and manifest["canary"] == {"baseline": "base", "candidate": "base_p50", "percent": 25}
    assert manifest["deployments"]["base_p50"]["heads"] == 8 and manifest["deployments"]["base"]["heads"] == 12
    assert manifest["deployments"]["base"]["files"] == ["kserve/base.yaml", "kserve/base-canary.yaml"]
    assert "KServe SDK" in manifest["checked_against"]["InferenceService"]
    # Descriptions only: configs and deployment.json, never weights.
    described = sorted(p.relative_to(out / "descriptions").as_posix() for p in (out / "descriptions").rglob("*")
                       if p.is_file())
    assert described == ["base/1/deployment.json", "base/config.pbtxt", "base_p50/1/deployment.json",
                         "base_p50/config.pbtxt", "base_p50_text/config.pbtxt", "base_text/config.pbtxt"]
    assert "kubectl apply -f kserve/base-canary.yaml" in (out / "README.md").read_text()


def test_helm_values_fill_tritons_chart_and_its_objects_pass_kubernetes_schema(repo, tmp_path):
    write_deployment(settings(repo, tmp_path / "h", target="helm", storage_uri="pvc://model-claim/exports/repo",
                              queue_target_us=200, max_replicas=5, namespace="serving"))
    (values,) = documents(tmp_path / "h" / "helm" / "base-p50" / "values.yaml")
    assert values["serverArgs"] == ["--model-repository=/models/exports/repo", "--model-control-mode=explicit",
                                    "--load-model=base_p50", "--load-model=base_p50_text"]
    assert values["volumes"] == [{"name": "model-repository",
                                  "persistentVolumeClaim": {"claimName": "model-claim", "readOnly": True}}]
    assert values["volumeMounts"][0]["mountPath"] == "/models" and values["image"]["numGpus"] == 0
    scaling = values["autoscaling"]
    assert (scaling["minReplicas"], scaling["maxReplicas"]) == (1, 5)
    assert scaling["metrics"] == [{"type": "Pods", "pods": {"metric": {"name": "avg_time_queue_us"},
                                                            "target": {"type": "AverageValue", "averageValue": "200"}}}]
    rule = values["prometheus-adapter"]["rules"]["custom"][0]
    assert rule["name"] == {"matches": "nv_inference_queue_duration_us", "as": "avg_time_queue_us"}
    assert 'namespace="serving"' in rule["seriesQuery"] and "nv_inference_request_success" in rule["metricsQuery"]
    s3 = helm.chart_values(served_deployment(repo, "base", "base"), settings(repo, tmp_path, target="helm"),
                           Storage.parse(BUCKET))
    assert s3["serverArgs"][0] == f"--model-repository={BUCKET}" and "volumes" not in s3


def test_the_schema_checks_refuse_broken_objects(repo, tmp_path):
    (service,) = documents(write_deployment(settings(repo, tmp_path / "k")).out / "kserve" / "base.yaml")
    assert check_inference_services([service]) == version("kserve")
    broken = {
        "spec.predictor.minReplica": lambda s: s["spec"]["predictor"].__setitem__("minReplica", 1),
        "spec.predictor.canaryTrafficPercent": lambda s: s["spec"]["predictor"].__setitem__("canaryTrafficPercent", "9"),
        "spec.predictor.model.ports[0].containerPort": lambda s: s["spec"]["predictor"]["model"]["ports"][0].__setitem__(
            "containerPort", "8080"),
        "spec.predictor.model.resources": lambda s: s["spec"]["predictor"]["model"]["resources"].__setitem__("limit", {}),
        "metadata.labels.app": lambda s: s["metadata"]["labels"].__setitem__("app", 3),
    }
    for path, breaks in broken.items():
        changed = copy.deepcopy(service)
        breaks(changed)
        with pytest.raises(SchemaError, match=re.escape(f"at {path}:")):
            check_inference_services([changed])
    deployment = served_deployment(repo, "base", "base")
    values = helm.chart_values(deployment, settings(repo, tmp_path, target="helm"), Storage.parse(BUCKET))
    objects = helm.chart_objects(values, "base", "default", deployment)
    assert [check_kubernetes(o) for o in objects] == ["1.30", "1.30"]
    hpa = copy.deepcopy(objects[1])
    hpa["spec"]["metrics"][0]["pod"] = hpa["spec"]["metrics"][0].pop("pods")  # a field HPA's metrics do not have
    deployment_object = copy.deepcopy(objects[0])
    deployment_object["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    for broken_object in (hpa, deployment_object):
        with pytest.raises(SchemaError, match="fails its schema at spec"):
            check_kubernetes(broken_object)


@pytest.mark.parametrize("arguments, message", [
    (["--target", "nomad"], "unknown deploy target 'nomad'"),
    (["--storage-uri", "http://example.com/repo"], "is not a model repository location"),
    (["--storage-uri", "s3://Upper/repo"], "is not a model repository location"),
    (["--storage-uri", "pvc://claim/../etc"], "is not a model repository location"),
    (["--namespace", "Team_A"], "is not a Kubernetes namespace name"),
    (["--deployment", "missing"], "has no deployment 'missing' (it holds: base, base_p50)"),
    (["--baseline", "base"], "needs both --baseline and --canary"),
    (["--baseline", "base", "--canary", "base_p50", "--target", "helm"], "a canary split is a KServe feature"),
    (["--cpu", "two"], "--cpu 'two' is not a Kubernetes quantity"),
    (["--min-replicas", "3", "--max-replicas", "2"], "are not a range"),
])
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


@pytest.mark.slow
def test_each_manifest_loads_its_deployment_in_triton_and_compare_measures_them_from_descriptions(
        repo, tmp_path, cls_data):
    out = write_deployment(settings(repo, tmp_path / "k")).out
    servers, endpoints = [], {}
    try:
        for name, service in (("base", "base"), ("base_p50", "base-p50")):
            (manifest,) = documents(out / "kserve" / f"{service}.yaml")
            args = tuple(manifest["spec"]["predictor"]["model"]["args"])
            server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                  model_args=args).start()
            servers.append(server)
            endpoints[name] = server.http_url
            client = TritonClient(server.http_url, "http")
            ready = sorted(m["name"] for m in client.models() if m.get("state") == "READY")
            client.close()
            assert ready == sorted(a.removeprefix("--load-model=") for a in args if a.startswith("--load-model="))
        # From a folder with descriptions only: no checkpoint, no ONNX file.
        assert not list((out / "descriptions").rglob("*.onnx"))
        path = run_comparison(CompareSettings(
            repo=out / "descriptions", baseline="base", candidates=["base_p50"], data=cls_data, out=tmp_path / "r",
            endpoints=endpoints, batch_sizes=[1], concurrency=[1], seq_len=16, trials=1, requests=8, examples=8,
            max_windows=1, warmup=1))
    finally:
        for server in servers:
            server.stop()
    report = json.loads((path.parent / "report.json").read_text())
    assert report["complete"] and {n: d["heads"] for n, d in report["deployments"].items()} == {"base": 12, "base_p50": 8}
    assert all(d["quality"]["examples"] == 64 for d in report["deployments"].values())
    assert (path.parent / "report.html").is_file()
