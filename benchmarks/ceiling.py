"""The most heads and INT8 can give on this CPU: in process, against the unpruned FP32 model, INT8 alone, the
headline's model, and the model with every head but one removed (accuracy aside), in FP32 and INT8, next to the
8-bit instructions the CPU offers (INT8's speedup depends on them)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks import inprocess
from benchmarks.served import export_variants, onnx_path
from exporter.machine import int8_instructions
from exporter.pruning.checkpoint import load_model
from exporter.pruning.inventory import build_inventory
from exporter.pruning.prune import prune_checkpoint
from exporter.pruning.scores import HeadScores


def _heads(model) -> int:
    return build_inventory(model).kept_head_count()


def measure_ceiling(
    base: Path, scores: Path, headline: Path, headline_onnx: Path, rounds: int = 5, seq_len: int = 128
) -> dict:
    """Returns throughput (batch 1 and 16) and p50 (batch 1) of each variant against the unpruned FP32 ``base``,
    in process: INT8 alone, the headline's ONNX file (of checkpoint ``headline``), and ``base`` pruned to one head
    by ``scores`` (FP32 and INT8)."""
    model = load_model(base)
    total, vocab_size = _heads(model), model.config.vocab_size
    with tempfile.TemporaryDirectory(prefix="headprune-ceiling-") as folder:
        one_head = prune_checkpoint(
            base, Path(folder) / "one_head", scores=HeadScores.load(scores), fraction=(total - 1) / total
        )
        repo = Path(folder) / "repo"
        export_variants(
            {
                "base": (base, "fp32"),
                "int8": (base, "int8"),
                "one_head": (one_head.out, "fp32"),
                "one_head_int8": (one_head.out, "int8"),
            },
            repo,
            16,
        )
        files = {name: onnx_path(repo, name) for name in ("base", "int8", "one_head", "one_head_int8")}
        files["headline"] = headline_onnx
        sessions = {name: inprocess.session(path) for name, path in files.items()}
        blocks = {}
        for batch in (1, 16):
            inputs = {name: inprocess.feed(s, batch, seq_len, vocab_size=vocab_size) for name, s in sessions.items()}
            blocks[batch] = inprocess.timed_blocks(
                {n: (lambda s=s, n=n: s.run(None, inputs[n])) for n, s in sessions.items()}, rounds
            )
    variants = {
        "int8": ("INT8 alone", total, "int8"),
        "headline": ("the headline's model", _heads(load_model(headline)), "int8"),
        "one_head": ("every head but one removed", one_head.heads, "fp32"),
        "one_head_int8": ("every head but one removed", one_head.heads, "int8"),
    }
    base_p50 = inprocess.block_stats(blocks[1]["base"], 1).p50
    rows = [
        {
            "model": name,
            "what": what,
            "heads": kept,
            "precision": precision,
            "b16": inprocess.speedup(blocks[16]["base"], blocks[16][name], 16).to_dict(),
            "b1": inprocess.speedup(blocks[1]["base"], blocks[1][name], 1).to_dict(),
            "p50_b1_ratio": inprocess.block_stats(blocks[1][name], 1).p50 / base_p50,
        }
        for name, (what, kept, precision) in variants.items()
    ]
    return {
        "int8_instructions": int8_instructions(),
        "original_heads": total,
        "seq_len": seq_len,
        "rounds": rounds,
        "baseline_p50_b1_ms": base_p50,
        "rows": rows,
    }
