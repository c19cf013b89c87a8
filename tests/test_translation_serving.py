"""Translation served by the real Triton: <name>_translate == in-process generation, clear errors, BLEU through compare."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from benchmarks.translation_serving import add_bls_variant
from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError
from exporter.evaluation.metrics import bleu
from exporter.onnx.seq2seq import onnx_search
from exporter.triton.config import DeploymentOptions, read_config
from exporter.triton.description import DeploymentDescription
from exporter.triton.layout import ModelRepository
from exporter.triton.translation import MAX_BEAMS, export_translation_to_repository
from serving.benchmark.compare import CompareSettings, Comparison
from serving.client import PROTOCOLS, TritonClient
from serving.server.process import TritonServer, free_port
from tests.helpers import (
    call_together,
    client_for,
    make_trained_marian,
    random_sentences,
    train_to_reverse,
    write_jsonl,
)

ALL = [0, 1, 2, 3]
PLAN = {"encoder": {0: [1], 1: ALL}, "decoder": {0: ALL, 2: [3]}, "cross": {1: ALL, 2: [0]}}
SOURCES = random_sentences(24, seed=11)
NEW_TOKENS = 16
# Long enough that concurrently sent requests wait for each other in Triton's dynamic batcher.
BATCHING = DeploymentOptions(max_batch_size=16, queue_delay_us=200_000, max_length=24)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("translate")
    base = make_trained_marian(root / "base", seed=3, layers=3)
    model, tokenizer = load_model(base), load_tokenizer(base)
    apply_plan(model, HeadPlan.of(PLAN))
    # Recovered, as users would: with whole layers' heads gone, the model otherwise decodes one word over and over
    # on some CPUs, and served == in process would then compare little.
    train_to_reverse(model, tokenizer, seed=4, steps=100)
    save_pruned(model, tokenizer, root / "pruned", source=base)
    # A checkpoint whose generation config asks for 3 beams and at most 5 new tokens: the served defaults.
    configured = load_model(base)
    configured.generation_config.num_beams, configured.generation_config.max_new_tokens = 3, 5
    configured.save_pretrained(root / "configured")
    tokenizer.save_pretrained(root / "configured")
    repo = root / "repo"
    for name, folder, options in (
        ("base", base, DeploymentOptions(max_batch_size=16, max_length=24)),
        ("pruned", root / "pruned", DeploymentOptions(max_batch_size=16, max_length=24)),
        ("batched", base, BATCHING),
        ("configured", root / "configured", DeploymentOptions(max_batch_size=16, max_length=24)),
    ):
        export_translation_to_repository(folder, repo, name, options=options, max_new_tokens=NEW_TOKENS, threads=1)
    export_translation_to_repository(
        base,
        repo,
        "quantized",
        options=DeploymentOptions(max_batch_size=16, max_length=24),
        max_new_tokens=NEW_TOKENS,
        threads=1,
        precision="int8",
    )
    add_bls_variant(repo, "pruned")
    with TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as server:
        yield {"server": server, "repo": repo, "dirs": {"base": base, "pruned": root / "pruned"}, "root": root}


def in_process(folder, sources, num_beams=1):
    """Returns transformers' translations of ``sources`` by the checkpoint in ``folder`` (beam search stopping as its
    generation config says: transformers' default, early_stopping=False)."""
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=NEW_TOKENS, num_beams=num_beams, do_sample=False)
    return tokenizer.batch_decode(generated, skip_special_tokens=True)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_bls_loop_over_served_graphs_translates_like_the_one_model(served, num_beams):
    # The BLS variant is measured by benchmarks/translation_serving.py; it must decode identically to be comparable.
    client = client_for(served, "http")
    bls = client.translate("pruned_bls_translate", SOURCES, num_beams=num_beams)
    assert bls == client.translate("pruned_translate", SOURCES, num_beams=num_beams)
    assert bls == in_process(served["dirs"]["pruned"], SOURCES, num_beams=num_beams)
    steps = client.statistics("pruned_decoder")["model_stats"][0]["inference_stats"]["success"]["count"]
    assert int(steps) >= 2  # the decoder steps really went through the served graph, not an in-process session


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["base", "pruned"])
def test_served_greedy_translations_equal_in_process_generation(served, protocol, name):
    got = client_for(served, protocol).translate(f"{name}_translate", SOURCES)
    expected = in_process(served["dirs"][name], SOURCES)
    assert got == expected
    assert len(set(expected)) >= 3  # the test models translate different sources differently


def test_pruned_and_unpruned_translate_differently(served):
    client = client_for(served, "http")
    assert client.translate("base_translate", SOURCES) != client.translate("pruned_translate", SOURCES)


def test_int8_graphs_are_checked_against_the_fp32_ones_and_served(served, tmp_path):
    folder = ModelRepository(served["repo"]).version_folder("quantized_translate", 1)
    operators = {n.op_type for n in onnx.load(str(folder / "decoder.onnx")).graph.node}
    assert "MatMulInteger" in operators  # the FP32 export has none
    check = json.loads((folder / "validation.json").read_text())["int8"]
    assert check["passed"] and check["sentences"] == 24 and check["same"] >= 0.9 * 24
    assert DeploymentDescription.read(folder).precision == "int8"
    # Served, the INT8 graphs translate as greedy search over them does in process, batch by batch (activations are
    # quantized per batch, so a sentence's translation may depend on the batch it came in).
    settings = json.loads((folder / "deployment.json").read_text())["generation"]
    tokenizer, search, expected = load_tokenizer(served["dirs"]["base"]), onnx_search(folder, settings), []
    for start in range(0, len(SOURCES), 16):
        batch = tokenizer(
            SOURCES[start : start + 16], padding=True, truncation=True, max_length=24, return_tensors="np"
        )
        expected += tokenizer.batch_decode(
            search.greedy(batch["input_ids"], batch["attention_mask"], NEW_TOKENS), skip_special_tokens=True
        )
    assert client_for(served, "http").translate("quantized_translate", SOURCES, num_beams=1, batch_size=16) == expected
    # A demand no INT8 graph meets: refused, nothing written.
    with pytest.raises(HeadpruneError, match="INT8 graphs gave the FP32 graphs' translation"):
        export_translation_to_repository(
            served["dirs"]["base"],
            tmp_path / "repo",
            "strict",
            precision="int8",
            min_agreement=1.01,
            max_new_tokens=NEW_TOKENS,
        )
    assert not (tmp_path / "repo" / "strict_translate").exists()


def test_served_defaults_are_the_checkpoints_generation_config(served):
    folder = served["root"] / "configured"
    got = client_for(served, "http").translate("configured_translate", SOURCES)
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    with torch.no_grad():  # generate() with no search arguments: the checkpoint's own config decides
        generated = model.generate(**tokenizer(SOURCES, padding=True, return_tensors="pt"))
    assert got == tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert max(len(tokenizer(t)["input_ids"]) for t in got) <= 5 + 1  # 5 new tokens at most (and the EOS)
    assert got != client_for(served, "http").translate("configured_translate", SOURCES, num_beams=1, max_new_tokens=16)
    config = read_config(ModelRepository(served["repo"]).config_path("configured_translate"))
    limits = json.loads(config.parameters["limits"].string_value)
    assert (limits["default_beams"], limits["default_new_tokens"], limits["beam_refused"]) == (3, 5, None)


def test_served_beam_search_equals_transformers_beam_search(served):
    got = client_for(served, "grpc").translate("base_translate", SOURCES, num_beams=4)
    assert got == in_process(served["dirs"]["base"], SOURCES, num_beams=4)


def test_the_description_records_the_cache_layout_and_validation(served):
    repository = ModelRepository(served["repo"])
    description = DeploymentDescription.read(repository.version_folder("pruned_translate", 1))
    assert description.task == "translation"
    assert description.generation["layout"]["self_heads"] == [0, 4, 3]
    assert description.generation["layout"]["cross_heads"] == [4, 0, 3]
    assert description.validation["exact_match_rate"] == 1.0
    assert description.heads == 36 - 1 - 4 - 4 - 1 - 4 - 1


@pytest.mark.parametrize(
    "sources, parameters, message",
    [
        ([""], {}, "SOURCE row 0 must not be empty"),
        (["the movie " * 20], {}, "has 41 tokens; this model takes at most 24"),
        (["a film"], {"num_beams": 0}, "num_beams must be an integer from 1 to 8"),
        (["a film"], {"num_beams": MAX_BEAMS + 1}, "num_beams must be an integer from 1 to 8"),
        (["a film"], {"max_new_tokens": 0}, "max_new_tokens must be an integer from 1 to 16"),
        (["a film"], {"num_beams": "many"}, "num_beams must be an integer"),
    ],
)
def test_bad_requests_get_clear_errors(served, sources, parameters, message):
    client = client_for(served, "http")
    with pytest.raises(HeadpruneError, match=message):
        client.translate("base_translate", sources, **parameters)
    assert client.translate("base_translate", ["a film"])  # the model still answers


def test_one_bad_request_never_fails_the_others_in_its_batch(served):
    client = client_for(served, "http")
    before = client.statistics("batched_translate")["model_stats"][0]
    requests = [SOURCES[:3], [""], SOURCES[3:5], SOURCES[5:6], ["the film " * 20], SOURCES[6:9]]
    # Each thread makes its own client: the HTTP client works only in the thread that made it.
    results = call_together(
        lambda i: TritonClient(served["server"].http_url).translate("batched_translate", requests[i]), len(requests)
    )
    after = client.statistics("batched_translate")["model_stats"][0]
    expected = in_process(served["dirs"]["base"], SOURCES[:9])
    assert results[0] == expected[:3] and results[2] == expected[3:5] and results[3] == expected[5:6]
    assert results[5] == expected[6:9]
    assert isinstance(results[1], HeadpruneError) and "must not be empty" in str(results[1])
    assert isinstance(results[4], HeadpruneError) and "tokens" in str(results[4])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert executions < len(requests)  # requests really shared executions


def test_compare_reports_bleu_of_the_served_outputs(served, tmp_path):
    references = in_process(served["dirs"]["base"], SOURCES)  # the base model's outputs as references: BLEU 100
    data = write_jsonl(tmp_path / "mt.jsonl", [{"source": s, "target": t} for s, t in zip(SOURCES, references)])
    settings = CompareSettings(
        repo=served["repo"],
        baseline="base",
        candidates=["pruned"],
        data=data,
        out=tmp_path / "out",
        batch_sizes=[1, 4],
        concurrency=[1],
        trials=1,
        warmup=1,
        requests=2,
        examples=4,
        max_windows=1,
        url=served["server"].http_url,
    )
    records = Comparison(settings).run()
    quality = {r["deployment"]: r for r in records if r.get("record") == "quality"}
    assert quality["base"]["metric"] == "bleu" and quality["base"]["value"] == pytest.approx(100.0)
    pruned_outputs = in_process(served["dirs"]["pruned"], SOURCES)
    assert quality["pruned"]["translations"] == pruned_outputs
    assert quality["pruned"]["value"] == pytest.approx(bleu(pruned_outputs, references).value)
    assert quality["pruned"]["value"] < 100.0
    assert 0 <= quality["pruned"]["chrf"] < 100 and "nc:6" in quality["pruned"]["chrf_signature"]
    latency = [r for r in records if r.get("record") == "latency"]
    assert {(r["deployment"], r["batch_size"]) for r in latency} == {(n, b) for n in ("base", "pruned") for b in (1, 4)}
    assert all(r["throughput"] > 0 for r in latency)


def test_translate_command_prints_the_served_translations(served):
    from click.testing import CliRunner

    from serving.cli import main

    result = CliRunner().invoke(
        main,
        [
            "translate",
            *SOURCES[:3],
            "--model",
            "base_translate",
            "--url",
            served["server"].http_url,
            "--beams",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert [r["translation"] for r in rows] == client_for(served, "http").translate("base_translate", SOURCES[:3], 2)
    bad = CliRunner().invoke(main, ["translate", "", "--model", "base_translate", "--url", served["server"].http_url])
    assert bad.exit_code == 2 and "SOURCE row 0 must not be empty" in bad.output
