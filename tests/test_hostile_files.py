"""Hostile and malformed files given to the CLI: each is refused with an error naming the input and the fix,
exit code 2 and no traceback, nothing is written, and no code from a model folder is ever run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from exporter import HeadPlan, apply_plan, build_inventory, load_model, load_tokenizer, save_pruned
from exporter.data import HEADERLESS, read_examples
from serving.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

PLAN = {"encoder": {"0": [1], "2": [0, 3]}}
MORE = {"encoder": {"1": [2]}}  # a valid plan for every folder here: commands fail on the folder, not on it


@pytest.fixture(scope="module")
def pruned_dir(bert_dir, tmp_path_factory) -> Path:
    model = load_model(bert_dir)
    apply_plan(model, HeadPlan(PLAN))
    return save_pruned(model, load_tokenizer(bert_dir), tmp_path_factory.mktemp("hostile") / "pruned", source=bert_dir)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    """Returns a copy of a model folder that a test may damage."""
    return Path(shutil.copytree(folder, tmp_path / "model"))


def edit_json(file: Path, **changes) -> None:
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def write_plan(tmp_path: Path, plan: dict) -> Path:
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    return tmp_path / "plan.json"


def refused(args: list, *phrases: str, out: Path | None = None) -> str:
    """Runs the CLI and checks the refusal: exit code 2, no traceback, a fix, each phrase, nothing at ``out``;
    returns the output."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, (args, result.output, result.exception)
    assert "Traceback" not in result.output and "\n  fix: " in result.output, result.output
    for phrase in phrases:
        assert phrase in result.output, (phrase, result.output)
    if out is not None:
        assert not out.exists(), out
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no staging left
    return result.output


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def garble_header(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header that follows the 8-byte length
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, garble_header])
@pytest.mark.parametrize("source", ["bert_dir", "pruned_dir"])
def test_damaged_safetensors_are_refused(request, tmp_path, source, damage):
    model = copy_of(request.getfixturevalue(source), tmp_path)
    damage(model / "model.safetensors")
    weights = f"weights file '{model / 'model.safetensors'}' is damaged or truncated"
    refused(["heads", model], weights)
    out = tmp_path / "out"
    refused(["prune", model, "--plan", write_plan(tmp_path, MORE), "--out", out], weights, out=out)
    if source == "bert_dir":  # fine-tuning takes plain folders only
        refused(["finetune", model, "--data", request.getfixturevalue("cls_data"), "--out", out], weights, out=out)


@pytest.mark.parametrize(
    "source,key,value",
    [
        ("bert_dir", "num_attention_heads", 3),
        ("bert_dir", "num_attention_heads", 0),
        ("marian_dir", "decoder_attention_heads", 5),
    ],
)
def test_a_head_count_that_does_not_divide_the_hidden_size_is_refused(request, tmp_path, source, key, value):
    model = copy_of(request.getfixturevalue(source), tmp_path)
    edit_json(model / "config.json", **{key: value})
    out = tmp_path / "out"
    refused(
        ["prune", model, "--plan", write_plan(tmp_path, MORE), "--out", out],
        f"'{model / 'config.json'}' sets {key} = {value}",
        "restore the config.json",
        out=out,
    )


@pytest.mark.parametrize(
    "source,changes,message",
    [
        ("bert_dir", {"hidden_size": 64}, "weights in '{model}' do not have the shapes its config.json describes"),
        # Unpruned Q/K/V shapes do not depend on the head count (that mistake cannot be seen); a pruned checkpoint's do.
        ("pruned_dir", {"num_attention_heads": 8}, "weights in '{model}' do not match its config.json and head plan"),
        (
            "pruned_dir",
            {"num_attention_heads": 2},
            "'{model}/head_plan.json' does not fit the model its config.json "
            "describes: plan names head(s) [3] in layer 2",
        ),
    ],
    ids=["hidden size", "pruned, head count vs weights", "pruned, head count vs plan"],
)
def test_a_config_that_does_not_fit_the_weights_is_refused(request, tmp_path, cls_data, source, changes, message):
    model = copy_of(request.getfixturevalue(source), tmp_path)
    edit_json(model / "config.json", **changes)
    out = tmp_path / "scores.json"
    refused(["score", model, "--data", cls_data, "--out", out], message.format(model=model), out=out)


@pytest.mark.parametrize(
    "record,message",
    [
        ({"plan": {"encoder": {"1": [1], "2": [0, 3]}}}, "do not match its config.json and head plan"),
        (
            {"plan": {"encoder": {"0": [9], "2": [0, 3]}}},
            "head_plan.json' does not fit the model its config.json describes: plan names head(s) [9] in layer 0",
        ),
        (
            {"plan": {"encoder": {"0": [1], "5": [0]}}},
            "head_plan.json' does not fit the model its config.json describes: "
            "layer 5 of attention type 'encoder' does not exist",
        ),
        (
            {"plan": {"encoder": {"0": [1, 1], "2": [0, 3]}}},
            "head_plan.json': layer 0 of 'encoder' lists head(s) [1] more than once",
        ),
        ({"plan": None, "format": "something-else/1"}, "head_plan.json' is not a headprune-pruned/1 record"),
        ("{not json", "head_plan.json' is damaged"),
    ],
    ids=["other layer", "head out of range", "layer out of range", "head twice", "not a record", "not JSON"],
)
def test_a_head_plan_that_does_not_fit_the_checkpoint_is_refused(pruned_dir, tmp_path, record, message):
    model = copy_of(pruned_dir, tmp_path)
    if isinstance(record, dict):
        edit_json(model / "head_plan.json", **record)
    else:
        (model / "head_plan.json").write_text(record)
    out = tmp_path / "out"
    refused(
        ["prune", model, "--plan", write_plan(tmp_path, MORE), "--out", out],
        message,
        "re-create it with 'headprune prune'",
        out=out,
    )


def test_a_plan_listing_a_head_twice_is_refused(bert_dir, tmp_path):
    out = tmp_path / "out"
    refused(
        ["prune", bert_dir, "--plan", write_plan(tmp_path, {"encoder": {"0": [1, 2, 1]}}), "--out", out],
        "plan file",
        "layer 0 of 'encoder' lists head(s) [1] more than once",
        "list each head to remove once",
        out=out,
    )


def test_pruning_again_takes_original_indices_and_refuses_heads_already_gone(bert_dir, pruned_dir, tmp_path):
    out = tmp_path / "again"
    refused(
        ["prune", pruned_dir, "--plan", write_plan(tmp_path, {"encoder": {"0": [1, 2]}}), "--out", out],
        "head(s) [1] of layer 0 of 'encoder'",
        "no longer has",
        "refer to the original model",
        out=out,
    )
    # Original head 2 is the pruned layer's second head: the result keeps the original's heads 0 and 3 of layer 0.
    result = CliRunner().invoke(
        main,
        ["prune", str(pruned_dir), "--plan", str(write_plan(tmp_path, {"encoder": {"0": [2]}})), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    again = load_model(out)
    assert HeadPlan.of_model(build_inventory(again)).removed == {"encoder": {0: [1, 2], 2: [0, 3]}}
    query = load_model(bert_dir).bert.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(
        again.bert.encoder.layer[0].attention.self.query.weight, torch.cat([query[0:8], query[24:32]]), rtol=0, atol=0
    )


MARKER_CODE = "open({marker!r}, 'w').close()\n"


@pytest.mark.parametrize(
    "file,changes",
    [
        ("config.json", {}),  # a built-in type: transformers would quietly ignore auto_map here
        ("config.json", {"model_type": "evil"}),  # an unknown type: transformers would look for the code
        ("tokenizer_config.json", {}),
    ],
)
def test_a_folder_asking_for_its_own_code_is_refused_and_none_runs(bert_dir, cls_data, tmp_path, file, changes):
    model = copy_of(bert_dir, tmp_path)
    marker = tmp_path / "code-ran"
    (model / "evil.py").write_text(MARKER_CODE.format(marker=str(marker)))
    auto_map = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForSequenceClassification": "evil.EvilModel",
        "AutoTokenizer": ["evil.EvilTokenizer", None],
    }
    edit_json(model / file, auto_map=auto_map, **changes)
    plan = write_plan(tmp_path, MORE)
    commands = [
        (["heads", model], None),
        (["score", model, "--data", cls_data, "--out", tmp_path / "s.json"], tmp_path / "s.json"),
        (["prune", model, "--plan", plan, "--out", tmp_path / "p"], tmp_path / "p"),
        (["export", model, "--repo", tmp_path / "repo", "--name", "evil"], tmp_path / "repo"),
        (["finetune", model, "--data", cls_data, "--out", tmp_path / "ft"], tmp_path / "ft"),
    ]
    for args, out in commands:
        try:
            refused(
                args,
                f"'{model / file}' asks for custom code from the model folder (auto_map)",
                "never runs code from a model folder",
                out=out,
            )
        finally:  # checked first: running the folder's code is worse than any message
            assert not marker.exists(), f"'{args[0]}' ran code from the model folder"


def latin1_on_line_3() -> bytes:
    return '{"text": "the movie", "label": "positive"}\n\n{"text": "très bon", "label": "positive"}\n'.encode("latin-1")


def rows(*lines: dict) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


GOOD = {"text": "the movie", "label": "positive"}

DATA_CASES = {
    "not utf-8": ("d.jsonl", latin1_on_line_3(), [], ["is not valid utf-8: line 3", "--encoding latin-1"]),
    "missing label": (
        "d.jsonl",
        rows(GOOD) + "\n" + rows({"text": "a film"}),
        [],
        ["line 3 has no label (column 'label')"],
    ),
    "null label": ("d.jsonl", rows(GOOD, {"text": "a film", "label": None}), [], ["line 2 has no label"]),
    "empty label": ("d.csv", "text,label\nthe movie,positive\na film,\n", [], ["line 3 has no label"]),
    "short row": ("d.tsv", "text\tlabel\nthe movie\tpositive\na film\n", [], ["line 3 has no label"]),
    "extra field": ("d.csv", "text,label\nthe movie, great,positive\n", [], ["line 2 has more fields than its header"]),
    "text not a string": (
        "d.jsonl",
        rows(GOOD, {"text": 5, "label": "positive"}),
        [],
        ["line 2: text 5 is not a string"],
    ),
    "unseen label name": (
        "d.jsonl",
        rows(GOOD, {"text": "a film", "label": "neutral"}),
        [],
        ["line 2: label 'neutral' is not one of the model's labels (['negative', 'positive'] or 0..1)"],
    ),
    "unseen label id": (
        "d.csv",
        "text,label\nthe movie,0\na film,2\n",
        [],
        ["line 3: label '2' is not one of the model's"],
    ),
    "missing label column": (
        "d.jsonl",
        rows(GOOD),
        ["--label-column", "sentiment"],
        ["lacks label (column 'sentiment')", "it has columns ['label', 'text']", "--label-column"],
    ),
    "no header row": (
        "d.tsv",
        "the movie was great\tpositive\na dull film\tnegative\n",
        [],
        ["lacks text (column 'text')", "that first row looks like data, not a header", "--no-header"],
    ),
    "position without --no-header": (
        "d.tsv",
        "the movie was great\tpositive\na dull film\tnegative\n",
        ["--text-column", "0"],
        ["lacks text (column '0')", "--no-header"],
    ),
    "one row without header": (
        "d.tsv",
        "the movie was great\tpositive\n",
        [],
        ["holds no examples below its header row", "--no-header"],
    ),
    "positions in JSONL": ("d.jsonl", rows(GOOD), ["--no-header"], ["column positions (no header row) apply to CSV"]),
    "two roles in one column": (
        "d.tsv",
        "the movie\tpositive\n",
        ["--no-header", "--text-column", "0", "--label-column", "0"],
        ["the text and label roles would both read column 0"],
    ),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_a_bad_data_file_is_refused_naming_the_line(bert_dir, tmp_path, case):
    name, content, options, phrases = DATA_CASES[case]
    data = tmp_path / name
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "scores.json"
    refused(["score", bert_dir, "--data", data, "--out", out, *options], f"data file '{data}'", *phrases, out=out)


def test_experiments_and_translation_data_name_the_line_too(bert_dir, marian_dir, tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_text(rows(GOOD, GOOD, {"text": "a film", "label": 7}))
    out = tmp_path / "ablation.json"
    refused(["ablate", bert_dir, "--eval-data", data, "--out", out], f"data file '{data}' line 3: label 7", out=out)
    data.write_text(rows({"source": "the movie", "target": "la pelicula"}, {"source": "a film", "target": ""}))
    refused(["score", marian_dir, "--data", data, "--out", out], f"data file '{data}' line 2 has no target", out=out)


def test_a_file_without_header_is_read_by_column_positions(bert_dir, tmp_path):
    raw = "Great fun.\tpositive\tCC-BY 2.0 #1\nA dull film, really.\tnegative\tCC-BY 2.0 #2\n"
    (tmp_path / "raw.tsv").write_text(raw)
    rows = [line.split("\t") for line in raw.splitlines()]
    (tmp_path / "reversed.tsv").write_text("".join(f"{label}\t{text}\n" for text, label, _ in rows))
    expected = [{"text": "Great fun.", "label": "positive"}, {"text": "A dull film, really.", "label": "negative"}]
    assert read_examples(tmp_path / "raw.tsv", "classification", {HEADERLESS: True}) == expected  # the first row too
    assert read_examples(tmp_path / "reversed.tsv", "classification", {"text": 1, "label": 0}) == expected
    assert read_examples(tmp_path / "reversed.tsv", "classification", {HEADERLESS: True, "text": 1}) == expected
    # Read for its texts alone (recovery), the label's position still keeps its column from being the text.
    texts = read_examples(tmp_path / "reversed.tsv", "texts", {HEADERLESS: True, "label": 0})
    assert texts == [{"text": e["text"]} for e in expected]
    for options in (["--no-header"], ["--no-header", "--text-column", "0", "--label-column", "1"]):
        result = CliRunner().invoke(
            main,
            ["score", str(bert_dir), "--data", str(tmp_path / "raw.tsv"), *options, "--out", str(tmp_path / "s.json")],
        )
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "s.json").read_text())["examples"] == 2
    out = tmp_path / "never.json"
    refused(
        ["score", bert_dir, "--data", tmp_path / "raw.tsv", "--no-header", "--text-column", "text", "--out", out],
        "--text-column 'text': with --no-header a column is a 0-based position",
        out=out,
    )


@pytest.mark.parametrize(
    "name,content",
    [
        ("d.jsonl", "\n" + rows(GOOD) + "   \n\n" + rows({"text": "a film", "label": "negative"}) + "\n\n"),
        ("d.csv", "text,label\n\nthe movie,positive\n   \n,\na film,negative\n\n"),
    ],
)
def test_blank_lines_are_skipped(bert_dir, tmp_path, name, content):
    (tmp_path / name).write_text(content)
    result = CliRunner().invoke(
        main, ["score", str(bert_dir), "--data", str(tmp_path / name), "--out", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["examples"] == 2
