"""GPU code checked without a GPU: the ONNX backend's provider choice, and the GPU speed benchmark's own logic run
on the CPU (its figures need a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import types
from importlib import resources

import pytest

from benchmarks import gpu_speed
from exporter import build_inventory
from exporter.triton.config import DeploymentOptions, classifier_config


@pytest.fixture()
def backend(monkeypatch):
    """The installed "onnxruntime" backend module, imported as Triton's stub would (its utils module is the
    stub's; only the provider choice is exercised here)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    source = resources.files("serving.server.backends.onnxruntime").joinpath("model.py")
    spec = importlib.util.spec_from_file_location("ort_backend", str(source))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_config(tensorrt: bool) -> dict:
    """Returns a GPU deployment's config as Triton hands it to the backend (JSON of the protobuf)."""
    from google.protobuf import json_format

    options = DeploymentOptions(kind="gpu", tensorrt=tensorrt)
    config = classifier_config("m", ["input_ids", "attention_mask"], 2, options, {})
    return json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True))  # as Triton passes it


@pytest.mark.parametrize(
    "available,tensorrt,expected",
    [
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            True,
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            False,
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], True, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        (["CPUExecutionProvider"], True, ["CPUExecutionProvider"]),
    ],
)
def test_gpu_instances_prefer_tensorrt_then_cuda_then_cpu_as_configured_and_available(
    backend, monkeypatch, available, tensorrt, expected
):
    monkeypatch.setattr(backend.ort, "get_available_providers", lambda: available)
    providers = backend._providers(gpu_config(tensorrt), "GPU", 3)
    assert [p if isinstance(p, str) else p[0] for p in providers] == expected
    options = {p[0]: p[1] for p in providers if not isinstance(p, str)}
    assert all(o["device_id"] == 3 for o in options.values())
    if "TensorrtExecutionProvider" in options:
        assert options["TensorrtExecutionProvider"]["trt_fp16_enable"] is True


def test_cpu_instances_use_the_cpu_even_where_a_gpu_provider_exists(backend, monkeypatch):
    monkeypatch.setattr(
        backend.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert backend._providers(gpu_config(True), "CPU", 0) == ["CPUExecutionProvider"]


def test_gpu_speed_table_logic_on_the_cpu(tmp_path):
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    result = gpu_speed.run(tmp_path / "gpu.json", "cpu", [1, 3], 8, trials=3, trial_seconds=0.05, shape=shape)
    assert json.loads((tmp_path / "gpu.json").read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert [(r["precision"], r["attention"], r["batch"]) for r in rows] == [
        ("float32", a, b) for a in ("eager", "sdpa") for b in (1, 3)
    ]
    for row in rows:
        assert row["heads"] == {"unpruned": 8, "pruned": 4}
        speeds = row["examples_per_s"]
        assert len(speeds["unpruned"]) == len(speeds["pruned"]) == 3
        ratios = [p / u for p, u in zip(speeds["pruned"], speeds["unpruned"])]
        assert row["speedup"] == pytest.approx(statistics.median(ratios))
        assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"]
        # Peak memory is taken at the largest batch only, and a CPU has no device memory to report.
        assert row["peak_mib"] == ({"unpruned": None, "pruned": None} if row["batch"] == 3 else None)
    plan = gpu_speed.half_of_every_layer(gpu_speed.bert_base(shape))
    assert all(len(heads) == 2 for layers in plan.removed.values() for heads in layers.values())
    assert build_inventory(gpu_speed.pruned_copy(gpu_speed.bert_base(shape), plan)).kept_head_count() == 4
