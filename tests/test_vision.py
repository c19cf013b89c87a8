"""Image classification (ViT): image folders and CSVs of paths, pixel inputs end to end, the served image front end
against transformers' image processor, and compare's accuracy on images through the real Triton."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.data import examples_for, read_examples
from exporter.errors import HeadpruneError
from exporter.evaluation.quality import Evaluator
from exporter.onnx.export import random_inputs
from exporter.triton.config import DeploymentOptions, read_config
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings
from serving.report.runner import run_comparison
from serving.server.process import TritonServer, free_port
from tests.helpers import client_for

PLAN = {"encoder": {0: [1, 2], 1: [0, 1, 2, 3], 2: [3]}}  # uneven, one layer headless


def image_files(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))


def test_image_folder_and_csv_give_the_same_examples(image_data, tmp_path):
    from_folder = read_examples(image_data, "image-classification")
    assert len(from_folder) == len(image_files(image_data)) and {e["label"] for e in from_folder} == {
        "negative",
        "positive",
    }
    rows = ["image,label"] + [f"{p.relative_to(image_data)},{p.parent.name}" for p in image_files(image_data)]
    (image_data / "labels.csv").write_text("\n".join(rows) + "\n")
    try:
        from_csv = read_examples(image_data / "labels.csv", "image-classification")  # paths relative to the CSV
    finally:
        (image_data / "labels.csv").unlink()
    assert sorted((e["image"], e["label"]) for e in from_csv) == sorted((e["image"], e["label"]) for e in from_folder)
    (tmp_path / "images").symlink_to(image_data)
    renamed = ["path\tclass"] + [
        f"images/{p.relative_to(image_data)}\t{p.parent.name}" for p in image_files(image_data)[:3]
    ]
    (tmp_path / "renamed.tsv").write_text("\n".join(renamed) + "\n")
    mapped = read_examples(
        tmp_path / "renamed.tsv", "image-classification", columns={"image": "path", "label": "class"}
    )
    assert [e["image"] for e in mapped] == [
        str(tmp_path / "images" / p.relative_to(image_data)) for p in image_files(image_data)[:3]
    ]


def test_unreadable_images_and_missing_files_name_the_file(vit_dir, tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "list.csv").write_text("image,label\nmissing.png,positive\n")
    model = load_model(vit_dir)
    with pytest.raises(HeadpruneError, match="broken.png"):
        Evaluator(model, load_tokenizer(vit_dir), read_examples(tmp_path, "image-classification"))
    with pytest.raises(HeadpruneError, match="missing.png"):
        examples_for(model, tmp_path / "list.csv")
    with pytest.raises(HeadpruneError, match="label 'cats'"):
        examples_for(model, tmp_path)  # the folder name is the label: the model has no 'cats'


def test_in_process_accuracy_uses_the_image_processor(vit_dir, image_data):
    model, processor = load_model(vit_dir), load_tokenizer(vit_dir)
    examples = examples_for(model, image_data)
    with torch.no_grad():
        pixels = processor([Image.open(e["image"]) for e in examples], return_tensors="pt")["pixel_values"]
        predicted = model(pixel_values=pixels).logits.argmax(-1).tolist()
    labels = [model.config.label2id[e["label"]] for e in examples]
    expected = sum(p == y for p, y in zip(predicted, labels)) / len(labels)
    assert Evaluator(model, processor, examples, batch_size=5)().value == pytest.approx(expected)
    assert 0.55 < expected < 0.95  # both classes predicted, not all correct: a wrong pipeline would show


@pytest.fixture(scope="module")
def served(vit_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    model = load_model(vit_dir)
    apply_plan(model, HeadPlan(PLAN))
    dirs = {"vit": vit_dir, "vit_pruned": save_pruned(model, load_tokenizer(vit_dir), root / "pruned", source=vit_dir)}
    for name, folder in dirs.items():
        export_to_repository(folder, root / "repo", name, options=DeploymentOptions(max_batch_size=8))
    with TritonServer(root / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as server:
        yield {"server": server, "repo": root / "repo", "dirs": dirs}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", ["vit", "vit_pruned"])
def test_served_pixels_and_images_equal_pytorch(served, protocol, name, image_data):
    client = client_for(served, protocol)
    model, processor = load_model(served["dirs"][name]), load_tokenizer(served["dirs"][name])
    session = ort.InferenceSession(str(served["repo"] / name / "1" / "model.onnx"))
    for batch in (1, 3, 8):
        feed = random_inputs(model, ["pixel_values"], batch, 0, seed=batch)
        served_logits = client.infer(name, feed, ["logits"])["logits"]
        with torch.no_grad():
            reference = model(pixel_values=torch.from_numpy(feed["pixel_values"])).logits.numpy()
        assert np.abs(served_logits - session.run(["logits"], feed)[0]).max() <= 1e-5
        assert np.abs(served_logits - reference).max() <= 1e-4
    files = image_files(image_data)[:7]
    logits, labels = client.classify_images(f"{name}_image", [p.read_bytes() for p in files])
    with torch.no_grad():
        expected = model(**processor([Image.open(p) for p in files], return_tensors="pt")).logits.numpy()
    assert np.abs(logits - expected).max() <= 1e-4
    assert labels == [model.config.id2label[i] for i in expected.argmax(-1)]


def test_a_bad_image_fails_its_request_only(served, image_data):
    client = client_for(served, "http")
    good = image_files(image_data)[0].read_bytes()
    with pytest.raises(HeadpruneError, match="IMAGE row 1 is not an image"):
        client.classify_images("vit_image", [good, b"\x89PNG\r\n\x1a\n truncated"])
    assert len(client.classify_images("vit_image", [good])[1]) == 1


def test_image_model_configs(served):
    config = read_config(served["repo"] / "vit_pruned" / "config.pbtxt")
    assert [(i.name, list(i.dims)) for i in config.input] == [("pixel_values", [3, 16, 16])]
    description = json.loads(config.parameters["deployment"].string_value)
    assert description["task"] == "image-classification" and description["heads"] == 12 - 7
    front = read_config(served["repo"] / "vit_pruned_image" / "config.pbtxt")
    assert [i.name for i in front.input] == ["IMAGE"] and [o.name for o in front.output] == ["LOGITS", "LABEL"]


@pytest.mark.slow
def test_compare_measures_accuracy_on_an_image_folder(served, image_data, tmp_path):
    settings = CompareSettings(
        repo=served["repo"],
        baseline="vit",
        candidates=["vit_pruned"],
        data=image_data,
        out=tmp_path / "report",
        url=served["server"].http_url,
        batch_sizes=[1, 4],
        concurrency=[1],
        trials=2,
        requests=6,
        examples=8,
        max_windows=1,
        warmup=1,
    )
    report = json.loads((run_comparison(settings).parent / "report.json").read_text())
    for name, folder in served["dirs"].items():
        model = load_model(folder)
        expected = Evaluator(model, load_tokenizer(folder), examples_for(model, image_data))()
        assert report["deployments"][name]["quality"]["value"] == pytest.approx(expected.value)
    assert report["deployments"]["vit"]["flops_per_example"] > report["deployments"]["vit_pruned"]["flops_per_example"]
