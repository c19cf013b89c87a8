"""Recovery by distillation: a short fine-tune of a pruned model towards the unpruned model's outputs.

The paper prunes without retraining; a little training afterwards wins back much of what
pruning cost. The student (the pruned checkpoint, heads really removed) learns the
teacher's softened output distributions (Hinton et al. 2015) on unlabelled task text, so
no labels are needed and the student inherits the teacher's decisions, not new ones:
a classifier's class distribution; a language model's next-token distribution at every
real token; a translation model's next-token distribution at every token of the
teacher's own greedy translation (teacher-forced along it), so only source texts are needed.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from exporter.atomic import refuse_existing
from exporter.data import encode_batch, task_of
from exporter.errors import HeadpruneError
from exporter.evaluation.finetune import train_in_place
from exporter.evaluation.rescale import RECORD_FILE, load_pruned_and_teacher
from exporter.progress import Advance, no_progress
from exporter.pruning.checkpoint import load_tokenizer, save_pruned
from exporter.pruning.families import usable_positions
from exporter.tasks import TASKS


def _classifier_outputs(student, teacher, tokenizer, chunk: list[dict], max_length: int):
    batch = encode_batch(tokenizer, chunk, "classification", student.config, max_length)
    batch.pop("labels", None)
    with torch.no_grad():
        target = teacher(**batch).logits
    return student(**batch).logits, target, torch.ones(len(chunk), dtype=torch.bool)


def _language_model_outputs(student, teacher, tokenizer, chunk: list[dict], max_length: int):
    batch = encode_batch(tokenizer, chunk, "language-modeling", student.config, max_length)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        target = teacher(**inputs).logits
    return student(**inputs).logits, target, batch["attention_mask"].bool()


def _translation_outputs(student, teacher, tokenizer, chunk: list[dict], max_length: int):
    # Sources and translations stay within the position embeddings (the start token takes one).
    max_length = min(max_length, (usable_positions(teacher.config) or max_length + 1) - 1)
    sources = tokenizer(
        [str(e["source"]) for e in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        generated = teacher.generate(**sources, max_new_tokens=max_length, num_beams=1, do_sample=False)
        # Teacher-forced along the teacher's translation: the distributions at each of its tokens, EOS included.
        decoder_inputs, predicted = generated[:, :-1], generated[:, 1:]
        target = teacher(**sources, decoder_input_ids=decoder_inputs).logits
    mask = predicted != teacher.config.pad_token_id
    return student(**sources, decoder_input_ids=decoder_inputs).logits, target, mask


# Per task distillation applies to: (student logits, teacher logits, mask of the positions that count) of a batch.
TASK_OUTPUTS = {
    "classification": _classifier_outputs,
    "language-modeling": _language_model_outputs,
    "translation": _translation_outputs,
}


def distill(
    pruned_dir: str | Path,
    teacher_dir: str | Path,
    examples: list[dict],
    out: str | Path,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    temperature: float = 2.0,
    max_length: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    progress: Advance = no_progress,
) -> dict:
    """Trains the pruned classifier, language model or translation model in ``pruned_dir`` to match
    ``teacher_dir``'s output distributions on ``examples`` (texts, or a translation model's sources; labels and
    targets unused) and writes it to ``out`` (same heads, same shapes); returns the record saved as
    ``out/recovery.json``. The word embeddings stay frozen, as in fine-tuning."""
    refuse_existing(out, overwrite)
    if not examples:
        raise HeadpruneError("the distillation data holds no examples", "pass a file of texts from the task's domain")
    pruned_dir, teacher_dir = Path(pruned_dir), Path(teacher_dir)
    student, teacher = load_pruned_and_teacher(pruned_dir, teacher_dir, tuple(TASK_OUTPUTS))
    key, outputs = TASKS[task_of(student)].input, TASK_OUTPUTS[task_of(student)]
    tokenizer = load_tokenizer(pruned_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    teacher.eval()

    def loss_of(chunk: list[dict]) -> torch.Tensor:
        predicted, target, mask = outputs(student, teacher, tokenizer, chunk, max_length)
        predicted = F.log_softmax(predicted[mask] / temperature, dim=-1)
        target = F.log_softmax(target[mask] / temperature, dim=-1)
        # Scaled by T^2 so the gradients keep their size whatever the temperature.
        return F.kl_div(predicted, target, log_target=True, reduction="batchmean") * temperature**2

    started = time.monotonic()
    losses = train_in_place(
        student,
        examples,
        loss_of,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        rng=rng,
        progress=progress,
        key=key,
    )
    record = {
        "method": "distill",
        "teacher": str(teacher_dir),
        "examples": len(examples),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "temperature": temperature,
        "max_length": max_length,
        "seed": seed,
        "first_loss": losses[0],
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "seconds": round(time.monotonic() - started, 1),
    }
    save_pruned(student, tokenizer, out, source=pruned_dir, overwrite=overwrite, records={RECORD_FILE: record})
    return record
