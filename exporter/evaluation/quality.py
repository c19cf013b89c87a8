"""In-process quality of a model, optionally with heads masked: accuracy, BLEU or perplexity."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from exporter.data import batches, encode_batch, task_of
from exporter.errors import HeadpruneError
from exporter.evaluation.metrics import QualityScore, accuracy, bleu, perplexity
from exporter.progress import Advance, no_progress
from exporter.pruning.gates import HeadGates
from exporter.pruning.inventory import build_inventory, get_path
from exporter.pruning.plan import HeadPlan
from exporter.pruning.scoring import token_losses
from exporter.tasks import TASKS


class _Replay(nn.Module):
    """Stands in for a layer whose input and weights are unchanged: returns its recorded outputs in order."""

    def __init__(self, outputs: list):
        super().__init__()
        self.outputs, self.position = outputs, 0

    def forward(self, *args, **kwargs):
        output = self.outputs[self.position]
        self.position += 1
        return output


class Evaluator:
    """Evaluates one model on one example set, repeatedly, under different head masks.

    Batches are tokenised once (sorted by length to waste little on padding), so an
    ablation that evaluates dozens of masks pays for tokenisation only once. With
    ``replay`` (single-stack models, classification), the outputs of every layer in
    the unmasked run are recorded, and a mask whose heads all sit in layer l or above
    replays layers below l instead of computing them again. Results are memoised by
    mask: the model must not change while an Evaluator uses it.
    """

    def __init__(
        self,
        model,
        tokenizer,
        examples: list[dict],
        batch_size: int = 64,
        max_length: int = 128,
        max_new_tokens: int = 64,
        replay: bool = False,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = task_of(model)
        if TASKS[self.task].metric is None:
            raise HeadpruneError(
                "quality of a regression head (num_labels=1) is not measured by headprune: "
                "it evaluates accuracy for classifiers, BLEU for translation models and "
                "perplexity for language models",
                "score and prune it (importance uses squared error), then evaluate it with your own metric",
            )
        self.max_new_tokens = max_new_tokens
        key = TASKS[self.task].input
        ordered = sorted(examples, key=lambda e: len(str(e[key])))
        self.batches = [
            encode_batch(tokenizer, chunk, self.task, model.config, max_length)
            for chunk in batches(ordered, batch_size)
        ]
        self.references = [e.get("target") for e in ordered]
        self.inventory = build_inventory(model)
        self.gates = HeadGates(self.inventory)
        single_stack = len(self.inventory.family.attention_types) == 1
        self.stack = (
            get_path(model.base_model, self.inventory.family.attention_types[0].layers)
            if replay and single_stack
            else None
        )
        self.recorded: list[list] | None = None
        self._results: dict[frozenset, QualityScore] = {}

    @contextmanager
    def _replaying(self, plan: HeadPlan):
        masked_layers = [layer for layers in plan.removed.values() for layer in layers]
        first = min(masked_layers, default=0) if self.stack is not None and self.recorded else 0
        originals = [self.stack[i] for i in range(first)] if first else []
        for i in range(first):
            self.stack[i] = _Replay(self.recorded[i])
        try:
            yield
        finally:
            for i, layer in enumerate(originals):
                self.stack[i] = layer

    @contextmanager
    def _recording(self):
        if self.stack is None or self.recorded is not None:
            yield
            return
        recorded: list[list] = [[] for _ in self.stack]
        handles = [
            layer.register_forward_hook(lambda m, a, out, i=i: recorded[i].append(out))
            for i, layer in enumerate(self.stack)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        self.recorded = recorded

    def __call__(self, removed: HeadPlan | dict | None = None, progress: Advance = no_progress) -> QualityScore:
        """Returns the quality with the given original heads masked (none by default)."""
        plan = HeadPlan.of(removed)
        key = frozenset(
            (kind, layer, head)
            for kind, layers in plan.removed.items()
            for layer, heads in layers.items()
            for head in heads
        )
        if key not in self._results:
            self._results[key] = self._evaluate(plan, progress)
        return self._results[key]

    def _evaluate(self, plan: HeadPlan, progress: Advance) -> QualityScore:
        self.gates.mask(plan)
        record = self._recording() if not plan.removed else nullcontext()
        with torch.inference_mode(), self.gates, record, self._replaying(plan):
            return getattr(self, METRIC_MEASURES[TASKS[self.task].metric])(progress)

    def _accuracy(self, progress: Advance) -> QualityScore:
        predictions, labels = [], []
        for batch in self.batches:
            logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            predictions += logits.argmax(-1).tolist()
            labels += batch["labels"].tolist()
            progress(len(batch["labels"]))
        return accuracy(predictions, labels)

    def _perplexity(self, progress: Advance) -> QualityScore:
        statistics = []
        for batch in self.batches:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            losses = token_losses(logits.float(), batch["labels"])
            statistics += zip(losses.sum(-1).tolist(), (batch["labels"][:, 1:] != -100).sum(-1).tolist())
            progress(len(batch["labels"]))
        return perplexity(statistics)

    def _bleu(self, progress: Advance) -> QualityScore:
        hypotheses = []
        for batch in self.batches:
            generated = self.model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                max_new_tokens=self.max_new_tokens,
                num_beams=1,
                do_sample=False,
            )
            hypotheses += self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            progress(len(batch["input_ids"]))
        return bleu(hypotheses, self.references)


# Per quality metric of a task (exporter.tasks): the Evaluator method measuring it in process.
METRIC_MEASURES = {"accuracy": "_accuracy", "perplexity": "_perplexity", "bleu": "_bleu"}
