"""Export to a Triton repository and serve it with the real Triton Inference Server."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError
from exporter.onnx_export import random_inputs
from exporter.triton_config import DeploymentOptions, read_config
from exporter.triton_repo import export_to_repository, staging_area
from serving.client import PROTOCOLS, TritonClient
from serving.server import TritonServer, free_port

TEXTS = ["the movie was great fun", "a really dull and boring plot", "el pelicula es muy buena"]


@pytest.fixture(scope="module")
def deployment(bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    model = load_model(bert_dir)
    apply_plan(model, HeadPlan({"encoder": {0: [1, 2], 1: [0, 1, 2, 3], 2: [3]}}))
    save_pruned(model, load_tokenizer(bert_dir), root / "pruned", source=bert_dir)
    repo = root / "repo"
    options = DeploymentOptions(max_batch_size=8)
    export_to_repository(bert_dir, repo, "base", options=options)
    export_to_repository(root / "pruned", repo, "pruned", options=options)
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with server:
        yield {"server": server, "repo": repo, "dirs": {"base": bert_dir, "pruned": root / "pruned"}}


def listening_addresses(port: int) -> set[str]:
    """Returns the local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                # /proc writes addresses as little-endian 32-bit words.
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
                if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":
                    raw = raw[12:]  # IPv4-mapped IPv6
                addresses.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw))
    return addresses


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["base", "pruned"])
def test_served_outputs_equal_onnxruntime_and_pytorch(deployment, protocol, name):
    server = deployment["server"]
    client = TritonClient(server.http_url if protocol == "http" else server.grpc_url, protocol)
    model = load_model(deployment["dirs"][name])
    names = [i["name"] for i in client.config(name)["input"]]
    session = ort.InferenceSession(str(deployment["repo"] / name / "1" / "model.onnx"))
    for batch, seq in ((1, 4), (3, 11), (8, 20)):
        feed = random_inputs(model, names, batch, seq, seed=batch)
        served = client.infer(name, feed, ["logits"])["logits"]
        local = session.run(["logits"], feed)[0]
        with torch.no_grad():
            reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        assert np.abs(served - local).max() <= 1e-5
        assert np.abs(served - reference).max() <= 1e-4


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_text_ensemble_matches_tokenising_in_python(deployment, protocol):
    server = deployment["server"]
    client = TritonClient(server.http_url if protocol == "http" else server.grpc_url, protocol)
    for name, folder in deployment["dirs"].items():
        logits, labels = client.classify_text(f"{name}_text", TEXTS)
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        with torch.no_grad():
            expected = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.numpy()
        assert np.abs(logits - expected).max() <= 1e-4
        assert labels == [model.config.id2label[i] for i in expected.argmax(-1)]


def bad_requests():
    ids = np.ones((2, 5), dtype=np.int64)
    return [
        ("base", {"input_ids": ids.astype(np.float32), "attention_mask": ids, "token_type_ids": ids}, "FP32"),
        ("base", {"input_ids": ids[None], "attention_mask": ids[None], "token_type_ids": ids[None]}, "shape"),
        ("base", {n: np.ones((9, 5), dtype=np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")}, "batch"),
        ("base", {"input_ids": -ids, "attention_mask": ids, "token_type_ids": ids}, "input_ids must lie"),
        ("base_text", {"TEXT": np.array([[b""]], dtype=object)}, "empty"),
        ("base_text", {"TEXT": np.array([[b"caf\xe9 \xff"]], dtype=object)}, "UTF-8"),
        ("missing", {"input_ids": ids}, "no ready model"),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_requests_get_errors_and_the_server_keeps_serving(deployment, protocol):
    server = deployment["server"]
    client = TritonClient(server.http_url if protocol == "http" else server.grpc_url, protocol)
    for model, arrays, message in bad_requests():
        outputs = ["LOGITS"] if model.endswith("_text") else ["logits"]
        with pytest.raises(HeadpruneError) as raised:
            client.infer(model, arrays, outputs)
        assert message.lower() in str(raised.value).lower(), (model, message, str(raised.value))
        logits, _ = client.classify_text("base_text", TEXTS[:1])
        assert logits.shape == (1, 2)


def test_server_listens_on_loopback_only_and_refuses_model_control(deployment):
    server = deployment["server"]
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        assert listening_addresses(port) == {"127.0.0.1"}
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException):
        httpclient.InferenceServerClient(server.http_url).unload_model("base")


def test_every_generated_config_parses_with_tritons_schema(deployment):
    configs = {p.parent.name: read_config(p) for p in deployment["repo"].glob("*/config.pbtxt")}
    assert set(configs) == {f"{n}{s}" for n in ("base", "pruned") for s in ("", "_text")}
    pruned = configs["pruned"]
    assert pruned.backend == "onnxruntime" and pruned.max_batch_size == 8
    assert [i.name for i in pruned.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(pruned.input[0].dims) == [-1] and list(pruned.output[0].dims) == [2]
    assert pruned.dynamic_batching.max_queue_delay_microseconds == 100
    assert HeadPlan.from_dict(json.loads(pruned.parameters["head_plan"].string_value)).count() == 7
    text = configs["pruned_text"]
    assert text.backend == "python" and text.parameters["classifier"].string_value == "pruned"
    assert [o.name for o in text.output] == ["LOGITS", "LABEL"]


def test_stopping_leaves_no_process(bert_dir, tmp_path):
    export_to_repository(bert_dir, tmp_path / "repo", "m")
    server = TritonServer(tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with server:
        group = server.process.pid
        assert TritonClient(server.http_url).is_ready()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)


def test_taken_port_and_broken_model_are_reported(bert_dir, tmp_path):
    export_to_repository(bert_dir, tmp_path / "repo", "good")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(HeadpruneError, match=f"port {port} on 127.0.0.1 is taken"):
            TritonServer(tmp_path / "repo", http_port=port, grpc_port=free_port(), metrics_port=free_port()).start()
    (tmp_path / "repo" / "good" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = TritonServer(tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with pytest.raises(HeadpruneError, match="model 'good'"):
        server.start()
    assert server.process.poll() is not None


def test_failed_export_writes_nothing(bert_dir, tmp_path):
    with pytest.raises(HeadpruneError, match="tolerance"):
        export_to_repository(bert_dir, tmp_path / "repo", "strict", atol=0.0)
    # Triton would try to load any folder in the repository, hidden ones too.
    assert list((tmp_path / "repo").iterdir()) == []
    assert list(staging_area(tmp_path / "repo").iterdir()) == []
    first = export_to_repository(bert_dir, tmp_path / "repo", "m")
    with pytest.raises(HeadpruneError):
        export_to_repository(bert_dir, tmp_path / "repo", "m", atol=0.0)
    assert sorted(p.name for p in (tmp_path / "repo" / "m").iterdir()) == ["1", "config.pbtxt"]
    assert first.version == 1 and export_to_repository(bert_dir, tmp_path / "repo", "m").version == 2
    replaced = export_to_repository(bert_dir, tmp_path / "repo", "m", version=1)
    assert replaced.version == 1 and replaced.model_path.exists()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m", "m_text"]
    assert list(staging_area(tmp_path / "repo").iterdir()) == []
