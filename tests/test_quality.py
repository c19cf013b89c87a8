"""In-process evaluation: replaying unchanged layers gives exactly the numbers of a full evaluation."""

from __future__ import annotations

import torch

from exporter import build_inventory, load_model, load_tokenizer
from exporter.data import read_examples
from exporter.evaluation.experiments import single_head_ablation
from exporter.evaluation.quality import Evaluator


def test_replay_gives_the_logits_of_a_full_evaluation(bert_dir, cls_data):
    model, tokenizer = load_model(bert_dir), load_tokenizer(bert_dir)
    examples = read_examples(cls_data, "classification")
    full = Evaluator(model, tokenizer, examples, batch_size=16)
    fast = Evaluator(model, tokenizer, examples, batch_size=16, replay=True)
    inventory = build_inventory(model)
    logits: list[torch.Tensor] = []
    model.classifier.register_forward_hook(lambda module, args, out: logits.append(out.clone()))

    def run(evaluator, mask):
        logits.clear()
        evaluator(mask)
        return torch.cat(logits)

    unmasked = run(fast, None)  # records every layer's outputs
    for mask in ({"encoder": {2: [1]}}, {"encoder": {1: [0, 3], 2: [2]}}, {"encoder": {0: [1]}}):
        replayed = run(fast, mask)
        assert torch.equal(replayed, run(full, mask))
        assert not torch.equal(replayed, unmasked)
    assert single_head_ablation(fast, inventory) == single_head_ablation(full, inventory)
    calls = []
    fast.stack[0].register_forward_hook(lambda *a: calls.append(1))
    fast({"encoder": {2: [1, 2]}})
    assert calls == []  # layer 0 was replayed, not computed
    fast({"encoder": {0: [1, 2]}})
    assert calls  # a mask in layer 0 computes it
    calls.clear()
    assert fast({"encoder": {0: [1, 2]}}) is fast({"encoder": {"0": [1, 2]}})  # memoised, whatever the key type
    assert calls == []
    assert all(fast.stack[i] is layer.layer for i, layer in enumerate(inventory.layers))


def test_scores_and_changes_follow_one_rule_of_two_decimals():
    from exporter.evaluation.metrics import format_points

    assert [format_points(v) for v in (42.1, 0.03, 0.0)] == ["42.10", "0.03", "0.00"]
    # A significant change that rounds to nothing keeps its first digit: never "-0.00" beside p = 0.01.
    assert [format_points(v, sign=True) for v in (-0.004, -0.8, 0.0)] == ["-0.004", "-0.80", "+0.00"]
