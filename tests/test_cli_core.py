"""The core CLI commands end to end, and a clear error (no traceback) for every bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import OPTConfig, OPTForCausalLM

from exporter import load_model
from serving.cli import main
from tests.helpers import write_jsonl


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_heads_json_describes_the_inventory(bert_dir, marian_dir):
    summary = json.loads(run("heads", bert_dir, "--json").output)
    assert summary["attention_types"]["encoder"]["heads_per_layer"] == [4, 4, 4]
    assert 0 < summary["attention_share"] < 1
    kinds = json.loads(run("heads", marian_dir, "--json").output)["attention_types"]
    assert list(kinds) == ["encoder", "decoder", "cross"]


def test_score_prune_and_heads_chain(bert_dir, cls_data, tmp_path):
    assert run("score", bert_dir, "--data", cls_data, "--out", tmp_path / "s.json", "--max-examples", 20).exit_code == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["examples"] == 20 and scores["method"] == "token" and scores["signature"]["weights"]
    assert (
        run("prune", bert_dir, "--scores", tmp_path / "s.json", "--fraction", 0.5, "--out", tmp_path / "p").exit_code
        == 0
    )
    assert json.loads(run("heads", tmp_path / "p", "--json").output)["heads"] == 6
    # Pruning the pruned checkpoint further composes: 0.75 of the original 12 heads.
    assert (
        run(
            "prune", tmp_path / "p", "--scores", tmp_path / "s.json", "--fraction", 0.75, "--out", tmp_path / "q"
        ).exit_code
        == 0
    )
    assert json.loads(run("heads", tmp_path / "q", "--json").output)["heads"] == 3


def test_curve_ablation_and_best_heads(bert_dir, cls_data, tmp_path):
    result = run(
        "curve",
        bert_dir,
        "--score-data",
        cls_data,
        "--eval-data",
        cls_data,
        "--out",
        tmp_path / "c.json",
        "--step",
        0.25,
        "--rescore",
    )
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "c.json").read_text())
    # 0, 25, 50, 75 % and, last, the largest share that leaves one head (11 of 12).
    assert [p["pruned_heads"] for p in curve["points"]] == [0, 3, 6, 9, 11]
    uneven = run(
        "curve",
        bert_dir,
        "--score-data",
        cls_data,
        "--eval-data",
        cls_data,
        "--out",
        tmp_path / "u.json",
        "--step",
        0.3,
    )
    assert uneven.exit_code == 0, uneven.output
    assert [p["pruned_heads"] for p in json.loads((tmp_path / "u.json").read_text())["points"]] == [0, 4, 7, 11]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run("ablate", bert_dir, "--eval-data", cls_data, "--out", tmp_path / "a.json").exit_code == 0
    ablation = json.loads((tmp_path / "a.json").read_text())
    assert [len(row) for row in ablation["delta"]["encoder"].values()] == [4, 4, 4]
    assert [len(row) for row in ablation["p_value"]["encoder"].values()] == [4, 4, 4]
    assert all(0 < p <= 1 for row in ablation["p_value"]["encoder"].values() for p in row)
    assert run("best-heads", bert_dir, "--eval-data", cls_data, "--out", tmp_path / "b.json").exit_code == 0
    best = json.loads((tmp_path / "b.json").read_text())
    assert all(0 <= row["best_head"] < 4 for row in best["layers"]["encoder"].values())


def test_translation_curve_reports_bleu(marian_dir, mt_data, tmp_path):
    result = run(
        "curve",
        marian_dir,
        "--score-data",
        mt_data,
        "--eval-data",
        mt_data,
        "--out",
        tmp_path / "c.json",
        "--step",
        0.5,
        "--per-type",
    )
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "c.json").read_text())
    assert curve["metric"] == "bleu" and curve["points"][1]["pruned_heads"] == 12
    # Ends at the largest share leaving one head in each of the three types of 8 heads: 7 of 8 per type.
    assert curve["points"][-1]["pruned_heads"] == 21


def test_a_curve_over_one_attention_type_prunes_only_its_heads(marian_dir, mt_data, tmp_path):
    result = run(
        "curve",
        marian_dir,
        "--score-data",
        mt_data,
        "--eval-data",
        mt_data,
        "--out",
        tmp_path / "c.json",
        "--step",
        0.5,
        "--only-type",
        "cross",
    )
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "c.json").read_text())
    assert curve["only_type"] == "cross" and [p["pruned_heads"] for p in curve["points"]] == [0, 4, 7]
    assert all(set(p["plan"]) <= {"cross"} for p in curve["points"])
    wrong = run(
        "curve",
        marian_dir,
        "--score-data",
        mt_data,
        "--eval-data",
        mt_data,
        "--out",
        tmp_path / "d.json",
        "--only-type",
        "self",
    )
    assert wrong.exit_code == 2 and "'self' is not one of this model's (encoder, decoder, cross)" in wrong.output


@pytest.fixture()
def unsupported_dir(tmp_path):
    config = OPTConfig(
        num_hidden_layers=1,
        num_attention_heads=2,
        hidden_size=8,
        ffn_dim=16,
        word_embed_proj_dim=8,
        vocab_size=20,
        max_position_embeddings=16,
    )
    OPTForCausalLM(config).save_pretrained(tmp_path / "opt")
    return tmp_path / "opt"


def bad_inputs(bert_dir, cls_data, unsupported_dir, tmp_path):
    (tmp_path / "broken.json").write_text("{encoder: [1,")
    (tmp_path / "layer.json").write_text(json.dumps({"encoder": {"9": [0]}}))
    (tmp_path / "head.json").write_text(json.dumps({"encoder": {"0": [17]}}))
    (tmp_path / "shape.json").write_text(json.dumps({"encoder": [1, 2]}))
    write_jsonl(tmp_path / "nolabel.jsonl", [{"sentence": "the movie", "y": 1}])
    write_jsonl(tmp_path / "badlabel.jsonl", [{"text": "the movie", "label": "meh"}])
    (tmp_path / "s.json").write_text(json.dumps({"scores": {"encoder": {"0": [0.1, 0.2, 0.3, 0.4]}}}))
    out = tmp_path / "out"
    return [
        (["heads", unsupported_dir], "not supported"),
        (["heads", tmp_path], "no config.json"),
        (["prune", bert_dir, "--plan", tmp_path / "broken.json", "--out", out], "not valid JSON"),
        (["prune", bert_dir, "--plan", tmp_path / "missing.json", "--out", out], "does not exist"),
        (["prune", bert_dir, "--plan", tmp_path / "layer.json", "--out", out], "layer 9"),
        (["prune", bert_dir, "--plan", tmp_path / "head.json", "--out", out], "[17]"),
        (["prune", bert_dir, "--plan", tmp_path / "shape.json", "--out", out], "must map layer indices"),
        (["prune", bert_dir, "--scores", tmp_path / "s.json", "--fraction", 1.0, "--out", out], "outside [0, 1)"),
        (["prune", bert_dir, "--scores", tmp_path / "s.json", "--fraction", -0.2, "--out", out], "outside [0, 1)"),
        (["prune", bert_dir, "--out", out], "exactly one of"),
        (["score", bert_dir, "--data", tmp_path / "nolabel.jsonl", "--out", out], "lacks text"),
        (["score", bert_dir, "--data", tmp_path / "badlabel.jsonl", "--out", out], "label 'meh'"),
        (["score", bert_dir, "--data", tmp_path / "none.jsonl", "--out", out], "does not exist"),
        (["score", bert_dir, "--data", tmp_path / "broken.json", "--out", out], "not valid JSON"),
    ]


def test_every_bad_input_gets_a_clear_error(bert_dir, cls_data, unsupported_dir, tmp_path):
    for args, message in bad_inputs(bert_dir, cls_data, unsupported_dir, tmp_path):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "fix:" in result.output and "Traceback" not in result.output
        assert not (tmp_path / "out").exists()


def test_column_overrides(bert_dir, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"sentence": "the movie was fun", "y": "positive"}] * 4)
    result = run(
        "score",
        bert_dir,
        "--data",
        tmp_path / "d.jsonl",
        "--text-column",
        "sentence",
        "--label-column",
        "y",
        "--out",
        tmp_path / "s.json",
    )
    assert result.exit_code == 0 and json.loads((tmp_path / "s.json").read_text())["examples"] == 4


def test_finetune_reads_a_three_class_latin1_csv_with_its_own_column_names(bert_dir, tmp_path):
    rows = [("positive", "un film très réussi"), ("negative", "the plot was dull"), ("neutral", "a film, à voir")] * 6
    (tmp_path / "d.csv").write_bytes(("sentiment,text\n" + "".join(f'{a},"{b}"\n' for a, b in rows)).encode("latin-1"))
    plain = CliRunner().invoke(
        main,
        [
            "finetune",
            str(bert_dir),
            "--data",
            str(tmp_path / "d.csv"),
            "--out",
            str(tmp_path / "ft"),
            "--label-column",
            "sentiment",
        ],
    )
    assert plain.exit_code == 2 and "Traceback" not in plain.output, plain.output
    assert "not valid utf-8: line 2" in plain.output and "--encoding latin-1" in plain.output
    missing = CliRunner().invoke(
        main,
        [
            "finetune",
            str(bert_dir),
            "--data",
            str(tmp_path / "d.csv"),
            "--out",
            str(tmp_path / "ft"),
            "--encoding",
            "latin-1",
        ],
    )
    assert missing.exit_code == 2 and "--label-column" in missing.output and "'sentiment'" in missing.output
    result = run(
        "finetune",
        bert_dir,
        "--data",
        tmp_path / "d.csv",
        "--out",
        tmp_path / "ft",
        "--label-column",
        "sentiment",
        "--encoding",
        "latin-1",
        "--epochs",
        1,
    )
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "ft").config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    again = CliRunner().invoke(
        main,
        [
            "finetune",
            str(bert_dir),
            "--data",
            str(tmp_path / "d.csv"),
            "--out",
            str(tmp_path / "ft"),
            "--label-column",
            "sentiment",
            "--encoding",
            "latin-1",
        ],
    )
    assert again.exit_code == 2 and "already exists" in again.output and "--overwrite" in again.output


def test_prune_refuses_an_existing_output_unless_overwrite(bert_dir, tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"encoder": {"0": [1]}}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    refused = CliRunner().invoke(
        main, ["prune", str(bert_dir), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "out")]
    )
    assert refused.exit_code == 2 and "already exists" in refused.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    replaced = run("prune", bert_dir, "--plan", tmp_path / "plan.json", "--out", tmp_path / "out", "--overwrite")
    assert replaced.exit_code == 0 and json.loads(run("heads", tmp_path / "out", "--json").output)["heads"] == 11
    # A pruned checkpoint cannot be fine-tuned: its shrunk weights would be re-initialised silently.
    write_jsonl(
        tmp_path / "d.jsonl", [{"text": "the movie", "label": "positive"}, {"text": "a film", "label": "negative"}]
    )
    refused = CliRunner().invoke(
        main, ["finetune", str(tmp_path / "out"), "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "ft")]
    )
    assert refused.exit_code == 2 and "pruned checkpoint" in refused.output and not (tmp_path / "ft").exists()


def test_finetune_writes_a_loadable_classifier(bert_dir, cls_data, tmp_path):
    result = run("finetune", bert_dir, "--data", cls_data, "--out", tmp_path / "ft", "--epochs", 1, "--batch-size", 16)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert record["examples"] == 64 and record["final_loss"] > 0
    summary = json.loads(run("heads", tmp_path / "ft", "--json").output)
    assert summary["heads"] == 12
    model = load_model(tmp_path / "ft")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    before = load_model(bert_dir)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))
