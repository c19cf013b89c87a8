"""Recovery after pruning: per-head least-squares rescaling, and distillation from the unpruned model."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from exporter import HeadPlan, apply_plan, build_inventory, load_model, load_tokenizer, save_pruned
from exporter.data import encode_batch
from exporter.evaluation.distill import distill
from exporter.evaluation.rescale import rescale_heads
from serving.cli import main
from tests.helpers import make_bert, random_sentences, write_jsonl

PLAN = {"encoder": {0: [1], 1: [0, 2], 2: [3]}}  # 3, 2 and 3 heads of 4 left

pytestmark = pytest.mark.usefixtures("one_thread")


def sample(folder, count=64, seed=5) -> list[dict]:
    tokenizer, config = load_tokenizer(folder), load_model(folder).config
    examples = [{"text": text, "label": "positive"} for text in random_sentences(count, seed=seed)]
    encoded = []
    for start in range(0, count, 16):
        batch = encode_batch(tokenizer, examples[start : start + 16], "classification", config)
        batch.pop("labels")
        encoded.append(batch)
    return encoded


@torch.no_grad()
def attention_errors(pruned, base, batches) -> list[float]:
    """Returns, per layer, the squared distance between the two models' attention outputs on real tokens."""
    errors = []
    for mine, theirs in zip(build_inventory(pruned).layers, build_inventory(base).layers):
        outputs = {}
        hooks = [
            layer.module("output").register_forward_hook(lambda m, i, o, key=key: outputs.__setitem__(key, o))
            for key, layer in (("mine", mine), ("theirs", theirs))
        ]
        total = 0.0
        for batch in batches:
            pruned(**batch)
            base(**batch)
            tokens = batch["attention_mask"].bool()
            total += float(((outputs["mine"] - outputs["theirs"])[tokens] ** 2).sum())
        for hook in hooks:
            hook.remove()
        errors.append(total)
    return errors


def pruned_copy(folder):
    model = load_model(folder).eval()
    apply_plan(model, HeadPlan.of(PLAN))
    return model


def test_rescaling_brings_every_layer_closer_to_the_unpruned_one(bert_dir):
    base, pruned, batches = load_model(bert_dir).eval(), pruned_copy(bert_dir), sample(bert_dir)
    before = attention_errors(pruned, base, batches)
    scales = rescale_heads(pruned, base, batches)["encoder"]
    after = attention_errors(pruned, base, batches)
    assert [len(scales[layer]) for layer in range(3)] == [3, 2, 3]
    assert all(a < b for a, b in zip(after, before)) and sum(after) < 0.9 * sum(before), (before, after)
    # Layer 0 sees the same input in both models, so its fit is the optimum: the same scales on the wrong heads
    # (in reverse order) are clearly worse.
    wrong = pruned_copy(bert_dir)
    output = build_inventory(wrong).layers[0].module("output")
    with torch.no_grad():
        output.weight.mul_(torch.tensor(scales[0][::-1]).repeat_interleave(8))
    assert scales[0] != scales[0][::-1]
    assert attention_errors(wrong, base, batches)[0] > 1.05 * after[0]


def test_an_unpruned_model_rescaled_against_itself_keeps_every_head_as_it_is(bert_dir):
    # Fails if the output bias were fitted by the heads' scales instead of being kept aside.
    scales = rescale_heads(load_model(bert_dir), load_model(bert_dir), sample(bert_dir))["encoder"]
    assert all(abs(s - 1) < 1e-3 for layer in scales.values() for s in layer), scales


def test_recover_command_writes_a_loadable_checkpoint_with_its_scales(bert_dir, tmp_path):
    pruned = save_pruned(pruned_copy(bert_dir), load_tokenizer(bert_dir), tmp_path / "pruned", source=bert_dir)
    data = write_jsonl(
        tmp_path / "sample.jsonl", [{"text": t, "label": "positive"} for t in random_sentences(40, seed=2)]
    )
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(pruned),
            "--teacher",
            str(bert_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "recovered"),
            "--method",
            "rescale",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "rescaled 8 heads on 40 examples" in result.output
    record = json.loads((tmp_path / "recovered" / "recovery.json").read_text())
    assert record["method"] == "rescale" and set(record["scales"]["encoder"]) == {"0", "1", "2"}
    recovered = load_model(tmp_path / "recovered")
    assert [len(layer.kept) for layer in build_inventory(recovered).layers] == [3, 2, 3]
    original = build_inventory(load_model(pruned)).layers[0].module("output").weight
    assert not torch.equal(build_inventory(recovered).layers[0].module("output").weight, original)
    other = make_bert(tmp_path / "other", head_size=4)
    refused = CliRunner().invoke(
        main, ["recover", str(pruned), "--teacher", str(other), "--data", str(data), "--out", str(tmp_path / "again")]
    )
    assert refused.exit_code == 2 and "is not the model" in refused.output and "pass the unpruned" in refused.output
    assert not (tmp_path / "again").exists()


@torch.no_grad()
def divergence(student, teacher, batches) -> float:
    """Returns the mean KL divergence of the student's output distribution from the teacher's."""
    total = 0.0
    for batch in batches:
        target = torch.log_softmax(teacher(**batch).logits, -1)
        total += float(
            torch.nn.functional.kl_div(
                torch.log_softmax(student(**batch).logits, -1), target, log_target=True, reduction="batchmean"
            )
        )
    return total / len(batches)


def test_distillation_moves_the_pruned_model_towards_the_teacher_and_keeps_its_heads_removed(bert_dir, tmp_path):
    pruned = save_pruned(pruned_copy(bert_dir), load_tokenizer(bert_dir), tmp_path / "pruned", source=bert_dir)
    texts = [{"text": t, "label": "positive"} for t in random_sentences(192, seed=4)]
    record = distill(pruned, bert_dir, texts, tmp_path / "distilled", epochs=3, learning_rate=1e-3)
    held_out, teacher = sample(bert_dir, seed=9), load_model(bert_dir).eval()
    before = divergence(load_model(pruned).eval(), teacher, held_out)
    after = divergence(load_model(tmp_path / "distilled").eval(), teacher, held_out)
    assert after < 0.5 * before, (before, after)  # on texts it was not trained on
    assert record["final_loss"] < record["first_loss"]
    distilled = build_inventory(load_model(tmp_path / "distilled"))
    assert [layer.kept for layer in distilled.layers] == [[0, 2, 3], [1, 3], [0, 1, 2]]
    stored = json.loads((tmp_path / "distilled" / "recovery.json").read_text())
    assert stored["method"] == "distill" and stored["examples"] == 192
    # Texts alone, as --help promises: no label column.
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": e["text"]} for e in texts])
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(pruned),
            "--teacher",
            str(bert_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "cli"),
            "--max-examples",
            "64",
        ],
    )
    assert result.exit_code == 0 and "distilled 1 epoch(s) on 64 examples" in result.output, result.output
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(pruned),
            "--teacher",
            str(bert_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "cli"),
            "--method",
            "rescale",
            "--json",
        ],
    )
    assert result.exit_code != 0 and "--overwrite" in result.output  # refused before any work
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(pruned),
            "--teacher",
            str(bert_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "cli"),
            "--method",
            "rescale",
            "--json",
            "--overwrite",
        ],
    )
    assert result.exit_code == 0 and json.loads(result.output)["method"] == "rescale"


@torch.no_grad()
def output_divergence(student, teacher, tokenizer, examples, outputs) -> float:
    """Returns the mean KL divergence of the student's output distributions from the teacher's at the positions the
    distillation counts (``outputs`` is its per-task function)."""
    predicted, target, mask = outputs(student.eval(), teacher.eval(), tokenizer, examples, 64)
    return float(
        torch.nn.functional.kl_div(
            torch.log_softmax(predicted[mask], -1),
            torch.log_softmax(target[mask], -1),
            log_target=True,
            reduction="batchmean",
        )
    )


@pytest.mark.parametrize("kind", ["language-modeling", "translation"])
def test_distillation_moves_language_and_translation_models_towards_the_teacher(kind, gpt2_dir, tmp_path):
    from exporter.evaluation.distill import TASK_OUTPUTS
    from tests.helpers import make_trained_marian, successor_chains

    base = gpt2_dir if kind == "language-modeling" else make_trained_marian(tmp_path / "marian", seed=5, layers=2)
    # Whole layers' heads removed, cross attention included: far from the teacher before recovery.
    plan = (
        {"decoder": {"0": [0, 1, 2, 3], "1": [0, 1, 3], "2": [1, 2]}}
        if kind == "language-modeling"
        else {"encoder": {"0": [0, 1, 2]}, "decoder": {"1": [0, 1]}, "cross": {"0": [0, 1, 2, 3], "1": [1]}}
    )
    model = load_model(base).eval()
    apply_plan(model, HeadPlan.of(plan))
    pruned = save_pruned(model, load_tokenizer(base), tmp_path / "pruned", source=base)
    tokenizer, teacher, outputs = load_tokenizer(base), load_model(base), TASK_OUTPUTS[kind]
    if kind == "language-modeling":  # the texts the tiny LM learned: its predictions there depend on attention

        def texts(count, seed):
            return [{"text": tokenizer.decode(chain[:-1])} for chain in successor_chains(count, seed)]
    else:

        def texts(count, seed):
            return [{"source": text} for text in random_sentences(count, seed)]

    train = texts(160, 6)
    record = distill(pruned, base, train, tmp_path / "distilled", epochs=3, learning_rate=1e-3, batch_size=16)
    held_out = texts(32, 7)
    before = output_divergence(load_model(pruned), teacher, tokenizer, held_out, outputs)
    after = output_divergence(load_model(tmp_path / "distilled"), teacher, tokenizer, held_out, outputs)
    # On texts it was not trained on. The tiny LM's successor task needs little attention, so its pruned copy starts
    # close to the teacher and moves less than the translation model, whose cross attention carries the source.
    assert after < (0.8 if kind == "language-modeling" else 0.5) * before, (before, after)
    assert record["final_loss"] < record["first_loss"]

    # Beside the divergence: the next token the student would pick agrees with the teacher's more often.
    def agreement(folder) -> float:
        predicted, target, mask = outputs(load_model(folder).eval(), teacher.eval(), tokenizer, held_out, 64)
        return float((predicted.argmax(-1) == target.argmax(-1))[mask].float().mean())

    if kind == "translation":  # (the tiny LM's pruned copy already picks the teacher's token 99 % of the time)
        assert agreement(tmp_path / "distilled") > agreement(pruned)
    assert (
        HeadPlan.of_model(build_inventory(load_model(tmp_path / "distilled"))).to_dict() == HeadPlan.of(plan).to_dict()
    )  # the heads stay removed
    data = write_jsonl(tmp_path / "unlabelled.jsonl", train)  # no labels, no targets: what the command reads
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(pruned),
            "--teacher",
            str(base),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "cli"),
            "--max-examples",
            "32",
        ],
    )
    assert result.exit_code == 0 and "distilled 1 epoch(s) on 32 examples" in result.output, result.output
