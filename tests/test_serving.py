"""Export to a Triton repository and serve it with the real Triton Inference Server."""

from __future__ import annotations

import os
import socket

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError
from exporter.onnx.export import random_inputs
from exporter.triton.config import DeploymentOptions, read_config, write_config
from exporter.triton.description import DeploymentDescription
from exporter.triton.layout import ModelRepository
from exporter.triton.repository import export_to_repository
from serving.client import PROTOCOLS, TritonClient
from serving.server.process import TritonServer, free_port
from tests.helpers import WORDS, call_together

VOCAB = len(WORDS) + 5  # the tiny BERT's vocabulary: 5 special tokens, then WORDS

TEXTS = ["the movie was great fun", "a really dull and boring plot", "el pelicula es muy buena"]
PAIRS = ["a very long and slow story about the actor", "fun", "la pelicula fue mala"]
# Long enough that concurrently sent requests wait for each other in Triton's dynamic batcher.
BATCHING = DeploymentOptions(max_batch_size=8, queue_delay_us=200_000, max_length=12)


@pytest.fixture(scope="module")
def deployment(bert_dir, distilbert_dir, mpnet_dir, deberta_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    plan = HeadPlan({"encoder": {0: [1, 2], 1: [0, 1, 2, 3], 2: [3]}})  # uneven, one layer headless
    families = (("pruned", bert_dir), ("distilbert", distilbert_dir), ("mpnet", mpnet_dir), ("deberta", deberta_dir))
    for name, source in families:
        model = load_model(source)
        apply_plan(model, plan)
        save_pruned(model, load_tokenizer(source), root / name, source=source)
    repo = root / "repo"
    options = DeploymentOptions(max_batch_size=8)
    export_to_repository(bert_dir, repo, "base", options=options)
    export_to_repository(root / "pruned", repo, "pruned", options=options)
    for name in ("distilbert", "mpnet", "deberta"):
        export_to_repository(root / name, repo, name, options=options)
    export_to_repository(bert_dir, repo, "batched", options=BATCHING)
    export_to_repository(bert_dir, repo, "legacy", options=BATCHING)
    legacy = read_config(repo / "legacy" / "config.pbtxt")
    del legacy.parameters["input_ranges"]  # as exported before the parameter existed: vocab_size only
    write_config(legacy, repo / "legacy")
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with server:
        yield {
            "server": server,
            "repo": repo,
            "dirs": {"base": bert_dir, **{name: root / name for name, _ in families}},
        }


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
                raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
                if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":
                    raw = raw[12:]  # IPv4-mapped IPv6
                addresses.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw))
    return addresses


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["base", "pruned", "distilbert", "mpnet", "deberta"])
def test_served_outputs_equal_onnxruntime_and_pytorch(deployment, protocol, name):
    server = deployment["server"]
    client = TritonClient(server.url(protocol), protocol)
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


def test_the_served_check_fails_far_above_tolerance_on_a_wrong_model_or_input(deployment):
    server = deployment["server"]
    client = TritonClient(server.http_url)
    model = load_model(deployment["dirs"]["pruned"])
    names = [i["name"] for i in client.config("pruned")["input"]]
    feed = random_inputs(model, names, 4, 20, seed=5)
    feed["attention_mask"][:] = 1
    served = client.infer("pruned", feed, ["logits"])["logits"]

    def reference(m, arrays):
        with torch.no_grad():
            return m(**{k: torch.from_numpy(v) for k, v in arrays.items()}).logits.numpy()

    assert np.abs(served - reference(model, feed)).max() <= 1e-4
    truncated = {k: v[:, :4] for k, v in feed.items()}
    assert np.abs(served - reference(model, truncated)).max() > 100 * 1e-4
    swapped = load_model(deployment["dirs"]["pruned"])
    with torch.no_grad():
        weight = swapped.bert.encoder.layer[0].attention.self.value.weight
        weight[[0, 9]] = weight[[9, 0]]
    assert np.abs(served - reference(swapped, feed)).max() > 100 * 1e-4


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_text_ensemble_matches_tokenising_in_python(deployment, protocol):
    server = deployment["server"]
    client = TritonClient(server.url(protocol), protocol)
    for name, folder in deployment["dirs"].items():
        logits, labels = client.classify_text(f"{name}_text", TEXTS)
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        with torch.no_grad():
            expected = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.numpy()
        assert np.abs(logits - expected).max() <= 1e-4
        assert labels == [model.config.id2label[i] for i in expected.argmax(-1)]


def strings(*values) -> np.ndarray:
    """Returns a [rows, 1] BYTES array, the shape of a text model's string inputs."""
    return np.array([[v.encode() if isinstance(v, str) else v] for v in values], dtype=object)


def tensors(ids=1, mask=1, types=0, shape=(2, 5)) -> dict[str, np.ndarray]:
    """Returns the classifier's three int64 inputs, each filled with one value."""
    return {
        name: np.full(shape, value, dtype=np.int64)
        for name, value in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", types))
    }


def bad_requests():
    ids = np.ones((2, 5), dtype=np.int64)
    return [
        ("base", {"input_ids": ids.astype(np.float32), "attention_mask": ids, "token_type_ids": ids}, "FP32"),
        ("base", {"input_ids": ids[None], "attention_mask": ids[None], "token_type_ids": ids[None]}, "shape"),
        (
            "base",
            {n: np.ones((9, 5), dtype=np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")},
            "batch",
        ),
        ("base", tensors(ids=-1), f"input_ids must lie in [0, {VOCAB}); received -1"),
        ("base", tensors(ids=VOCAB), f"input_ids must lie in [0, {VOCAB}); received {VOCAB}"),
        ("base", tensors(types=-1), "token_type_ids must lie in [0, 2); received -1"),
        ("base", tensors(types=2), "token_type_ids must lie in [0, 2); received 2"),
        ("base", tensors(mask=2), "attention_mask must lie in [0, 2); received 2"),
        ("base", tensors(mask=-1), "attention_mask must lie in [0, 2); received -1"),
        ("base", tensors(shape=(2, 0)), "input 'input_ids' holds no tokens"),
        (
            "base",
            tensors(shape=(1, 65)),
            "input 'input_ids' holds 65 tokens per row, more than the model's 64 positions",
        ),
        # MPNet numbers positions from padding_idx + 1: 63 of its 64 positions hold tokens.
        (
            "mpnet",
            {k: v for k, v in tensors(shape=(1, 64)).items() if k != "token_type_ids"},
            "holds 64 tokens per row, more than the model's 63 positions",
        ),
        ("base_text", {"TEXT": strings("")}, "TEXT row 0 must not be empty"),
        ("base_text", {"TEXT": strings("fun", b"caf\xe9 \xff")}, "TEXT row 1 must be UTF-8"),
        ("base_text", {"TEXT": strings("fun"), "TEXT_PAIR": strings(" ")}, "TEXT_PAIR row 0 must not be empty"),
        ("base_text", {"TEXT": strings("fun", "bad"), "TEXT_PAIR": strings("good")}, "batch size"),
        ("missing", {"input_ids": ids}, "no ready model"),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_requests_get_errors_and_the_server_keeps_serving(deployment, protocol):
    server = deployment["server"]
    client = TritonClient(server.url(protocol), protocol)
    for model, arrays, message in bad_requests():
        outputs = ["LOGITS"] if model.endswith("_text") else ["logits"]
        with pytest.raises(HeadpruneError) as raised:
            client.infer(model, arrays, outputs)
        assert message.lower() in str(raised.value).lower(), (model, message, str(raised.value))
        logits, _ = client.classify_text("base_text", TEXTS[:1])
        assert logits.shape == (1, 2)


def test_pairs_must_match_texts_before_anything_is_sent():
    with pytest.raises(HeadpruneError, match="1 text pairs were given for 2 texts"):
        TritonClient("127.0.0.1:1").classify_text("base_text", TEXTS[:2], PAIRS[:1])


def infer_together(server, model: str, requests: list[dict], outputs: list[str]) -> tuple[list, int]:
    """Sends ``requests`` at once from threads, alternating HTTP and gRPC; returns (each one's outputs or
    HeadpruneError, how many executions Triton ran for them)."""
    before = executions(server, model)
    # Each thread makes its own client: the HTTP client works only in the thread that made it.
    results = call_together(
        lambda i: TritonClient(server.url(PROTOCOLS[i % 2]), PROTOCOLS[i % 2]).infer(model, requests[i], outputs),
        len(requests),
    )
    return results, executions(server, model) - before


def executions(server, model: str) -> int:
    """Returns how many times Triton has executed ``model`` (one execution may serve many requests)."""
    (stats,) = [s for s in TritonClient(server.http_url).statistics(model)["model_stats"] if s["name"] == model]
    return int(stats["execution_count"])


@pytest.mark.parametrize("name", ["batched", "legacy"])
def test_one_bad_request_never_fails_the_others_in_its_batch(deployment, name):
    # "legacy" has no input_ranges: token_type_ids=2 then fails inside ONNX Runtime, for the whole batch.
    model = load_model(deployment["dirs"]["base"])
    session = ort.InferenceSession(str(deployment["repo"] / name / "1" / "model.onnx"))
    good = [
        random_inputs(model, ["input_ids", "attention_mask", "token_type_ids"], batch, 7, seed)
        for batch, seed in ((1, 1), (2, 2), (1, 3), (1, 4))
    ]
    bad = {"token_type_ids": tensors(types=2, shape=(1, 7)), "input_ids": tensors(ids=-1, shape=(1, 7))}
    requests = good[:2] + [bad["token_type_ids"]] + good[2:] + [bad["input_ids"]]
    results, ran = infer_together(deployment["server"], name, requests, ["logits"])
    assert ran < len(requests), "the requests were not batched together"
    for feed, result in zip(requests, results):
        if any(feed is b for b in bad.values()):
            assert isinstance(result, HeadpruneError)
            continue
        assert not isinstance(result, Exception), result
        with torch.no_grad():
            reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        assert np.abs(result["logits"] - session.run(["logits"], feed)[0]).max() <= 1e-4
        assert np.abs(result["logits"] - reference).max() <= 1e-4
    expected = "token_type_ids must lie in [0, 2)" if name == "batched" else "out of data bounds, idx=2"
    assert expected in str(results[2]) and f"input_ids must lie in [0, {VOCAB}); received -1" in str(results[5])


def text_reference(folder, texts, pairs=None, max_length=BATCHING.max_length) -> np.ndarray:
    """Returns PyTorch's logits for texts (and pairs) tokenised by transformers."""
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    encoded = tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded).logits.numpy()


def test_one_bad_text_never_fails_the_others_in_its_batch(deployment):
    good = [TEXTS[:1], TEXTS[1:], ["the plot was not really very fun and the actor was quite dull"], TEXTS[::-1]]
    bad = [strings(""), strings("fun", b"caf\xe9 \xff")]
    requests = [
        {"TEXT": strings(*good[0])},
        {"TEXT": strings(*good[1])},
        {"TEXT": bad[0]},
        {"TEXT": strings(*good[2])},
        {"TEXT": bad[1]},
        {"TEXT": strings(*good[3])},
    ]
    results, ran = infer_together(deployment["server"], "batched_text", requests, ["LOGITS"])
    assert ran < len(requests), "the requests were not batched together"
    texts = iter(good)
    for request, result in zip(requests, results):
        if any(request["TEXT"] is b for b in bad):
            assert isinstance(result, HeadpruneError)
            continue
        assert not isinstance(result, Exception), result
        assert np.abs(result["LOGITS"] - text_reference(deployment["dirs"]["base"], next(texts))).max() <= 1e-4
    assert "TEXT row 0 must not be empty" in str(results[2]) and "TEXT row 1 must be UTF-8" in str(results[4])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name, max_length", [("base", 128), ("batched", BATCHING.max_length)])
def test_sentence_pairs_match_tokenising_pairs_in_python(deployment, protocol, name, max_length):
    client = TritonClient(deployment["server"].url(protocol), protocol)
    folder = deployment["dirs"]["base"]
    logits, labels = client.classify_text(f"{name}_text", TEXTS, PAIRS)
    expected = text_reference(folder, TEXTS, PAIRS, max_length)
    assert np.abs(logits - expected).max() <= 1e-4
    assert labels == [load_model(folder).config.id2label[i] for i in expected.argmax(-1)]
    alone, _ = client.classify_text(f"{name}_text", TEXTS)
    assert np.abs(logits - alone).max() > 1e-3, "TEXT_PAIR made no difference"


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
    assert set(configs) == {
        f"{n}{s}"
        for n in ("base", "pruned", "distilbert", "mpnet", "deberta", "batched", "legacy")
        for s in ("", "_text")
    }
    pruned = configs["pruned"]
    assert pruned.backend == "onnxruntime" and pruned.max_batch_size == 8
    assert [i.name for i in pruned.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(pruned.input[0].dims) == [-1] and list(pruned.output[0].dims) == [2]
    assert pruned.dynamic_batching.max_queue_delay_microseconds == 100
    described = DeploymentDescription.from_config_parameter(pruned.parameters["deployment"].string_value, "pruned")
    assert HeadPlan.from_dict(described.head_plan).count() == 7 and described.heads == 5
    assert described == DeploymentDescription.read(deployment["repo"] / "pruned" / "1")
    text = configs["pruned_text"]
    assert text.backend == "python" and text.parameters["classifier"].string_value == "pruned"
    assert [o.name for o in text.output] == ["LOGITS", "LABEL"]
    assert [(i.name, i.optional) for i in text.input] == [("TEXT", False), ("TEXT_PAIR", True)]
    assert text.dynamic_batching.max_queue_delay_microseconds == 100


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
    assert list(ModelRepository(tmp_path / "repo").staging.iterdir()) == []
    first = export_to_repository(bert_dir, tmp_path / "repo", "m")
    with pytest.raises(HeadpruneError):
        export_to_repository(bert_dir, tmp_path / "repo", "m", atol=0.0)
    assert sorted(p.name for p in (tmp_path / "repo" / "m").iterdir()) == ["1", "config.pbtxt"]
    assert first.version == 1 and export_to_repository(bert_dir, tmp_path / "repo", "m").version == 2
    replaced = export_to_repository(bert_dir, tmp_path / "repo", "m", version=1)
    assert replaced.version == 1 and replaced.model_path.exists()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m", "m_text"]
    assert list(ModelRepository(tmp_path / "repo").staging.iterdir()) == []
