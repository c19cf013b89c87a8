"""Fine-tuning's defaults, written once: the library and the ``finetune`` command both read them.

Light to import (no PyTorch), so the command line can show them in ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FinetuneSettings:
    """How a classifier is fine-tuned on CPU."""

    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-4
    max_length: int = 64
    seed: int = 0
    freeze_embeddings: bool = True


# Texts `recover --method rescale` fits on by default: enough for one scale per head, and every
# layer replays both models over them.
RESCALE_EXAMPLES = 256
