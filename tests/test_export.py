"""ONNX export and attention fusion of pruned classifiers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxruntime.transformers import optimizer

from exporter import HeadPlan, apply_plan, build_inventory, load_model, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError
from exporter.onnx.export import export_onnx, random_inputs, validate_onnx
from exporter.onnx.fusion import fused_head_counts
from exporter.onnx.quantize import argmax_agreement, quantize_int8
from exporter.triton.description import DeploymentDescription
from exporter.triton.inputs import text_feeds
from exporter.triton.repository import export_to_repository, require_same_decisions
from serving.benchmark.deployment import describe_deployment
from serving.cli import main
from tests.helpers import random_sentences

UNEVEN = {"encoder": {0: [0], 1: [0, 1, 2], 2: [0, 1, 2, 3]}}  # heads left: 3, 1, 0


@pytest.fixture(scope="module")
def uneven_dir(bert_dir, tmp_path_factory):
    model = load_model(bert_dir)
    apply_plan(model, HeadPlan(UNEVEN))
    return save_pruned(model, load_tokenizer(bert_dir), tmp_path_factory.mktemp("uneven") / "m", source=bert_dir)


def test_export_matches_pytorch_on_new_shapes_and_keeps_dynamic_axes(uneven_dir, tmp_path):
    model = load_model(uneven_dir)
    names = export_onnx(model, tmp_path / "m.onnx")
    assert not model.training
    assert validate_onnx(model, tmp_path / "m.onnx", names).max_abs_diff <= 1e-5
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"]] * len(names)


def test_optimize_fuses_each_layer_with_its_real_head_count(uneven_dir, tmp_path):
    result = export_to_repository(uneven_dir, tmp_path / "repo", "m", optimize=True)
    kept = [len(layer.kept) for layer in build_inventory(load_model(uneven_dir)).layers]
    assert kept == [3, 1, 0]
    assert fused_head_counts(result.model_path) == [3, 1] and result.fused_attention == 2
    assert result.validation.max_abs_diff <= 1e-4
    stored = json.loads((result.model_path.parent / "validation.json").read_text())
    assert stored["fused_attention"] == 2 and stored["passed"]


def test_fusing_with_the_configs_head_count_would_be_wrong(tmp_path, bert_dir):
    # Why the per-layer fusion exists: one global count silently breaks pruned layers.
    model = load_model(bert_dir)
    apply_plan(model, HeadPlan({"encoder": {1: [0, 1]}}))  # 4, 2, 4 heads of size 8
    with torch.no_grad():  # peaked attention, as in a trained model; near-uniform attention hides head splits
        for layer in build_inventory(model).layers:
            layer.module("query").weight.mul_(3)
            layer.module("key").weight.mul_(3)
    names = export_onnx(model, tmp_path / "m.onnx")
    naive = optimizer.optimize_model(
        str(tmp_path / "m.onnx"), model_type="bert", num_heads=4, hidden_size=32, opt_level=0
    )
    naive.save_model_to_file(str(tmp_path / "naive.onnx"))
    assert fused_head_counts(tmp_path / "naive.onnx")[1] != 2
    naive_diff = validate_onnx(model, tmp_path / "naive.onnx", names).max_abs_diff
    ours = export_to_repository(
        save_pruned(model, load_tokenizer(bert_dir), tmp_path / "p"), tmp_path / "repo", "m", optimize=True
    )
    assert fused_head_counts(ours.model_path) == [4, 2, 4]
    # The naive graph fails the default export check; ours is orders of magnitude closer.
    assert naive_diff > 1e-4 and naive_diff > 1000 * ours.validation.max_abs_diff


def test_optimized_model_serves_the_same_logits(uneven_dir, tmp_path):
    plain = export_to_repository(uneven_dir, tmp_path / "repo", "plain")
    fused = export_to_repository(uneven_dir, tmp_path / "repo", "fused", optimize=True)
    model = load_model(uneven_dir)
    feed = random_inputs(model, ["input_ids", "attention_mask", "token_type_ids"], 4, 17, seed=3)
    a = ort.InferenceSession(str(plain.model_path)).run(["logits"], feed)[0]
    b = ort.InferenceSession(str(fused.model_path)).run(["logits"], feed)[0]
    with torch.no_grad():
        c = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    assert np.abs(a - b).max() <= 1e-4 and np.abs(b - c).max() <= 1e-4


def test_gpu_deployment_options_generate_the_accelerator_block(bert_dir, tmp_path):
    from exporter.triton.config import DeploymentOptions, read_config

    options = DeploymentOptions(kind="gpu", tensorrt=True, instances=2, max_batch_size=32, queue_delay_us=500)
    export_to_repository(bert_dir, tmp_path / "repo", "gpu", options=options)
    config = read_config(tmp_path / "repo" / "gpu" / "config.pbtxt")
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 1)]  # KIND_GPU
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds == 500
    with pytest.raises(HeadpruneError, match="set `kind` to gpu"):
        DeploymentOptions(tensorrt=True)
    # The library names its parameters; the command line shows its own options instead.
    result = CliRunner().invoke(
        main, ["export", str(bert_dir), "--repo", str(tmp_path / "r"), "--name", "g", "--tensorrt"]
    )
    assert (
        result.exit_code == 2
        and "--tensorrt needs GPU instances" in result.output
        and "set --kind to gpu" in result.output
    )


def test_onnx_validation_fails_far_above_tolerance_on_a_wrong_model(uneven_dir, tmp_path):
    model = load_model(uneven_dir)
    names = export_onnx(model, tmp_path / "m.onnx")
    good = validate_onnx(model, tmp_path / "m.onnx", names).max_abs_diff
    assert good <= 1e-5
    for damage in ("bias", "rows", "head"):
        wrong = load_model(uneven_dir)
        layer = build_inventory(wrong).layers[0]  # 3 heads left: 1, 2, 3
        with torch.no_grad():
            if damage == "bias":
                layer.module("value").bias.zero_()
            elif damage == "rows":
                weight = layer.module("query").weight
                weight[[0, 8]] = weight[[8, 0]]
            else:  # the output projection reads another head's columns
                weight = layer.module("output").weight
                weight[:, :8] = weight[:, 8:16].clone()
        assert validate_onnx(wrong, tmp_path / "m.onnx", names).max_abs_diff > 100 * 1e-4, damage


def test_int8_export_quantizes_the_matmuls_and_stays_close_to_fp32(uneven_dir, tmp_path):
    plain = export_to_repository(uneven_dir, tmp_path / "repo", "plain")
    small = export_to_repository(uneven_dir, tmp_path / "repo", "small", precision="int8")
    operators = {
        p: {n.op_type for n in onnx.load(str(r.model_path)).graph.node} for p, r in (("fp32", plain), ("int8", small))
    }
    assert "MatMulInteger" in operators["int8"] and "MatMulInteger" not in operators["fp32"]
    assert small.quantization.passed and 0 < small.quantization.max_abs_diff <= small.quantization.atol
    assert small.validation.max_abs_diff <= 1e-4  # the FP32 graph it came from was checked as usual
    assert DeploymentDescription.read(small.model_path.parent).precision == "int8"
    assert DeploymentDescription.read(plain.model_path.parent).precision == "fp32"
    assert describe_deployment(tmp_path / "repo", "small", 16).to_dict()["precision"] == "int8"  # what reports show
    result = CliRunner().invoke(
        main, ["export", str(uneven_dir), "--repo", str(tmp_path / "repo"), "--name", "cli", "--quantize", "int8"]
    )
    assert result.exit_code == 0 and "INT8: max |INT8 - FP32|" in result.output
    as_json = CliRunner().invoke(
        main, ["export", str(uneven_dir), "--repo", str(tmp_path / "repo"), "--name", "cli", "--json"]
    )
    data = json.loads(as_json.output)
    assert (data["heads"], data["original_heads"], data["front_end"], data["version"]) == (4, 12, "cli_text", 2)
    with pytest.raises(HeadpruneError, match="precision 'int4' is unknown"):
        export_to_repository(uneven_dir, tmp_path / "repo", "bad", precision="int4")


def test_int8_export_of_a_fused_graph_quantizes_its_attention_nodes(uneven_dir, tmp_path):
    # The fused Attention node is a contrib op without an inferred output type; the quantizer used to stop on it.
    both = export_to_repository(uneven_dir, tmp_path / "repo", "both", optimize=True, precision="int8")
    operators = [n.op_type for n in onnx.load(str(both.model_path)).graph.node]
    assert operators.count("QAttention") == 2 and "Attention" not in operators
    assert both.quantization.passed and 0 < both.quantization.max_abs_diff <= both.quantization.atol
    assert both.fused_attention == 2 and both.validation.max_abs_diff <= 1e-4


def test_int8_check_refuses_a_graph_too_far_from_fp32_and_keeps_the_fp32_graph(uneven_dir, tmp_path):
    model = load_model(uneven_dir)
    names = export_onnx(model, tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    validation = quantize_int8(model, tmp_path / "m.onnx", names, relative_tolerance=1e-6)
    assert not validation.passed and validation.max_abs_diff > validation.atol > 0
    assert (tmp_path / "m.onnx").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_int8_check_demands_the_fp32_decisions_on_real_texts(uneven_dir, bert_dir, tmp_path):
    texts = random_sentences(64, seed=8)
    result = export_to_repository(uneven_dir, tmp_path / "repo", "checked", precision="int8", validation_texts=texts)
    check = result.quantization
    assert check.texts == 64 and check.agreement is not None and check.agreement >= check.min_agreement
    assert (
        json.loads((result.model_path.parent / "validation.json").read_text())["quantization"]["agreement"]
        == check.agreement
    )
    # A demand no graph meets: the same check refuses it and leaves nothing behind.
    model = load_model(uneven_dir)
    names = export_onnx(model, tmp_path / "m.onnx")
    tokenizer = load_tokenizer(uneven_dir)
    feeds = text_feeds(tokenizer, texts, names, 64)
    # The agreement counts real disagreements: the pruned graph against the unpruned one decides otherwise sometimes.
    export_onnx(load_model(bert_dir), tmp_path / "unpruned.onnx")
    assert argmax_agreement(tmp_path / "m.onnx", tmp_path / "m.onnx", feeds) == 1.0
    assert argmax_agreement(tmp_path / "m.onnx", tmp_path / "unpruned.onnx", feeds) < 1.0
    refused = quantize_int8(model, tmp_path / "m.onnx", names, feeds=feeds, min_agreement=1.01)
    assert not refused.passed and refused.max_abs_diff <= refused.atol
    with pytest.raises(HeadpruneError, match="predicts another class"):
        require_same_decisions(refused)


def test_int8_weights_use_seven_bits_where_the_cpu_lacks_dot_products(uneven_dir, tmp_path):
    model = load_model(uneven_dir)
    ranges = {}
    for reduce in (False, True):
        path = tmp_path / f"{reduce}.onnx"
        names = export_onnx(model, path)
        assert quantize_int8(model, path, names, reduce_range=reduce).reduce_range is reduce
        weights = [
            onnx.numpy_helper.to_array(t)
            for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")
        ]
        ranges[reduce] = max(int(np.abs(w.astype(int)).max()) for w in weights)
    assert ranges[True] <= 64 < ranges[False]
