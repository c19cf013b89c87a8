"""ONNX export of translation models with a KV cache: uneven heads per layer and per type, headless layers included.

The exported graphs' greedy search must produce exactly transformers' greedy tokens, with each step's logits
within 1e-4 of the teacher-forced PyTorch logits; beam search must pick transformers' beams.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from exporter import HeadPlan, apply_plan, load_model, load_tokenizer
from exporter.errors import HeadpruneError
from exporter.onnx.seq2seq import (
    DECODER_FILE,
    ENCODER_FILE,
    export_seq2seq_onnx,
    generation_settings,
    onnx_search,
    pytorch_greedy,
    step_logits_difference,
    validate_generation,
)
from exporter.triton.layout import ModelRepository
from exporter.triton.translation import export_translation_to_repository
from serving.cli import main
from tests.helpers import make_trained_marian, random_sentences, randomize, write_jsonl

ALL = [0, 1, 2, 3]
PLANS = {
    "unpruned": {},
    "uneven, a headless layer of each type": {
        "encoder": {0: ALL, 1: [1]},
        "decoder": {0: ALL, 2: [3]},
        "cross": {1: ALL, 2: [0, 2]},
    },
    "no decoder self attention": {"decoder": {layer: ALL for layer in range(3)}, "encoder": {2: [0, 1, 2]}},
    "no cross attention": {"cross": {layer: ALL for layer in range(3)}},
    "one head per layer": {kind: {layer: [0, 1, 3] for layer in range(3)} for kind in ("encoder", "decoder", "cross")},
}
SOURCES = random_sentences(40, seed=9)
NEW_TOKENS = 16
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_marian(tmp_path_factory):
    return make_trained_marian(tmp_path_factory.mktemp("seq2seq") / "marian", seed=3, layers=3)


@pytest.fixture(scope="module", params=list(PLANS))
def exported(request, trained_marian, tmp_path_factory):
    """(model, tokenizer, folder, settings) of the trained tiny Marian pruned by one plan and exported."""
    model, tokenizer = load_model(trained_marian), load_tokenizer(trained_marian)
    apply_plan(model, HeadPlan.of(PLANS[request.param]))
    folder = tmp_path_factory.mktemp("onnx")
    layout = export_seq2seq_onnx(model, folder)
    return model, tokenizer, folder, generation_settings(model, tokenizer, layout, max_length=64)


def test_the_cache_layout_follows_the_plan(exported, request):
    _, _, folder, settings = exported
    plan = PLANS[request.node.callspec.params["exported"]]
    layout = settings["layout"]
    assert layout["self_heads"] == [4 - len(plan.get("decoder", {}).get(layer, [])) for layer in range(3)]
    assert layout["cross_heads"] == [4 - len(plan.get("cross", {}).get(layer, [])) for layer in range(3)]
    assert (folder / DECODER_FILE).is_file()
    assert (folder / ENCODER_FILE).is_file() == any(layout["cross_heads"])


@pytest.fixture(scope="module")
def varied_sequences(trained_marian):
    """The unpruned model's greedy outputs: different per source, ending at different lengths (asserted)."""
    model, tokenizer = load_model(trained_marian), load_tokenizer(trained_marian)
    batch = tokenizer(SOURCES, padding=True, return_tensors="np")
    outputs = pytorch_greedy(model, batch["input_ids"], batch["attention_mask"], NEW_TOKENS)
    assert len({tuple(o) for o in outputs}) >= 5
    assert len({len(o) for o in outputs}) >= 3
    return outputs


def test_greedy_tokens_and_step_logits_equal_pytorch(exported, varied_sequences):
    model, tokenizer, folder, settings = exported
    validation = validate_generation(model, tokenizer, folder, settings, SOURCES, NEW_TOKENS, atol=TOLERANCE)
    assert validation.exact_matches == validation.sentences == len(SOURCES)
    assert validation.max_logit_diff <= TOLERANCE
    assert validation.passed
    # A heavily pruned tiny model may end every sentence at once: teacher-force varied sequences too.
    batch = tokenizer(SOURCES, padding=True, return_tensors="np")
    search = onnx_search(folder, settings)
    assert (
        step_logits_difference(model, search, batch["input_ids"], batch["attention_mask"], varied_sequences)
        <= TOLERANCE
    )


@pytest.mark.parametrize("early_stopping, length_penalty", [(True, 1.0), (False, 1.0), (False, 0.5), ("never", 2.0)])
def test_beam_search_picks_the_beams_transformers_picks(exported, early_stopping, length_penalty):
    model, tokenizer, folder, settings = exported
    batch = tokenizer(SOURCES, padding=True, return_tensors="np")
    got = onnx_search(folder, settings).beam(
        batch["input_ids"], batch["attention_mask"], 4, NEW_TOKENS, length_penalty, early_stopping
    )
    with torch.no_grad():
        expected = model.generate(
            input_ids=torch.from_numpy(batch["input_ids"]),
            attention_mask=torch.from_numpy(batch["attention_mask"]),
            max_new_tokens=NEW_TOKENS,
            num_beams=4,
            do_sample=False,
            early_stopping=early_stopping,
            length_penalty=length_penalty,
        )
    eos = model.config.eos_token_id
    expected = [row[1:].tolist() for row in expected]
    expected = [row[: row.index(eos) + 1] if eos in row else row for row in expected]
    assert got == expected


def test_the_step_check_fails_far_above_tolerance_on_a_wrong_position(trained_marian, tmp_path):
    """Negative control: a decoder fed positions one step off (a classic cache bug) is caught by a wide margin."""
    model, tokenizer = load_model(trained_marian), load_tokenizer(trained_marian)
    settings = generation_settings(model, tokenizer, export_seq2seq_onnx(model, tmp_path), max_length=64)
    search = onnx_search(tmp_path, settings)
    batch = tokenizer(SOURCES[:8], padding=True, return_tensors="np")
    sequences = pytorch_greedy(model, batch["input_ids"], batch["attention_mask"], NEW_TOKENS)
    step = search.step
    search.step = lambda state, tokens, position, last_step: step(state, tokens, position + 1, last_step)
    assert (
        step_logits_difference(model, search, batch["input_ids"], batch["attention_mask"], sequences) > 100 * TOLERANCE
    )
    search.step = step
    assert step_logits_difference(model, search, batch["input_ids"], batch["attention_mask"], sequences) <= TOLERANCE


def test_export_refuses_a_failed_check_and_writes_nothing(trained_marian, tmp_path):
    with pytest.raises(HeadpruneError, match="nothing was written"):
        export_translation_to_repository(trained_marian, tmp_path / "repo", "mt", atol=0.0)
    repository = ModelRepository(tmp_path / "repo")
    assert repository.versions("mt_translate") == [] and not list(repository.staging.iterdir())


def test_export_command_writes_the_translation_model(trained_marian, tmp_path):
    data = write_jsonl(tmp_path / "v.jsonl", [{"source": s, "target": "x"} for s in SOURCES[:10]])
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(trained_marian),
            "--repo",
            str(tmp_path / "repo"),
            "--name",
            "mt",
            "--validation-data",
            str(data),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["name"] == "mt_translate" and written["validation"]["sentences"] == 10
    assert written["validation"]["exact_match_rate"] == 1.0
    folder = ModelRepository(tmp_path / "repo").version_folder("mt_translate", 1)
    assert {p.name for p in folder.iterdir()} >= {
        "encoder.onnx",
        "decoder.onnx",
        "model.py",
        "search.py",
        "tokenizer",
        "deployment.json",
        "validation.json",
    }


@pytest.mark.parametrize("model_type", ["bart", "mbart"])
def test_bart_and_mbart_export_with_uneven_heads(model_type, marian_dir, tmp_path):
    """The other members of the family: scaled embeddings inside the embedding, layer norms, learned positions."""
    from transformers import BartConfig, BartForConditionalGeneration, MBartConfig, MBartForConditionalGeneration

    config_class, model_class = {
        "bart": (BartConfig, BartForConditionalGeneration),
        "mbart": (MBartConfig, MBartForConditionalGeneration),
    }[model_type]
    tokenizer = load_tokenizer(marian_dir)  # a word-level tokenizer: pad 0, eos 1
    config = config_class(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        scale_embedding=True,
    )
    torch.manual_seed(0)
    model = randomize(model_class(config).eval())
    apply_plan(model, HeadPlan.of({"encoder": {0: [1]}, "decoder": {0: ALL}, "cross": {1: ALL, 0: [2]}}))
    settings = generation_settings(model, tokenizer, export_seq2seq_onnx(model, tmp_path), max_length=64)
    validation = validate_generation(model, tokenizer, tmp_path, settings, SOURCES[:16], NEW_TOKENS, atol=TOLERANCE)
    assert validation.passed, validation
    batch = tokenizer(SOURCES[:16], padding=True, return_tensors="np")
    generator = torch.Generator().manual_seed(1)
    sequences = [
        torch.randint(3, len(tokenizer), (int(n),), generator=generator).tolist() + [1]
        for n in torch.randint(2, 12, (16,), generator=generator)
    ]
    search = onnx_search(tmp_path, settings)
    assert step_logits_difference(model, search, batch["input_ids"], batch["attention_mask"], sequences) <= TOLERANCE
