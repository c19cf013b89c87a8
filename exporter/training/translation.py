"""Training a small Marian translation model from parallel text, on a wall-clock budget, resumably.

The output folder holds ``tokenizer/`` (trained once), ``state/`` (weights, optimizer
and position, saved at every evaluation, so ``resume`` continues where an interrupted
run last evaluated), ``checkpoints/step-N/`` (a model folder per evaluation, for the
training-dynamics experiment), ``model/`` (the final model, a plain Hugging Face
folder) and ``training.json`` (settings, the BLEU-vs-time curve, the final test BLEU).
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from exporter.atomic import atomic_dir, atomic_write_json, read_json, refuse_existing
from exporter.errors import HeadpruneError
from exporter.evaluation.metrics import QualityScore
from exporter.evaluation.quality import Evaluator
from exporter.training.settings import TranslationSettings
from exporter.training.tokenizer import train_shared_bpe

RECORD_FILE = "training.json"


@dataclass(frozen=True)
class TrainingStatus:
    """Where training stands, passed to the progress callback after every step."""

    step: int
    epoch: int
    seconds: float
    loss: float
    tokens_per_second: float
    bleu: float | None


def learning_rate_factor(
    step: int,
    seconds: float,
    settings: TranslationSettings,
    warmup_steps: int | None = None,
    end_seconds: float | None = None,
) -> float:
    """Returns the multiplier of the peak rate at ``step``, ``seconds`` into the budget.

    Linear warm-up over ``warmup_steps`` (default: the settings'), then inverse square root decay (Vaswani et
    al.); over the last ``cooldown`` share of the training time (``end_seconds``, default the whole budget) the rate
    falls linearly to zero, because a run that stops on a clock ends far from converged, where annealing buys more
    than steps.
    """
    warmup = warmup_steps or settings.warmup_steps
    schedule = min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
    left = max(0.0, 1.0 - seconds / (end_seconds or settings.minutes * 60))
    return schedule * min(1.0, left / settings.cooldown) if settings.cooldown > 0 else schedule


# Past this share of the steps the budget allows (timed over the first steps), the warm-up gets a warning; a warm-up
# the budget cannot finish (a fixed 400 steps on a slow machine with a short budget) is cut to that share, since the
# rate would never reach its peak. A warm-up within reach is kept: the demo's 40-minute recipe depends on it.
MAX_WARMUP_SHARE = 0.25
MEASURED_STEPS = 20


def warmup_for(settings: TranslationSettings, seconds_per_step: float) -> tuple[int, str | None]:
    """Returns the warm-up steps for a run taking ``seconds_per_step`` (the settings', or ``MAX_WARMUP_SHARE`` of the
    steps the budget allows where the budget could not finish them) and a warning when it takes more than that
    share of the steps (None otherwise)."""
    expected = settings.minutes * 60 / max(seconds_per_step, 1e-9)
    share = settings.warmup_steps / expected
    if share <= MAX_WARMUP_SHARE:
        return settings.warmup_steps, None
    where = (
        f"at {seconds_per_step:.2f} s per step the {settings.minutes:g}-minute budget allows about {expected:,.0f} "
        f"steps"
    )
    if share < 1:
        return settings.warmup_steps, (
            f"warning: the {settings.warmup_steps}-step warm-up is {100 * share:.0f} % of "
            f"the training ({where}); give more --minutes or fewer --warmup-steps"
        )
    cut = max(1, int(MAX_WARMUP_SHARE * expected))
    return cut, (
        f"warm-up cut from {settings.warmup_steps} to {cut} steps: {where}, too few for the rate to reach "
        "its peak; give more --minutes for a better model"
    )


def _token_batches(lengths: list[tuple[int, int]], batch_tokens: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i][1], lengths[i][0]))
    result, current, longest = [], [], 0
    for index in order:
        longest_after = max(longest, *lengths[index])
        if current and longest_after * (len(current) + 1) > batch_tokens:
            result.append(current)
            current, longest_after = [], max(lengths[index])
        current.append(index)
        longest = longest_after
    if current:
        result.append(current)
    return result


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


class _Corpus:
    """The training pairs as token ids, grouped into length-sorted batches of about ``batch_tokens`` per side."""

    def __init__(self, tokenizer, examples: list[dict], settings: TranslationSettings):
        encoded = tokenizer(
            [e["source"] for e in examples],
            text_target=[e["target"] for e in examples],
            truncation=True,
            max_length=settings.max_length,
        )
        self.sources, self.targets = encoded["input_ids"], encoded["labels"]
        self.pad = tokenizer.pad_token_id
        self.batches = _token_batches(
            [(len(s), len(t)) for s, t in zip(self.sources, self.targets)], settings.batch_tokens
        )

    def epoch_order(self, seed: int, epoch: int) -> list[int]:
        order = list(range(len(self.batches)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        return order

    def batch(self, number: int) -> dict[str, torch.Tensor]:
        members = self.batches[number]
        sources = _pad([self.sources[i] for i in members], self.pad)
        return {
            "input_ids": sources,
            "attention_mask": (sources != self.pad).long(),
            "labels": _pad([self.targets[i] for i in members], -100),
        }


def _save_state(out: Path, model, optimizer, position: dict) -> None:
    with atomic_dir(out / "state", overwrite=True) as staging:
        save_model(model, str(staging / "model.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        atomic_write_json(staging / "position.json", position)


def _load_state(out: Path, model, optimizer, settings: TranslationSettings) -> dict:
    state = out / "state"
    position = read_json(
        state / "position.json", f"training state in '{out}' is unreadable", "start again with `overwrite`"
    )
    if position.get("settings") != settings.fixed():
        raise HeadpruneError(
            f"the run in '{out}' was started with other settings ({position.get('settings')})",
            "resume with the same settings (only the minutes may change), or start over with `overwrite`",
        )
    load_model(model, str(state / "model.safetensors"), strict=False, device=str(next(model.parameters()).device))
    optimizer.load_state_dict(torch.load(state / "optimizer.pt", weights_only=True))
    return position


def set_generation_defaults(model, settings: TranslationSettings) -> None:
    """Records in the model's generation config the token budget its BLEU was measured with, so transformers'
    ``generate`` and the served model (which read the config) translate as the training's evaluation did."""
    model.generation_config.max_new_tokens = settings.max_length


def _save_model(folder: Path, model, tokenizer, settings: TranslationSettings) -> None:
    set_generation_defaults(model, settings)
    with atomic_dir(folder, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def _evaluate(model, tokenizer, examples: list[dict], settings: TranslationSettings) -> QualityScore:
    device = next(model.parameters()).device
    model.cpu()  # the Evaluator's batches live on the CPU; moving the parameters in place keeps the optimizer's
    score = Evaluator(
        model, tokenizer, examples, batch_size=100, max_length=settings.max_length, max_new_tokens=settings.max_length
    )()
    model.to(device).train()
    return score


def given_tokenizer(folder: str | Path):
    """Returns the fast tokenizer saved in ``folder`` for a new translation model; raises HeadpruneError when there is
    none or it lacks the padding and end-of-sequence tokens a Marian model needs."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise HeadpruneError(
            f"'{folder}' holds no fast tokenizer (tokenizer.json)",
            "pass a folder written by a tokenizer's save_pretrained (use_fast=True)",
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    missing = [name for name in ("pad_token", "eos_token") if getattr(tokenizer, name) is None]
    if missing:
        raise HeadpruneError(
            f"the tokenizer in '{folder}' has no {' or '.join(missing)}",
            "set them (tokenizer.add_special_tokens) and save it again, or let train-mt train one",
        )
    return tokenizer


def _tokenizer(out: Path, train: list[dict], settings: TranslationSettings, given: str | Path | None = None):
    """Returns the run's tokenizer: ``given`` (a folder) or one trained on ``train``, saved once in ``out/tokenizer``
    and read back from there."""
    folder = out / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    tokenizer = (
        given_tokenizer(given)
        if given is not None
        else train_shared_bpe((text for e in train for text in (e["source"], e["target"])), settings.vocab_size)
    )
    with atomic_dir(folder, overwrite=True) as staging:
        tokenizer.save_pretrained(staging)
    return tokenizer


class _Run:
    """One training run in ``out``: model, optimizer and position (step, epoch, batch, seconds, curve)."""

    def __init__(
        self,
        out: Path,
        train: list[dict],
        settings: TranslationSettings,
        resume: bool,
        tokenizer: str | Path | None = None,
    ):
        from transformers import MarianMTModel

        self.out, self.settings = out, settings
        torch.manual_seed(settings.seed)
        self.tokenizer = _tokenizer(out, train, settings, tokenizer)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = MarianMTModel(settings.model_config(self.tokenizer)).to(self.device)  # before the optimizer
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0
        )
        self.position = {"step": 0, "epoch": 0, "batch": 0, "seconds": 0.0, "curve": [], "settings": settings.fixed()}
        if resume and (out / "state" / "position.json").is_file():
            self.position = _load_state(out, self.model, self.optimizer, settings)
        self.corpus = _Corpus(self.tokenizer, train, settings)
        self.loss = float("nan")
        # Evaluation seconds per sentence, from the latest checkpoint: the final evaluations must fit in the budget.
        self.eval_pace: float | None = None
        self.end_seconds = settings.minutes * 60

    def batches(self):
        """Yields the remaining batches in order, epoch after epoch, advancing the position as they are taken."""
        while True:
            order = self.corpus.epoch_order(self.settings.seed, self.position["epoch"])
            while self.position["batch"] < len(order):
                yield {k: v.to(self.device) for k, v in self.corpus.batch(order[self.position["batch"]]).items()}
                self.position["batch"] += 1
            self.position["epoch"] += 1
            self.position["batch"] = 0

    def step(self, batch: dict, seconds: float) -> int:
        """Takes one optimisation step on ``batch`` at ``seconds`` into the budget; returns its tokens (both sides)."""
        from transformers.models.marian.modeling_marian import shift_tokens_right

        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.learning_rate * learning_rate_factor(
                self.position["step"], seconds, self.settings, self.position.get("warmup_steps"), self.end_seconds
            )
        labels = batch["labels"]
        decoder_input_ids = shift_tokens_right(
            labels, self.tokenizer.pad_token_id, self.model.config.decoder_start_token_id
        )
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids
        ).logits
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            label_smoothing=self.settings.label_smoothing,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.position["step"] += 1
        self.loss = loss.item()
        return int((labels != -100).sum()) + int(batch["attention_mask"].sum())

    def checkpoint(self, seconds: float, dev: list[dict]) -> float:
        """Measures BLEU on ``dev``, records it on the curve, keeps a checkpoint and saves the state; returns BLEU."""
        began = time.monotonic()
        score = _evaluate(self.model, self.tokenizer, dev, self.settings)
        self.eval_pace = (time.monotonic() - began) / max(len(dev), 1)
        position = self.position
        position["curve"].append(
            {
                "step": position["step"],
                "epoch": position["epoch"],
                "seconds": seconds,
                "loss": self.loss,
                "bleu": score.value,
            }
        )
        position["seconds"] = seconds
        _save_model(
            self.out / "checkpoints" / f"step-{position['step']:06d}", self.model, self.tokenizer, self.settings
        )
        _save_state(self.out, self.model, self.optimizer, position)
        return score.value


def train_translation(
    train: list[dict],
    dev: list[dict],
    out: str | Path,
    settings: TranslationSettings = TranslationSettings(),
    test: list[dict] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[TrainingStatus], None] = lambda status: None,
    tokenizer: str | Path | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict:
    """Trains a Marian model on ``train`` (source/target dicts) for ``settings.minutes`` of wall-clock time.

    BLEU on (up to ``eval_sentences`` of) ``dev`` is measured every ``eval_minutes``
    and at the end, when the state and a checkpoint are saved; the final model is
    scored on ``test`` if given. ``tokenizer`` (a folder) is used instead of training a shared BPE one; ``say``
    receives a line for each phase. Returns the training record (also ``out/training.json``).
    A finished run in ``out`` is returned as is with ``resume``; an existing ``out`` is
    refused unless ``resume`` or ``overwrite``.

    The budget includes the final evaluations: training stops when the time left is what the last dev and test
    evaluations will take at the pace of the latest periodic one (the learning rate cools down to that end). A warm-up
    taking more than a quarter of the steps the budget allows (timed over the first steps) gets a warning, and one
    the budget could not finish is cut to that quarter; the record says which warm-up was used.
    """
    out = Path(out)
    if not resume:
        refuse_existing(out, overwrite, resumable=True)
    record_path = out / RECORD_FILE
    if resume and record_path.is_file():
        record = read_json(
            record_path, f"training record '{record_path}' is unreadable", "start again with `overwrite`"
        )
        if record.get("finished"):
            return record
    if not train:
        raise HeadpruneError("the training data holds no pairs", "pass a file of source/target pairs")
    if overwrite and not resume and out.exists():
        shutil.rmtree(out)  # asked for: a fresh run replaces the old one's state and checkpoints
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(out, train, settings, resume, tokenizer)
    dev = dev[: settings.eval_sentences]
    run.model.train()
    started, spent_before = time.monotonic(), run.position["seconds"]
    curve = run.position["curve"]
    next_eval = (curve[-1]["seconds"] if curve else 0.0) + settings.eval_minutes * 60
    bleu = curve[-1]["bleu"] if curve else None
    window_tokens, window_start = 0, time.monotonic()
    budget, steps_before = settings.minutes * 60, run.position["step"]
    for batch in run.batches():
        seconds = spent_before + time.monotonic() - started
        if seconds >= next_eval or seconds >= run.end_seconds:
            bleu = run.checkpoint(seconds, dev)
            next_eval = seconds + settings.eval_minutes * 60
            if seconds < run.end_seconds:
                # Time for the final dev checkpoint and the test evaluation, at this checkpoint's pace; where that
                # leaves none, this checkpoint is the final one.
                run.end_seconds = max(seconds, budget - run.eval_pace * (len(dev) + len(test or [])))
            if seconds >= run.end_seconds:
                break
        window_tokens += run.step(batch, seconds)
        now = time.monotonic()
        if "warmup_steps" not in run.position and run.position["step"] - steps_before >= MEASURED_STEPS:
            pace = (now - started) / (run.position["step"] - steps_before)
            run.position["warmup_steps"], warning = warmup_for(settings, pace)
            if warning:
                say(warning)
        progress(
            TrainingStatus(
                run.position["step"],
                run.position["epoch"],
                spent_before + now - started,
                run.loss,
                window_tokens / max(now - window_start, 1e-9),
                bleu,
            )
        )
        if now - window_start > 30:  # tokens/s over the last half minute or so
            window_tokens, window_start = 0, now
    model = run.model.cpu()
    say(
        f"training stopped at {seconds / 60:.1f} min, step {run.position['step']}; saving the model"
        + (f" and translating {len(test)} test sentences" if test else "")
    )
    _save_model(out / "model", model, run.tokenizer, settings)
    record = {
        "settings": dataclasses.asdict(settings),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "device": run.device,
        "curve": run.position["curve"],
        "dev_sentences": len(dev),
        "finished": True,
        "warmup_steps": run.position.get("warmup_steps", settings.warmup_steps),
    }
    if test:
        record["test"] = _evaluate(model, run.tokenizer, test, settings).to_dict() | {"references": 1}
    record["seconds"] = spent_before + time.monotonic() - started  # all of it, final evaluations included
    atomic_write_json(record_path, record)
    return record
