"""Decoder-only language models: task, loss and perplexity agree with transformers; grouped-query attention keeps
a key/value head while any query head of its group remains; pruned checkpoints round-trip."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from exporter import HeadPlan, apply_plan, build_inventory, load_model, load_tokenizer
from exporter.data import encode_batch, read_examples, task_of
from exporter.errors import HeadpruneError
from exporter.evaluation.quality import Evaluator
from exporter.pruning.checkpoint import model_task, save_pruned
from exporter.pruning.scoring import batch_loss


@pytest.mark.parametrize("fixture", ["gpt2_dir", "llama_dir"])
def test_loss_and_perplexity_equal_transformers_own(request, fixture, lm_data):
    path = request.getfixturevalue(fixture)
    model, tokenizer = load_model(path), load_tokenizer(path)
    assert task_of(model) == model_task(path) == "language-modeling"
    examples = read_examples(lm_data, "language-modeling")
    assert len(examples) == 24  # the blank line is skipped
    batch = encode_batch(tokenizer, examples[:6], "language-modeling", model.config)
    assert (batch["attention_mask"] == 0).any()  # padded: padding must not count
    predicted = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        summed = batch_loss(model, batch).item()
        per_text = []
        for example in examples[:6]:
            ids = tokenizer(example["text"], return_tensors="pt")["input_ids"]
            per_text.append((model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1), ids.shape[1] - 1))
    assert summed == pytest.approx(sum(nll for nll, _ in per_text), rel=1e-4)
    assert predicted == sum(n for _, n in per_text)
    quality = Evaluator(model, tokenizer, examples[:6], batch_size=4)()
    assert quality.metric == "perplexity"
    assert quality.value == pytest.approx(math.exp(summed / predicted), rel=1e-4)


def test_masking_a_head_changes_perplexity_and_best_is_lowest(llama_dir, lm_data):
    model, tokenizer = load_model(llama_dir), load_tokenizer(llama_dir)
    evaluator = Evaluator(model, tokenizer, read_examples(lm_data, "language-modeling"))
    base = evaluator()
    masked = evaluator(HeadPlan({"decoder": {0: [0, 1, 2]}}))
    assert abs(masked.value - base.value) > 1e-3 * base.value
    from exporter.evaluation.experiments import best_head_per_layer

    best = best_head_per_layer(evaluator, build_inventory(model))
    for index, entry in best.layers["decoder"].items():
        layer = build_inventory(model).get("decoder", int(index))
        values = [
            evaluator(HeadPlan({"decoder": {layer.index: [h for h in layer.kept if h != keep]}})).value
            for keep in layer.kept
        ]
        assert entry["metric"] == min(values)  # perplexity: lower is better


def kv_rows(model, index: int) -> int:
    return build_inventory(model).get("decoder", index).module("key").weight.shape[0]


def test_grouped_query_heads_keep_their_key_value_head_until_the_whole_group_is_gone(llama_dir, tmp_path):
    model = load_model(llama_dir)  # 4 query heads, 2 key/value heads (groups {0, 1} and {2, 3}), head size 8
    plan = {"decoder": {0: [0, 1], 1: [0], 2: [0, 1, 2, 3]}}
    inputs = {"input_ids": torch.randint(3, 40, (2, 9))}
    shrunk = copy.deepcopy(model)
    inventory = apply_plan(shrunk, HeadPlan(plan))
    assert kv_rows(shrunk, 0) == 8  # group 0 gone with both its query heads: one key/value head left
    assert kv_rows(shrunk, 1) == 3 * 8  # groups of 1 and 2 query heads: group 1's head is computed twice
    assert inventory.get("decoder", 1).key_value_heads() == [0, 1, 1]
    assert inventory.removed_key_value_heads() == {"decoder": {"0": [0], "2": [0, 1]}}
    assert inventory.summary(shrunk)["attention_types"]["decoder"]["key_value_heads_per_layer"] == [1, 2, 0]
    # Pruning again composes, from the already shrunk layout.
    again = copy.deepcopy(shrunk)
    apply_plan(again, HeadPlan({"decoder": {1: [2]}}))
    assert kv_rows(again, 1) == 2 * 8
    once = copy.deepcopy(model)
    apply_plan(once, HeadPlan({"decoder": {0: [0, 1], 1: [0, 2], 2: [0, 1, 2, 3]}}))
    with torch.no_grad():
        assert torch.allclose(again(**inputs).logits, once(**inputs).logits, atol=1e-5)
    saved = save_pruned(shrunk, load_tokenizer(llama_dir), tmp_path / "pruned", source=llama_dir)
    record = (saved / "head_plan.json").read_text()
    assert '"removed_key_value_heads"' in record
    with torch.no_grad():
        assert torch.allclose(load_model(saved)(**inputs).logits, shrunk(**inputs).logits, atol=1e-6)


def test_gpt2_checkpoint_round_trips_and_generates_with_a_headless_layer(gpt2_dir, tmp_path):
    model = load_model(gpt2_dir)
    plan = HeadPlan({"decoder": {0: [0, 1, 2, 3], 1: [2]}})  # layer 0 headless: generation reads its cache length
    ids = torch.tensor([[5, 9, 12, 7]])
    with torch.no_grad():
        from exporter import HeadGates

        with HeadGates(build_inventory(model)).mask(plan):
            masked = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=1)
    apply_plan(model, plan)
    saved = save_pruned(model, load_tokenizer(gpt2_dir), tmp_path / "gpt2", source=gpt2_dir)
    reloaded = load_model(saved)
    assert reloaded.transformer.h[1].attn.c_attn.weight.shape == (32, 3 * 24)  # fused Q|K|V, 3 heads each
    with torch.no_grad():
        assert torch.equal(reloaded.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=1), masked)
        # Step by step through the KV cache, positions are read from the cache's length (layer 0's included).
        first = reloaded(input_ids=ids[:, :3], use_cache=True)
        step = reloaded(input_ids=ids[:, 3:], cache=first.past_key_values).logits[:, -1]
        assert torch.allclose(step, reloaded(input_ids=ids).logits[:, -1], atol=1e-5)


def test_plain_text_data_needs_a_language_model_and_other_formats_name_their_text_column(lm_data, tmp_path):
    with pytest.raises(HeadpruneError, match="lacks label"):
        read_examples(lm_data, "classification")
    (tmp_path / "lm.jsonl").write_text('{"passage": "the film"}\n')
    with pytest.raises(HeadpruneError, match="lacks text"):
        read_examples(tmp_path / "lm.jsonl", "language-modeling")
    assert read_examples(tmp_path / "lm.jsonl", "language-modeling", columns={"text": "passage"}) == [
        {"text": "the film"}
    ]


def test_left_padding_tokenizers_score_as_right_padding_ones(llama_dir, lm_data):
    """Llama's own tokenizers pad on the left; without position ids that would shift every padded row."""
    model, tokenizer = load_model(llama_dir), load_tokenizer(llama_dir)
    examples = read_examples(lm_data, "language-modeling")
    right = Evaluator(model, tokenizer, examples, batch_size=8)().value
    tokenizer.padding_side = "left"
    assert Evaluator(model, tokenizer, examples, batch_size=8)().value == pytest.approx(right, rel=1e-6)


def test_gpt2_fused_projection_counts_once_and_one_token_texts_have_no_perplexity(gpt2_dir, tmp_path):
    model = load_model(gpt2_dir)
    attention = model.transformer.h[0].attn
    expected = sum(p.numel() for m in (attention.c_attn, attention.c_proj) for p in m.parameters())
    assert build_inventory(model).get("decoder", 0).parameter_count() == expected
    (tmp_path / "short.txt").write_text("fun\ngreat\n")
    with pytest.raises(HeadpruneError, match="none of the 2 texts has a token to predict"):
        Evaluator(model, load_tokenizer(gpt2_dir), read_examples(tmp_path / "short.txt", "language-modeling"))()


def test_generation_stops_at_any_end_of_sequence_id():
    from exporter.triton.models.search import CausalSearch

    script = iter([5, 9, 7])  # per step, the token every row picks

    def step(feeds):
        rows = feeds["input_ids"].shape[0]
        logits = np.zeros((rows, 12), dtype=np.float32)
        logits[:, next(script)] = 1.0
        present = np.zeros((rows, 1, feeds["attention_mask"].shape[1], 2), dtype=np.float32)
        return {"logits": logits, "present.0.key": present, "present.0.value": present}

    search = CausalSearch(step, {"heads": [1], "head_size": 2}, eos_ids=[11, 9], pad_id=0)
    assert search.greedy([[3, 4], [6]], max_new_tokens=3) == [[5, 9], [5, 9]]
