"""Translation data and training: Tatoeba splits disjoint by source, train-mt's outputs, resuming, refusing."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from exporter import load_model, load_tokenizer
from exporter.errors import HeadpruneError
from exporter.training.settings import TranslationSettings
from exporter.training.translation import learning_rate_factor, train_translation
from serving.cli import main
from serving.demo.tatoeba import split_by_source, tatoeba_pairs, write_translation_splits
from tests.helpers import random_sentences, write_jsonl

TINY = TranslationSettings(vocab_size=120, d_model=16, layers=1, heads=2, ffn=32, max_length=16, batch_tokens=200,
                           minutes=0.04, eval_minutes=0.015, eval_sentences=8, warmup_steps=10)


pytestmark = pytest.mark.usefixtures("one_thread")


def pairs(count: int, seed: int) -> list[dict]:
    sources = random_sentences(count, seed=seed)
    return [{"source": s, "target": " ".join(s.split()[::-1])} for s in sources]


def test_learning_rate_warms_up_decays_and_cools_down_to_zero_at_the_end_of_the_budget():
    settings = TranslationSettings(warmup_steps=100, minutes=10, cooldown=0.2)
    assert learning_rate_factor(49, 0, settings) == pytest.approx(0.5)  # half way up the warm-up
    assert learning_rate_factor(399, 0, settings) == pytest.approx(0.5)  # inverse square root: sqrt(100 / 400)
    assert learning_rate_factor(399, 8 * 60, settings) == pytest.approx(0.5)  # the cooldown starts at 80 % of the budget
    assert learning_rate_factor(399, 9 * 60, settings) == pytest.approx(0.25)  # half way down
    assert learning_rate_factor(399, 10 * 60, settings) == 0.0
    assert learning_rate_factor(399, 9 * 60, TranslationSettings(warmup_steps=100, minutes=10, cooldown=0)) == 0.5
    with pytest.raises(HeadpruneError, match="cooldown"):
        TranslationSettings(cooldown=1.0)


def test_tatoeba_pairs_are_deduplicated_and_splits_are_disjoint_by_source(tmp_path):
    rows = [f"Sentence {i // 3}.\tFrase {i}.\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}" for i in range(300)]
    rows += [rows[0], rows[1], "no tab here", "\tonly a target"]
    (tmp_path / "spa.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    found = tatoeba_pairs(tmp_path)
    assert len(found) == 300  # exact duplicates and malformed lines dropped
    splits = split_by_source(found, {"score": 10, "test": 20})
    assert len(splits["score"]) == 10 and len(splits["test"]) == 20
    sources = {name: {row["source"] for row in rows} for name, rows in splits.items()}
    assert not sources["test"] & sources["train"] and not sources["score"] & sources["train"]
    assert not sources["test"] & sources["score"]
    assert len(splits["train"]) == 300 - 3 * 30  # every pair of a held-out source leaves the training split
    assert all(row["target"].startswith("Frase") for row in splits["test"])
    with pytest.raises(HeadpruneError, match="distinct sources"):
        split_by_source(found, {"test": 100})
    # Paraphrases: case and punctuation make no other source, and a shared translation keeps a pair out of training.
    paraphrased = [{"source": "Hi.", "target": "¡Hola!"}, {"source": "hi!", "target": "Hola."},
                   {"source": "Hello.", "target": "¡Hola!"}, {"source": "Good night.", "target": "Buenas noches."}]
    for seed in range(20):
        held = split_by_source(paraphrased, {"test": 1}, seed=seed)
        if held["test"][0]["source"] == "Hi.":
            break
    assert held["test"] == [{"source": "Hi.", "target": "¡Hola!"}]
    assert held["train"] == [{"source": "Good night.", "target": "Buenas noches."}]
    paths = write_translation_splits(tmp_path, tmp_path / "cache", {"score": 10, "test": 20})
    first = {name: path.read_text() for name, path in paths.items()}
    assert write_translation_splits(tmp_path, tmp_path / "cache", {"score": 10, "test": 20}) == paths
    assert {name: path.read_text() for name, path in paths.items()} == first


def test_training_writes_model_checkpoints_and_a_bleu_curve(tmp_path):
    record = train_translation(pairs(200, 1), pairs(8, 2), tmp_path / "run", TINY, test=pairs(8, 3))
    run = tmp_path / "run"
    assert record["finished"] and len(record["curve"]) >= 2
    assert [p["seconds"] for p in record["curve"]] == sorted(p["seconds"] for p in record["curve"])
    assert record["curve"][-1]["seconds"] >= TINY.minutes * 60
    assert record["test"]["metric"] == "bleu" and record["test"]["examples"] == 8 and record["test"]["references"] == 1
    # The token budget its BLEU was measured with is the model's own default: generate and the served model use it.
    assert load_model(run / "model").generation_config.max_new_tokens == TINY.max_length
    assert json.loads((run / "training.json").read_text()) == record
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert [f"step-{p['step']:06d}" for p in record["curve"]] == [c.name for c in checkpoints]
    model, tokenizer = load_model(run / "model"), load_tokenizer(run / "model")
    assert model.config.model_type == "marian" and model.config.encoder_attention_heads == 2
    batch = tokenizer(["the movie was great"], return_tensors="pt")
    assert model.generate(**batch, max_new_tokens=4).shape[0] == 1
    # The final weights are the last checkpoint's.
    last = load_model(checkpoints[-1])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), last.state_dict().values()))
    # A finished run is returned as it is; an existing output is refused without resume or overwrite.
    assert train_translation(pairs(200, 1), pairs(8, 2), run, TINY, resume=True) == record
    with pytest.raises(HeadpruneError, match="already exists"):
        train_translation(pairs(200, 1), pairs(8, 2), run, TINY)


def test_an_interrupted_run_resumes_from_its_last_evaluation(tmp_path):
    run = tmp_path / "run"
    first = train_translation(pairs(200, 1), pairs(8, 2), run, TINY)
    # As if the process died after its last evaluation: only the state and the checkpoints remain.
    (run / "training.json").unlink()
    longer = TranslationSettings(**{**TINY.__dict__, "minutes": 2 * TINY.minutes})
    resumed = train_translation(pairs(200, 1), pairs(8, 2), run, longer, resume=True)
    assert resumed["curve"][:len(first["curve"])] == first["curve"]  # earlier evaluations are kept
    assert resumed["curve"][-1]["step"] > first["curve"][-1]["step"]  # and training went on from there
    assert resumed["curve"][-1]["seconds"] >= longer.minutes * 60
    other = TranslationSettings(**{**TINY.__dict__, "d_model": 32})
    (run / "training.json").unlink()
    with pytest.raises(HeadpruneError, match="other settings"):
        train_translation(pairs(200, 1), pairs(8, 2), run, other, resume=True)


def test_train_mt_command_on_given_files(tmp_path):
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", pairs(count, seed))
             for name, count, seed in (("train", 200, 1), ("dev", 8, 2), ("test", 8, 3))}
    arguments = ["train-mt", "--out", str(tmp_path / "run"), "--data", str(files["train"]), "--dev", str(files["dev"]),
                 "--test", str(files["test"]), "--minutes", "0.03", "--eval-minutes", "0.015", "--vocab-size", "120",
                 "--d-model", "16", "--layers", "1", "--heads", "2", "--ffn", "32", "--batch-tokens", "200",
                 "--warmup-steps", "10", "--json"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["settings"]["d_model"] == 16 and record["test"]["examples"] == 8
    assert (tmp_path / "run" / "training.png").stat().st_size > 1000
    again = CliRunner().invoke(main, arguments)
    assert again.exit_code == 2 and "--resume" in again.output and "--overwrite" in again.output
    bad = CliRunner().invoke(main, [*arguments[:-1], "--heads", "3", "--out", str(tmp_path / "other")])
    assert bad.exit_code == 2 and "d_model 16 does not split into 3 heads" in bad.output and "--heads" in bad.output
    assert not (tmp_path / "other").exists()
