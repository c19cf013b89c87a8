"""The headline: each lever's share of the served speedup, step by step, from the journal of one comparison.

A step's share is its throughput over the previous step's, with a bootstrap interval drawn from both
cells' measurements (trials, then requests within them); the shares multiply to the total.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serving.benchmark.latency import LatencyStats, Speedup, bootstrap_throughput, ratios


def _cell(records: list[dict], name: str, batch: int) -> tuple[list[list[float]], list[float]]:
    rows = [r for r in records if r.get("record") == "latency" and r["deployment"] == name and r["batch_size"] == batch
            and r["concurrency"] == 1]
    return [r["latencies_ms"] for r in rows], [r["throughput"] for r in rows]


def read_journal(folder: Path) -> list[dict]:
    """Returns the records of a comparison's measurements.jsonl."""
    return [json.loads(line) for line in (folder / "measurements.jsonl").read_text().splitlines() if line.strip()]


def p50_ratio(records: list[dict], baseline: str, candidate: str, batch: int, seed: int = 0,
              replicates: int = 2000) -> dict:
    """Returns candidate / baseline p50 latency at ``batch`` with a 95 % bootstrap interval (trials, then requests)."""
    rng = np.random.default_rng(seed)

    def draws(name: str) -> tuple[float, np.ndarray]:
        trials = [np.asarray(t) for t in _cell(records, name, batch)[0]]
        values = np.empty(replicates)
        for i in range(replicates):
            picked = [trials[j] for j in rng.integers(0, len(trials), len(trials))]
            values[i] = np.median(np.concatenate([t[rng.integers(0, t.size, t.size)] for t in picked]))
        return float(np.median(np.concatenate(trials))), values

    (base, base_draws), (cand, cand_draws) = draws(baseline), draws(candidate)
    low, high = np.percentile(cand_draws / base_draws, [2.5, 97.5])
    return {"baseline_p50_ms": base, "candidate_p50_ms": cand, "ratio": cand / base, "ci_low": float(low),
            "ci_high": float(high), "requests": [sum(len(t) for t in _cell(records, n, batch)[0]) for n in (baseline, candidate)]}


def step_shares(records: list[dict], steps: list[str], batch: int, seed: int = 0) -> list[dict]:
    """Returns, for each step after the first, its throughput share over the previous step and the cumulative
    speedup over the first, both with bootstrap intervals."""
    rng = np.random.default_rng(seed)
    cells = {name: _cell(records, name, batch) for name in steps}
    stats = {name: LatencyStats.from_trials(*cell) for name, cell in cells.items()}
    draws = {name: bootstrap_throughput(*cell, rng) for name, cell in cells.items()}
    rows = []
    for previous, step in zip(steps, steps[1:]):
        share = Speedup.between(stats[previous], stats[step], ratios(draws[previous], draws[step]))
        total = Speedup.between(stats[steps[0]], stats[step], ratios(draws[steps[0]], draws[step]))
        rows.append({"step": step, "share": share.to_dict(), "cumulative": total.to_dict(),
                     "throughput": stats[step].throughput})
    return rows
