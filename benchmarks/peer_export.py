"""The peer's pipeline, run by the peer's own Python (transformers 4.x and Optimum, see benchmarks/peer.py):
prune the checkpoint's heads with transformers' classic ``prune_heads``, export with Optimum and optimize at O2.

Usage: python peer_export.py CHECKPOINT HEAD_PLAN_JSON OUT_FOLDER   (prints a JSON summary on the last line)
This file imports nothing from headprune: it must run in the peer's environment only.
"""

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch

# Optimum 1.x was written for the TorchScript exporter; torch >= 2.9 defaults to the dynamo one, whose
# external-data handling Optimum 1.x does not expect. Patched before Optimum imports `export`.
_export = torch.onnx.export
torch.onnx.export = lambda *args, **kwargs: _export(*args, **{"dynamo": False, **kwargs})

from optimum.exporters.onnx import main_export  # noqa: E402
from optimum.onnxruntime import ORTOptimizer  # noqa: E402
from optimum.onnxruntime.configuration import AutoOptimizationConfig  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402


def main() -> None:
    checkpoint, plan_file, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    plan = json.loads(plan_file.read_text())["plan"]["encoder"]  # headprune's head_plan.json
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    model.prune_heads({int(layer): list(heads) for layer, heads in plan.items()})
    pruned = out / "pruned"
    model.save_pretrained(pruned)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(pruned)
    main_export(str(pruned), output=str(out / "onnx"), task="text-classification")
    optimizer = ORTOptimizer.from_pretrained(str(out / "onnx"))
    optimizer.optimize(save_dir=str(out / "o2"), optimization_config=AutoOptimizationConfig.O2())
    print(
        json.dumps(
            {
                "onnx": str(out / "o2" / "model_optimized.onnx"),
                "pruned": str(pruned),
                "versions": {p: version(p) for p in ("transformers", "optimum", "onnxruntime", "torch")},
            }
        )
    )


if __name__ == "__main__":
    main()
