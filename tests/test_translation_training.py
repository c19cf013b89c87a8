"""Translation data and training: Tatoeba splits disjoint by source, train-mt's outputs, resuming, refusing."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

from exporter import load_model, load_tokenizer
from exporter.errors import HeadpruneError
from exporter.training.settings import TranslationSettings
from exporter.training.translation import learning_rate_factor, train_translation, warmup_for
from serving.cli import main
from serving.demo.tatoeba import split_by_source, tatoeba_pairs, write_translation_splits
from tests.helpers import random_sentences, write_jsonl

TINY = TranslationSettings(
    vocab_size=120,
    d_model=16,
    layers=1,
    heads=2,
    ffn=32,
    max_length=16,
    batch_tokens=200,
    minutes=0.04,
    eval_minutes=0.015,
    eval_sentences=8,
    warmup_steps=10,
)

# train-mt's options for TINY-sized runs (the vocabulary aside).
TINY_OPTIONS = [
    "--minutes",
    "0.03",
    "--eval-minutes",
    "0.015",
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "2",
    "--ffn",
    "32",
    "--batch-tokens",
    "200",
    "--warmup-steps",
    "10",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def pairs(count: int, seed: int) -> list[dict]:
    sources = random_sentences(count, seed=seed)
    return [{"source": s, "target": " ".join(s.split()[::-1])} for s in sources]


def test_learning_rate_warms_up_decays_and_cools_down_to_zero_at_the_end_of_the_budget():
    settings = TranslationSettings(warmup_steps=100, minutes=10, cooldown=0.2)
    assert learning_rate_factor(49, 0, settings) == pytest.approx(0.5)  # half way up the warm-up
    assert learning_rate_factor(399, 0, settings) == pytest.approx(0.5)  # inverse square root: sqrt(100 / 400)
    assert learning_rate_factor(399, 8 * 60, settings) == pytest.approx(
        0.5
    )  # the cooldown starts at 80 % of the budget
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
    paraphrased = [
        {"source": "Hi.", "target": "¡Hola!"},
        {"source": "hi!", "target": "Hola."},
        {"source": "Hello.", "target": "¡Hola!"},
        {"source": "Good night.", "target": "Buenas noches."},
    ]
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
    assert record["curve"][-1]["seconds"] <= record["seconds"]
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
    assert resumed["curve"][: len(first["curve"])] == first["curve"]  # earlier evaluations are kept
    assert resumed["curve"][-1]["step"] > first["curve"][-1]["step"]  # and training went on from there
    assert resumed["curve"][-1]["seconds"] > first["curve"][-1]["seconds"]
    other = TranslationSettings(**{**TINY.__dict__, "d_model": 32})
    (run / "training.json").unlink()
    with pytest.raises(HeadpruneError, match="other settings"):
        train_translation(pairs(200, 1), pairs(8, 2), run, other, resume=True)


def test_train_mt_command_on_given_files(tmp_path):
    files = {
        name: write_jsonl(tmp_path / f"{name}.jsonl", pairs(count, seed))
        for name, count, seed in (("train", 200, 1), ("dev", 8, 2), ("test", 8, 3))
    }
    arguments = [
        "train-mt",
        "--out",
        str(tmp_path / "run"),
        "--data",
        str(files["train"]),
        "--dev",
        str(files["dev"]),
        "--test",
        str(files["test"]),
        "--vocab-size",
        "120",
        *TINY_OPTIONS,
        "--json",
    ]
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


def test_the_final_evaluations_fit_in_the_budget(tmp_path, monkeypatch):
    from exporter.training import translation

    real = translation._evaluate

    def slow(model, tokenizer, examples, settings):  # 10 ms a sentence: the 300 test sentences take 3 s or more
        time.sleep(0.01 * len(examples))
        return real(model, tokenizer, examples, settings)

    monkeypatch.setattr(translation, "_evaluate", slow)
    settings = TranslationSettings(**{**TINY.__dict__, "minutes": 0.15, "eval_minutes": 0.02})  # 9 s
    record = train_translation(pairs(200, 1), pairs(8, 2), tmp_path / "run", settings, test=pairs(300, 3))
    budget = settings.minutes * 60
    # Training stopped early enough for the last dev checkpoint and the test sentences (without the reserve it would
    # stop at 9 s and end after 12 s or more).
    assert record["curve"][-1]["seconds"] <= budget - 2.5
    assert record["seconds"] <= budget + 1.5 and record["test"]["examples"] == 300


def test_a_long_warm_up_is_warned_about_and_one_the_budget_cannot_finish_is_cut(tmp_path):
    assert warmup_for(TranslationSettings(warmup_steps=400, minutes=20), 0.1) == (400, None)  # 12,000 steps: 3 %
    kept, warning = warmup_for(TranslationSettings(warmup_steps=400, minutes=20), 1.2)  # 1,000 steps: 40 %
    assert kept == 400 and warning.startswith("warning: the 400-step warm-up is 40 % of the training")
    cut, warning = warmup_for(TranslationSettings(warmup_steps=400, minutes=3), 1.2)  # 150 steps: never at the peak
    assert cut == 37 and warning.startswith("warm-up cut from 400 to 37 steps")
    assert learning_rate_factor(49, 0, TINY, warmup_steps=100) == pytest.approx(0.5)
    assert learning_rate_factor(
        399, 4.5 * 60, TranslationSettings(warmup_steps=100, minutes=10), 100, 5 * 60
    ) == pytest.approx(0.25)  # the cooldown ends with the training time, before the budget's end
    said = []
    settings = TranslationSettings(**{**TINY.__dict__, "warmup_steps": 100_000})
    record = train_translation(pairs(200, 1), pairs(8, 2), tmp_path / "run", settings, say=said.append)
    assert 1 <= record["warmup_steps"] < 100_000
    assert any(line.startswith(f"warm-up cut from 100000 to {record['warmup_steps']} steps") for line in said)


def test_train_mt_reads_a_raw_tsv_without_header_holds_out_dev_and_test_and_records_the_languages(tmp_path):
    from exporter.training.tokenizer import train_shared_bpe
    from exporter.triton.description import DeploymentDescription
    from exporter.triton.translation import export_translation_to_repository

    rows = pairs(300, 1)
    (tmp_path / "raw.tsv").write_text(
        "".join(f"{r['target']}\t{r['source']}\tCC-BY 2.0 #{i}\n" for i, r in enumerate(rows))
    )
    given = train_shared_bpe((t for r in rows for t in r.values()), 90)
    given.save_pretrained(tmp_path / "tokenizer")
    arguments = [
        "train-mt",
        "--out",
        str(tmp_path / "run"),
        "--data",
        str(tmp_path / "raw.tsv"),
        "--no-header",
        "--source-column",
        "1",
        "--target-column",
        "0",
        "--source-lang",
        "xx",
        "--target-lang",
        "yy",
        "--tokenizer",
        str(tmp_path / "tokenizer"),
        *TINY_OPTIONS,
        "--json",
    ]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    splits = {
        name: [json.loads(line) for line in (tmp_path / "run" / "splits" / f"{name}.jsonl").open()]
        for name in ("train", "score", "test")
    }
    assert len(splits["score"]) == len(splits["test"]) == 30 and len(splits["train"]) == 240
    assert splits["test"][0] in rows  # the second column is the source, the first the target
    assert not {r["source"] for r in splits["test"]} & {r["source"] for r in splits["train"]}
    record = json.loads(result.stdout)
    assert record["test"]["examples"] == record["dev_sentences"] == 30
    model, tokenizer = load_model(tmp_path / "run" / "model"), load_tokenizer(tmp_path / "run" / "model")
    assert (model.config.source_lang, model.config.target_lang) == ("xx", "yy")
    assert tokenizer.get_vocab() == given.get_vocab() and model.config.vocab_size == len(given)
    exported = export_translation_to_repository(tmp_path / "run" / "model", tmp_path / "repo", "xy", max_new_tokens=8)
    assert DeploymentDescription.read(exported.folder).languages == {"source": "xx", "target": "yy"}
