"""The paper's speed table (RQ5) on a GPU, with PyTorch: unpruned vs 50 % of the heads removed structurally.

Models: a BERT-base-shaped encoder (12 layers x 12 heads, hidden 768) with random weights, pruned by a fixed
seeded plan (6 heads removed in every layer); and, when its folder is given, the demo's fine-tuned MiniLM, pruned by
importance (50 % of its heads, scored on --score-data). For each batch size at one sequence length, each precision
(fp32, fp16, bf16 where the device supports it) and each attention implementation (eager, sdpa), the unpruned and
pruned models run in interleaved trials; a trial times enough forward passes to fill --trial-seconds, after
warm-up, with the device synchronised. The file written holds examples/s per trial, the median ratio pruned /
unpruned with the range over trials, and each variant's peak memory at the largest batch, with the device's name
and the library versions. On a CPU (--device cpu) it runs the same code, slowly: the tests use that.

    python -m benchmarks.gpu_speed --out benchmarks/results/gpu_speed.json [--minilm DIR --score-data FILE]

Where the GPU machine is reached through a tool carrying at most 64 MiB, ``--prepare-carry outputs/gpu-carry
--minilm DIR --score-data FILE`` first writes MiniLM in fp16 (about 45 MB) and a scoring subset to carry along.
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from exporter import apply_plan, build_inventory, compute_importance, load_model, load_tokenizer
from exporter.atomic import atomic_write_json
from exporter.data import read_examples
from exporter.pruning.plan import HeadPlan, plan_from_scores

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
VOCAB = 30522


def bert_base(shape: dict = BERT_BASE, seed: int = 0) -> torch.nn.Module:
    """Returns a randomly initialised BERT encoder classifier of ``shape`` (BERT-base by default)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=VOCAB, num_labels=2, **shape)).eval()


def half_of_every_layer(model, seed: int = 0) -> HeadPlan:
    """Returns a seeded plan removing half the heads of every layer (the paper's 50 % point, evenly spread)."""
    rng = random.Random(seed)
    removed = {}
    for layer in build_inventory(model).layers:
        removed.setdefault(layer.attention_type.name, {})[layer.index] = sorted(
            rng.sample(range(layer.original_heads), layer.original_heads // 2)
        )
    return HeadPlan(removed)


def half_by_importance(model, tokenizer, score_data: Path, examples: int = 256) -> HeadPlan:
    """Returns the plan removing the 50 % least important heads, scored on ``score_data``."""
    scores = compute_importance(model, tokenizer, read_examples(score_data, "classification")[:examples])
    return plan_from_scores(scores.scores, 0.5)


def pruned_copy(model, plan: HeadPlan):
    """Returns a structurally pruned copy of ``model``."""
    pruned = copy.deepcopy(model)
    apply_plan(pruned, plan)
    return pruned


def precisions(device: str) -> list[torch.dtype]:
    """Returns the precisions to measure on ``device``: fp32 everywhere, fp16 and bf16 on a CUDA device that has them."""
    if device == "cpu":
        return [torch.float32]
    return [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def examples_per_second(model, inputs: dict, device: str, seconds: float) -> float:
    """Returns examples/s of ``model`` on ``inputs``, timing as many forward passes as fill ``seconds``."""
    batch = inputs["input_ids"].shape[0]
    with torch.inference_mode():
        runs, began = 0, time.perf_counter()
        while True:
            model(**inputs)
            runs += 1
            _sync(device)
            elapsed = time.perf_counter() - began
            if elapsed >= seconds and runs >= 3:
                return runs * batch / elapsed


def peak_memory_mib(model, inputs: dict, device: str) -> float | None:
    """Returns the device memory (MiB) one forward pass of ``model`` needs: its weights plus the peak the pass adds
    (so another model resident on the device does not count); None on a CPU."""
    if not device.startswith("cuda"):
        return None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        model(**inputs)
    _sync(device)
    return (weights + torch.cuda.max_memory_allocated() - before) / 2**20


def measure_pair(
    name: str, base, pruned, device: str, batches: list[int], seq_len: int, trials: int, trial_seconds: float
) -> list[dict]:
    """Returns one row per (precision, attention, batch): examples/s per trial of both models and their ratio."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for dtype in precisions(device):
        for attention in ("eager", "sdpa"):
            models = {}
            for variant, source in (("unpruned", base), ("pruned", pruned)):
                model = copy.deepcopy(source).to(device=device, dtype=dtype)
                model.set_attn_implementation(attention)
                models[variant] = model
            for batch in batches:
                ids = torch.randint(1, VOCAB, (batch, seq_len), generator=generator)
                inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
                for model in models.values():  # warm-up: kernels chosen, caches filled
                    examples_per_second(model, inputs, device, trial_seconds / 4)
                speeds = {variant: [] for variant in models}
                for trial in range(trials):
                    order = list(models) if trial % 2 == 0 else list(models)[::-1]
                    for variant in order:
                        speeds[variant].append(examples_per_second(models[variant], inputs, device, trial_seconds))
                ratios = [p / u for p, u in zip(speeds["pruned"], speeds["unpruned"])]
                rows.append(
                    {
                        "model": name,
                        "precision": str(dtype).removeprefix("torch."),
                        "attention": attention,
                        "batch": batch,
                        "seq_len": seq_len,
                        "trials": trials,
                        "examples_per_s": speeds,
                        "speedup": statistics.median(ratios),
                        "speedup_min": min(ratios),
                        "speedup_max": max(ratios),
                        "peak_mib": {v: peak_memory_mib(m, inputs, device) for v, m in models.items()}
                        if batch == max(batches)
                        else None,
                    }
                )
            del models
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def environment(device: str) -> dict:
    """Returns the device's name and the versions the figures depend on."""
    import transformers

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def run(
    out: Path,
    device: str,
    batches: list[int],
    seq_len: int,
    trials: int,
    trial_seconds: float,
    shape: dict = BERT_BASE,
    minilm: Path | None = None,
    score_data: Path | None = None,
) -> dict:
    """Measures every model and writes ``out`` (JSON); returns what it wrote."""
    models = []
    base = bert_base(shape)
    models.append(("bert-base-shaped (random weights, fixed plan)", base, half_of_every_layer(base)))
    if minilm is not None:
        tuned = load_model(minilm).float()  # a carried copy may be stored in fp16
        plan = (
            half_by_importance(tuned, load_tokenizer(minilm), score_data) if score_data else half_of_every_layer(tuned)
        )
        models.append((f"MiniLM ({'importance' if score_data else 'fixed'} plan)", tuned, plan))
    rows = []
    for name, model, plan in models:
        pruned = pruned_copy(model, plan)
        heads = (build_inventory(model).kept_head_count(), build_inventory(pruned).kept_head_count())
        for row in measure_pair(name, model, pruned, device, batches, seq_len, trials, trial_seconds):
            rows.append({**row, "heads": {"unpruned": heads[0], "pruned": heads[1]}})
    result = {
        "environment": environment(device),
        "settings": {"batches": batches, "seq_len": seq_len, "trials": trials, "trial_seconds": trial_seconds},
        "rows": rows,
    }
    atomic_write_json(out, result)
    return result


def prepare_carry(folder: Path, minilm: Path, score_data: Path, examples: int = 256) -> Path:
    """Writes what the GPU machine needs besides the repository into ``folder``, under the device tool's 64 MiB:
    MiniLM's weights in fp16 (half the size) with its tokenizer, and the first ``examples`` scoring examples;
    returns ``folder``."""
    model, tokenizer = load_model(minilm), load_tokenizer(minilm)
    model.half().save_pretrained(folder / "minilm")
    tokenizer.save_pretrained(folder / "minilm")
    header = 0 if score_data.suffix.lower() in (".jsonl", ".json") else 1  # CSV/TSV keep their header line
    lines = score_data.read_text(encoding="utf-8").splitlines(keepends=True)[: examples + header]
    (folder / f"score{score_data.suffix}").write_text("".join(lines), encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_speed.json"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--minilm", type=Path, help="The demo's fine-tuned MiniLM folder (optional).")
    parser.add_argument("--score-data", type=Path, help="Scoring split for MiniLM's importance (optional).")
    parser.add_argument(
        "--prepare-carry",
        type=Path,
        metavar="FOLDER",
        help="Only write --minilm (fp16) and --score-data into FOLDER for the GPU machine, and stop.",
    )
    args = parser.parse_args(argv)
    if args.prepare_carry:
        if not (args.minilm and args.score_data):
            parser.error("--prepare-carry needs --minilm and --score-data")
        print(f"wrote {prepare_carry(args.prepare_carry, args.minilm, args.score_data)}")
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a machine with a GPU (or pass --device cpu)")
    result = run(
        args.out,
        args.device,
        [int(b) for b in args.batches.split(",")],
        args.seq_len,
        args.trials,
        args.trial_seconds,
        minilm=args.minilm,
        score_data=args.score_data,
    )
    for row in result["rows"]:
        print(
            f"{row['model']:48s} {row['precision']:8s} {row['attention']:5s} batch {row['batch']:3d}: "
            f"{row['speedup']:.3f}x [{row['speedup_min']:.3f}-{row['speedup_max']:.3f}]"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
