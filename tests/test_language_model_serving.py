"""Decoder-only language models served by the real Triton: logits and per-text NLL equal PyTorch over HTTP and gRPC
(GPT-2's fused projection, Llama's grouped-query heads, headless layers), served perplexity equals in-process
perplexity, greedy generation with a KV cache equals transformers' generate, INT8 graphs are checked against FP32 and served as
they run in process, and compare reports perplexity and tokens/s."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.data import read_examples
from exporter.errors import HeadpruneError
from exporter.evaluation.quality import Evaluator
from exporter.onnx import quantize
from exporter.onnx.causal import pytorch_greedy_continuations
from exporter.onnx.export import random_inputs
from exporter.triton.config import DeploymentOptions, read_config
from exporter.triton.description import DeploymentDescription
from exporter.triton.inputs import text_feeds
from exporter.triton.models.search import CausalSearch, session_runner
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings
from serving.report.runner import run_comparison
from serving.server.process import TritonServer, free_port
from tests.helpers import client_for

PLANS = {
    "gpt2_pruned": {"decoder": {0: [0, 1, 2, 3], 1: [1]}},  # layer 0 headless
    "llama_pruned": {"decoder": {0: [0], 1: [0, 1], 2: [3]}},
}  # layer 1's group 0 gone; uneven groups copy a head


@pytest.fixture(scope="module")
def served(gpt2_dir, llama_dir, mistral_dir, qwen2_dir, lm_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    dirs = {"gpt2": gpt2_dir, "llama": llama_dir, "mistral": mistral_dir, "qwen2": qwen2_dir}
    for name, plan in PLANS.items():
        source = dirs[name.split("_")[0]]
        model = load_model(source)
        apply_plan(model, HeadPlan(plan))
        dirs[name] = save_pruned(model, load_tokenizer(source), root / name, source=source)
    options = DeploymentOptions(max_batch_size=8)
    for name, folder in dirs.items():
        export_to_repository(folder, root / "repo", name, options=options)
    texts = [e["text"] for e in read_examples(lm_data, "language-modeling")]
    export_to_repository(
        dirs["llama_pruned"], root / "repo", "llama_int8", options=options, precision="int8", validation_texts=texts
    )
    with TritonServer(root / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as server:
        yield {"server": server, "repo": root / "repo", "dirs": dirs}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", ["gpt2", "gpt2_pruned", "llama_pruned", "mistral", "qwen2"])
def test_served_logits_and_nll_equal_onnxruntime_and_pytorch(served, protocol, name):
    client = client_for(served, protocol)
    model = load_model(served["dirs"][name])
    session = ort.InferenceSession(str(served["repo"] / name / "1" / "model.onnx"))
    for batch, seq in ((1, 4), (3, 11), (8, 20)):
        feed = random_inputs(model, ["input_ids", "attention_mask"], batch, seq, seed=batch)
        out = client.infer(name, feed, ["logits", "nll"])
        local = session.run(["logits", "nll"], feed)
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
        log_probs = torch.log_softmax(logits[:, :-1].double(), -1)
        targets = torch.from_numpy(feed["input_ids"][:, 1:])
        picked = log_probs.gather(-1, targets[..., None])[..., 0] * torch.from_numpy(feed["attention_mask"][:, 1:])
        nll = -picked.sum(-1, keepdim=True).numpy()
        assert out["logits"].shape == (batch, seq, model.config.vocab_size)
        assert np.abs(out["logits"] - local[0]).max() <= 1e-5 and np.abs(out["nll"] - local[1]).max() <= 1e-4
        # At real tokens: a padded query whose sliding window holds only padding attends to nothing real.
        real = feed["attention_mask"].astype(bool)
        assert np.abs(out["logits"] - logits.numpy())[real].max() <= 1e-4
        assert np.abs(out["nll"] - nll).max() <= 1e-3


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_perplexity_equals_in_process_perplexity(served, protocol, lm_data):
    client = client_for(served, protocol)
    examples = read_examples(lm_data, "language-modeling")
    texts = [e["text"] for e in examples]
    for name, folder in served["dirs"].items():
        if name == "qwen2":
            continue  # transformers loads a qwen2 folder's tokenizer as Qwen2's own BPE, not the test's word-level one
        nll, tokens = client.score_text(f"{name}_text", texts, batch_size=8)
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        expected = Evaluator(model, tokenizer, examples)()
        assert [int(t) for t in tokens] == [len(tokenizer(t)["input_ids"]) - 1 for t in texts]
        assert np.exp(nll.sum() / tokens.sum()) == pytest.approx(expected.value, rel=1e-5)
        # One text alone: the same as within a padded batch.
        alone, _ = client.score_text(f"{name}_text", texts[:1])
        assert alone[0] == pytest.approx(nll[0], rel=1e-5, abs=1e-5)


PROMPTS = ["the movie was", "a really dull and boring plot about the actor who", "fun", "el pelicula es muy"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", ["gpt2_pruned", "llama", "llama_pruned", "mistral"])  # qwen2: see the export check
def test_served_generation_equals_transformers_greedy_generate(served, protocol, name):
    client = client_for(served, protocol)
    model, tokenizer = load_model(served["dirs"][name]), load_tokenizer(served["dirs"][name])
    eos = model.config.eos_token_id
    for prompts, budget in ((PROMPTS, 12), (PROMPTS[2:3], 20)):  # a batch of uneven prompts, then one alone
        continuations = client.generate(f"{name}_generate", prompts, budget)
        expected = pytorch_greedy_continuations(model, [tokenizer(p)["input_ids"] for p in prompts], eos, eos, budget)
        assert continuations == tokenizer.batch_decode(expected, skip_special_tokens=True)
        assert any(continuations)  # something was generated: equal empty outputs would prove nothing


def test_generation_checks_requests_and_describes_itself(served):
    client = client_for(served, "http")
    config = read_config(served["repo"] / "llama_pruned_generate" / "config.pbtxt")
    settings = json.loads(config.parameters["generation"].string_value)
    assert settings["layout"]["heads"] == [3, 1, 3]  # key/value heads: a group gone; copies where groups are uneven
    for name in ("llama_pruned", "qwen2"):  # qwen2: full and sliding-window layers, one mask each, matched on token ids
        validation = json.loads((served["repo"] / f"{name}_generate" / "1" / "validation.json").read_text())
        assert validation["passed"] and validation["exact_matches"] == validation["prompts"] == 12
    with pytest.raises(HeadpruneError, match="PROMPT row 1 must not be empty"):
        client.generate("llama_generate", ["fun", " "])
    with pytest.raises(HeadpruneError, match="max_new_tokens must be an integer from 1 to"):
        client.generate("llama_generate", ["fun"], 0)
    with pytest.raises(HeadpruneError, match="PROMPT row 0 has .* tokens; this model takes at most"):
        client.generate("llama_generate", [" ".join(["fun"] * 60)], 10)
    assert len(client.generate("llama_generate", ["fun"], 3)) == 1  # the server still answers


def test_language_model_configs_and_refusals(served, gpt2_dir, tmp_path):
    config = read_config(served["repo"] / "llama_pruned" / "config.pbtxt")
    vocab = load_model(served["dirs"]["llama_pruned"]).config.vocab_size
    assert [o.name for o in config.output] == ["logits", "nll"] and list(config.output[0].dims) == [-1, vocab]
    description = json.loads(config.parameters["deployment"].string_value)
    assert description["task"] == "language-modeling" and description["heads"] == 12 - 4
    text = read_config(served["repo"] / "llama_pruned_text" / "config.pbtxt")
    assert [o.name for o in text.output] == ["NLL", "TOKENS"] and [i.name for i in text.input] == ["TEXT"]
    with pytest.raises(HeadpruneError, match="language model: attention fusion"):
        export_to_repository(gpt2_dir, tmp_path / "repo", "x", optimize=True)
    assert not (tmp_path / "repo" / "x").exists()


def test_int8_language_model_is_checked_and_served_as_its_graphs_run_in_process(served, lm_data):
    repo, client = served["repo"], client_for(served, "http")
    for model, graph in (("llama_int8", "model.onnx"), ("llama_int8_generate", "generate.onnx")):
        assert "MatMulInteger" in {n.op_type for n in onnx.load(str(repo / model / "1" / graph)).graph.node}
        assert DeploymentDescription.read(repo / model / "1").precision == "int8"
    scoring = json.loads((repo / "llama_int8" / "1" / "validation.json").read_text())["quantization"]
    assert scoring["passed"] and scoring["texts"] == 24 and abs(scoring["increase"]) <= scoring["max_increase"]
    generation = json.loads((repo / "llama_int8_generate" / "1" / "validation.json").read_text())["quantization"]
    # The 24 texts' starts, and pseudo-sentences making up the 64 prompts.
    assert generation["passed"] and generation["prompts"] == 64 and generation["same"] >= 0.9 * 64
    # Served, each graph gives what it gives in process on the same batch (activations are quantized per batch).
    texts = [e["text"] for e in read_examples(lm_data, "language-modeling")][:6]
    tokenizer = load_tokenizer(served["dirs"]["llama_pruned"])
    nll, _ = client.score_text("llama_int8_text", texts, batch_size=1)
    feeds = text_feeds(tokenizer, texts, ["input_ids", "attention_mask"], 512, batch_size=1)
    session = ort.InferenceSession(str(repo / "llama_int8" / "1" / "model.onnx"))
    assert nll == pytest.approx([float(session.run(["nll"], feed)[0][0, 0]) for feed in feeds], rel=1e-5)
    fp32, _ = client.score_text("llama_pruned_text", texts, batch_size=1)
    assert np.abs(nll - fp32).max() > 1e-4  # the INT8 graph is the one served
    settings = json.loads(
        read_config(repo / "llama_int8_generate" / "config.pbtxt").parameters["generation"].string_value
    )
    search = CausalSearch(
        session_runner(repo / "llama_int8_generate" / "1" / "generate.onnx"),
        settings["layout"],
        settings["eos_ids"],
        settings["pad_id"],
    )
    expected = search.greedy([tokenizer(p)["input_ids"] for p in PROMPTS], 12)
    assert client.generate("llama_int8_generate", PROMPTS, 12) == tokenizer.batch_decode(
        expected, skip_special_tokens=True
    )


def test_int8_language_model_refused_when_perplexity_or_continuations_change_too_much(served, tmp_path):
    source = served["dirs"]["llama_pruned"]
    for demand, message in (
        (dict(max_perplexity_increase=-0.5), "perplexity on the 64 validation texts"),
        (dict(min_generation_agreement=1.01), "INT8 step graph continued"),
    ):
        with pytest.raises(HeadpruneError, match=message):
            export_to_repository(source, tmp_path / "repo", "x", precision="int8", **demand)
        assert not [p.name for p in (tmp_path / "repo").iterdir() if not p.name.startswith(".")]


@pytest.mark.slow
def test_compare_reports_perplexity_and_tokens_per_second(served, lm_data, tmp_path):
    settings = CompareSettings(
        repo=served["repo"],
        baseline="llama",
        candidates=["llama_pruned"],
        data=lm_data,
        out=tmp_path / "report",
        url=served["server"].http_url,
        batch_sizes=[1, 4],
        concurrency=[1],
        seq_len=16,
        trials=2,
        requests=6,
        examples=8,
        max_windows=1,
        warmup=1,
    )
    report_md = run_comparison(settings)
    report = json.loads((report_md.parent / "report.json").read_text())
    for name in ("llama", "llama_pruned"):
        quality = report["deployments"][name]["quality"]
        expected = Evaluator(
            load_model(served["dirs"][name]),
            load_tokenizer(served["dirs"][name]),
            read_examples(lm_data, "language-modeling"),
        )()
        assert quality["metric"] == "perplexity" and quality["value"] == pytest.approx(expected.value, rel=1e-5)
    assert "p_value" in report["deployments"]["llama_pruned"]["quality"]
    text = report_md.read_text()
    assert "tokens/s" in text and "perplexity" in text
    row = next(line for line in text.splitlines() if line.startswith("| llama | 4 | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[11]) == pytest.approx(16 * float(cells[10]), rel=0.01)  # tokens/s = examples/s x seq_len


@pytest.mark.parametrize(("graph", "message"), [("model.onnx", "perplexity"), ("generate.onnx", "INT8 step graph")])
def test_int8_checks_refuse_a_quantized_graph_with_its_embedding_rows_shifted(
    llama_dir, tmp_path, monkeypatch, graph, message
):
    vocab = load_model(llama_dir).config.vocab_size
    real = quantize.quantize_file

    def damaged(path, quantized, reduce_range):  # a quantizer that mixes up token rows, in one of the two graphs
        real(path, quantized, reduce_range)
        if path.name == graph:
            model = onnx.load(str(quantized))
            table = next(t for t in model.graph.initializer if len(t.dims) == 2 and vocab in t.dims)
            rows = onnx.numpy_helper.to_array(table)
            table.CopyFrom(
                onnx.numpy_helper.from_array(np.roll(rows, 1, axis=list(table.dims).index(vocab)), table.name)
            )
            onnx.save(model, str(quantized))

    monkeypatch.setattr(quantize, "quantize_file", damaged)
    with pytest.raises(HeadpruneError, match=message):
        export_to_repository(llama_dir, tmp_path / "repo", "broken", precision="int8")
    monkeypatch.setattr(quantize, "quantize_file", real)
    assert export_to_repository(llama_dir, tmp_path / "repo", "sound", precision="int8").quantization.passed
