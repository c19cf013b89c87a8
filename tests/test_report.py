"""The comparison report's statistics on synthetic measurements whose truth is known (no server, no models)."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest

from exporter.errors import HeadpruneError
from serving.benchmark.compare import CompareSettings
from serving.benchmark.latency import Speedup, bootstrap_throughput, min_samples, supported
from serving.report.document import build_document, render_markdown
from serving.report.model import Report
from serving.report.report import build_report, render_report, write_report

ENVIRONMENT = {
    "machine": {"platform": "test", "cpus": 1},
    "libraries": {},
    "server": {"name": "triton", "version": "0"},
}


def markdown(report) -> str:
    """Returns report.md of ``report``: the verdict in the first five lines, then every table."""
    return render_markdown(build_document(report))


@dataclass
class Facts:
    """The static facts a report reads from a deployment (made up here)."""

    name: str
    heads: int
    flops_per_example: int
    original_heads: int = 12
    weights_sha256: str = "0" * 8

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "pruned_share": 1 - self.heads / self.original_heads,
            "heads_per_layer": {"encoder": [self.heads // 2, self.heads - self.heads // 2]},
            "parameters": 1000 + self.heads,
            "attention_parameters": 100 + self.heads,
            "onnx_bytes": 10**6,
        }


def latency_records(
    name: str,
    rng: np.random.Generator,
    mean_ms: float,
    requests: int,
    trials: int,
    batch_sizes=(1, 4),
    concurrency=(1,),
) -> list[dict]:
    """Returns the journal's latency records of one deployment: lognormal latencies of mean ``mean_ms``, and the
    throughput a closed loop with those latencies has."""
    records = []
    for trial in range(trials):
        for batch in batch_sizes:
            for clients in concurrency:
                latencies = mean_ms * rng.lognormal(-(0.3**2) / 2, 0.3, requests)
                throughput = clients * batch * 1000 / latencies.mean()
                records.append(
                    {
                        "record": "latency",
                        "deployment": name,
                        "batch_size": batch,
                        "concurrency": clients,
                        "trial": trial,
                        "windows": 1,
                        "latencies_ms": latencies.tolist(),
                        "wall_s": requests * batch / throughput,
                        "throughput": throughput,
                        "server": {
                            "queue_us": 5.0,
                            "compute_input_us": 7.0,
                            "compute_infer_us": 10.0,
                            "compute_output_us": 3.0,
                        },
                    }
                )
    return records


def quality(name: str, value: float) -> dict:
    return {
        "record": "quality",
        "deployment": name,
        "metric": "accuracy",
        "value": value,
        "examples": 1000,
        "signature": "",
    }


def make_report(
    tmp_path,
    speeds: dict[str, float],
    accuracies: dict[str, float] | None = None,
    requests: int = 200,
    trials: int = 3,
    max_drop: float | None = None,
    batch_sizes=(1, 4),
    concurrency=(1,),
    seed: int = 7,
    per_example: dict[str, list[int]] | None = None,
):
    """Returns a report of 'base' and candidates whose latencies are truly ``speeds[name]`` times lower (with
    ``per_example`` correctness, whose mean then is the accuracy)."""
    rng = np.random.default_rng(seed)
    names = ["base", *speeds]
    accuracies = accuracies or {}
    records = [{"record": "start", "signature": {}, "started": 0.0}]
    records += [quality(n, accuracies.get(n, 0.9)) for n in names]
    for record in records[1:]:
        if per_example and record["deployment"] in per_example:
            correct = per_example[record["deployment"]]
            record.update(value=sum(correct) / len(correct), examples=len(correct), per_example=correct)
    for name in names:
        records += latency_records(name, rng, 10.0 / speeds.get(name, 1.0), requests, trials, batch_sizes, concurrency)
    settings = CompareSettings(
        repo=tmp_path / "repo",
        baseline="base",
        candidates=list(speeds),
        data=tmp_path / "d",
        out=tmp_path,
        batch_sizes=list(batch_sizes),
        concurrency=list(concurrency),
        trials=trials,
        max_drop=max_drop,
    )
    deployment_facts = {n: Facts(n, 12 - 2 * i, 1000 - 100 * i) for i, n in enumerate(names)}
    return build_report(settings, deployment_facts, records, ENVIRONMENT, ["headprune", "compare"])


def speedups(report: Report, name: str) -> list[dict]:
    return [s for s in report.to_dict()["speedups"] if s["candidate"] == name]


def test_a_true_speedup_gets_an_interval_around_it_that_excludes_one(tmp_path):
    report = make_report(tmp_path, {"fast": 1.3})
    for s in speedups(report, "fast"):
        assert 1 < s["ci_low"] <= 1.3 <= s["ci_high"] < 1.45, s
        assert s["ci_low"] <= s["ratio"] <= s["ci_high"] and s["significant"]
        assert (s["baseline_trials"], s["candidate_trials"], s["baseline_requests"], s["candidate_requests"]) == (
            3,
            3,
            600,
            600,
        )
        assert s["predicted"] == pytest.approx(1000 / 900)
    mean = report.to_dict()["mean_speedups"]["fast"]
    assert mean["ci_low"] <= 1.3 <= mean["ci_high"] and mean["significant"] and mean["cells"] == 2


def test_identical_distributions_are_not_significant(tmp_path):
    report = make_report(tmp_path, {"same": 1.0})
    for s in speedups(report, "same"):
        assert s["ci_low"] < 1 < s["ci_high"] and not s["significant"]
        assert s["ci_high"] / s["ci_low"] < 1.15  # an honest interval, not an arbitrarily wide one
    line = markdown(report).splitlines()[2]
    assert line.startswith("- **same**") and line.count("(n.s.)") == 2
    assert not report.verdict().significant and "not significantly different" in report.verdict().text


def test_intervals_cover_the_true_speedup_about_95_percent_of_the_time():
    covered = 0
    runs = 60
    for seed in range(runs):
        rng = np.random.default_rng(1000 + seed)
        sides = []
        for mean_ms in (10.0, 10.0 / 1.2):
            trials = [mean_ms * rng.lognormal(-(0.3**2) / 2, 0.3, 50) for _ in range(3)]
            throughputs = [1000 / t.mean() for t in trials]
            draws = bootstrap_throughput(trials, throughputs, np.random.default_rng(seed))
            sides.append((float(np.mean(throughputs)), draws))
        (base, base_draws), (cand, cand_draws) = sides
        s = Speedup.from_draws(cand / base, cand_draws / base_draws, 3, 3, 150, 150)
        covered += s.ci_low <= 1.2 <= s.ci_high
    assert 0.85 * runs <= covered


def test_bootstrap_is_deterministic_and_handles_trials_of_different_sizes():
    latencies = [[10.0, 11.0, 12.0], [20.0] * 7]
    first = bootstrap_throughput(latencies, [100.0, 50.0], np.random.default_rng(3), replicates=500)
    second = bootstrap_throughput(latencies, [100.0, 50.0], np.random.default_rng(3), replicates=500)
    assert np.array_equal(first, second) and first.shape == (500,)
    # The second trial never varies, so a draw of it alone is exactly its throughput; both trials average to 75.
    assert first.min() >= 50.0 - 1e-9 and first.max() <= 100 * 11 / 10 + 1e-9
    assert 60 < first.mean() < 90


def test_bootstrap_resamples_trials_as_well_as_requests():
    # Three trials that disagree (drift between rounds) while requests within each barely vary: the interval
    # must reflect the disagreement between trials, not only the tiny spread of the requests.
    rng = np.random.default_rng(0)
    latencies = [mean + 0.01 * rng.standard_normal(100) for mean in (9.0, 10.0, 11.0)]
    throughputs = [1000 / t.mean() for t in latencies]
    draws = bootstrap_throughput(latencies, throughputs, np.random.default_rng(1))
    low, high = np.percentile(draws, [2.5, 97.5])
    assert high - low > 0.5 * (max(throughputs) - min(throughputs))
    assert min(throughputs) - 0.1 <= low < np.mean(throughputs) < high <= max(throughputs) + 0.1


def test_speedup_formats_its_interval_and_notes():
    assert Speedup(1.234, 1.15, 1.31, 3, 3, 600, 600).format() == "1.23x [1.15–1.31]"
    assert Speedup(1.02, 0.95, 1.08, 3, 3, 600, 600).format() == "1.02x [0.95–1.08] (n.s.)"
    assert Speedup(1.2, 1.1, 1.3, 1, 3, 200, 600).format() == "1.20x [1.10–1.30] (1 trial)"
    assert Speedup(1.02, 0.95, 1.08, 1, 1, 200, 200).format() == "1.02x [0.95–1.08] (n.s., 1 trial)"
    # A bound that is not 1 never shows as 1.00, so the text agrees with the n.s. mark.
    assert Speedup(1.1, 1.004, 1.2, 3, 3, 600, 600).format() == "1.10x [1.004–1.20]"
    stored = Speedup(1.1, 0.99, 1.2, 3, 2, 600, 400).to_dict()
    assert stored["significant"] is False and Speedup.from_dict({**stored, "candidate": "x"}).candidate_trials == 2


def test_a_single_trial_still_gets_an_interval_and_says_so(tmp_path):
    report = make_report(tmp_path, {"fast": 1.3}, trials=1)
    s = speedups(report, "fast")[0]
    assert s["ci_low"] < s["ratio"] < s["ci_high"] and s["significant"]
    lines = markdown(report).splitlines()
    assert "(1 trial)" in lines[2] and "1 interleaved trial per cell" in lines[3]


def test_tail_percentiles_need_enough_requests(tmp_path):
    assert (min_samples(95), min_samples(99)) == (20, 100)
    assert not supported(95, 19) and supported(95, 20) and not supported(99, 99) and supported(99, 100)
    small = make_report(tmp_path, {"fast": 1.3}, requests=30, trials=1)
    for cell in small.cells:
        assert cell.stats.requests == 30 and cell.stats.p99 is None and cell.stats.p95 is not None
        assert cell.stats.p50 <= cell.stats.p90 <= cell.stats.p95
    large = make_report(tmp_path, {"fast": 1.3}, requests=200, trials=1)
    for cell in large.cells:
        assert cell.stats.p50 <= cell.stats.p90 <= cell.stats.p95 <= cell.stats.p99
    text = markdown(small)
    assert "p99 needs at least 100" in text and "| – |" in text
    assert "| – |" not in markdown(large) and "needs at least" not in markdown(large)


def test_latency_csv_has_a_row_per_cell_and_leaves_unsupported_percentiles_empty(tmp_path):
    report = make_report(
        tmp_path, {"a": 1.3, "b": 1.1}, requests=30, trials=2, batch_sizes=(1, 4, 16), concurrency=(1, 2)
    )
    rows = list(csv.DictReader(io.StringIO(report.latency_csv())))
    assert len(rows) == 3 * 3 * 2
    assert {(r["deployment"], r["batch_size"], r["concurrency"]) for r in rows} == {
        (d, str(b), str(c)) for d in ("base", "a", "b") for b in (1, 4, 16) for c in (1, 2)
    }
    assert list(rows[0])[:13] == [
        "deployment",
        "batch_size",
        "concurrency",
        "p50",
        "p90",
        "p95",
        "p99",
        "mean",
        "throughput",
        "throughput_min",
        "throughput_max",
        "requests",
        "trials",
    ]
    for row in rows:
        assert row["p99"] == "" and float(row["p95"]) > 0 and (row["requests"], row["trials"]) == ("60", "2")
        assert float(row["compute_infer_us"]) == 10.0


def test_perf_analyzer_csvs_have_its_columns_and_the_cells_numbers(tmp_path):
    report = make_report(tmp_path, {"a": 1.3}, requests=30, trials=2, batch_sizes=(1, 4), concurrency=(1, 2, 4))
    files = report.perf_analyzer_csvs()
    assert sorted(files) == [f"perf_analyzer_{d}_batch{b}.csv" for d in ("a", "base") for b in (1, 4)]
    rows = list(csv.DictReader(io.StringIO(files["perf_analyzer_a_batch4.csv"])))
    assert list(rows[0]) == [
        "Concurrency",
        "Inferences/Second",
        "Client Send",
        "Network+Server Send/Recv",
        "Server Queue",
        "Server Compute Input",
        "Server Compute Infer",
        "Server Compute Output",
        "Client Recv",
        "p50 latency",
        "p90 latency",
        "p95 latency",
        "p99 latency",
    ]
    cells = {c.concurrency: c for c in report.cells if c.deployment == "a" and c.batch_size == 4}
    assert [int(r["Concurrency"]) for r in rows] == [1, 2, 4]
    for row in rows:
        stats = cells[int(row["Concurrency"])].stats
        assert float(row["Inferences/Second"]) == pytest.approx(stats.throughput, abs=1e-3)
        assert int(row["p50 latency"]) == round(1000 * stats.p50) and row["p99 latency"] == ""  # 60 requests
        assert [int(row[f"Server {s}"]) for s in ("Queue", "Compute Input", "Compute Infer", "Compute Output")] == [
            5,
            7,
            10,
            3,
        ]
        assert int(row["Network+Server Send/Recv"]) == round(1000 * stats.mean - 25)


def test_verdict_picks_the_fastest_candidate_within_max_drop(tmp_path):
    speeds = {"fastest": 1.6, "middle": 1.3, "slow": 1.05}
    accuracies = {"base": 0.90, "fastest": 0.85, "middle": 0.895, "slow": 0.9}
    report = make_report(tmp_path, speeds, accuracies, max_drop=1)
    chosen = report.verdict()
    assert chosen.best == "middle" and chosen.significant
    assert chosen.mean_speedup["fastest"] > chosen.mean_speedup["middle"] > chosen.mean_speedup["slow"]
    assert "middle is the fastest candidate within 1 point of base" in chosen.text
    assert "significantly faster" in chosen.text and "-0.50 points" in chosen.text
    assert report.to_dict()["verdict"] == chosen.to_dict()
    assert replace(report, max_drop=None).verdict().best == "fastest"
    assert replace(report, max_drop=0.1).verdict().best == "slow"
    nobody = replace(report, max_drop=0.1, candidates=["fastest", "middle"]).verdict()
    assert nobody.best is None and "keep base" in nobody.text
    assert markdown(report).splitlines()[1] == f"**Verdict:** {chosen.text}"


def test_within_max_drop_means_the_whole_interval_lies_above_the_drop(tmp_path):
    base = [1] * 900 + [0] * 100
    lost8 = [0] * 8 + [1] * 892 + [0] * 100  # -0.8 points, but only 1,000 examples: the interval reaches below -1
    same = list(base)
    report = make_report(
        tmp_path, {"fast": 1.6, "equal": 1.2}, max_drop=1, per_example={"base": base, "fast": lost8, "equal": same}
    )
    fast = report.deployments["fast"].quality
    assert report.quality_points("fast") == pytest.approx(-0.8) and fast.gain_low < -1 < fast.gain_high
    chosen = report.verdict()
    assert chosen.best == "equal" and "95 % interval [+0.00, +0.00]" in chosen.text
    nobody = replace(report, candidates=["fast"]).verdict()
    assert nobody.best is None and "not distinguishable" not in nobody.text
    assert f"none is distinguishable from a drop of 1 (fast (95 % interval [{fast.gain_low:+.2f}" in nobody.text
    table = next(line for line in markdown(report).splitlines() if line.startswith("| fast |"))
    assert f"[{fast.gain_low:+.2f}, {fast.gain_high:+.2f}]" in table
    assert "non-inferiority" in markdown(report)


def test_markdown_shows_sample_counts_and_the_rule(tmp_path):
    report = make_report(tmp_path, {"fast": 1.3, "same": 1.0})
    lines = markdown(report).splitlines()
    assert lines[1].startswith("**Verdict:**") and "batch 4" in lines[3] and lines[3].startswith("- **same**")
    assert "600 requests in 3 interleaved trials per cell" in lines[4] and "95 % bootstrap interval" in lines[4]
    assert "n.s. = the interval includes 1.0" in lines[4]
    fast = speedups(report, "fast")[0]
    assert f"batch 1 {fast['ratio']:.2f}x [{fast['ci_low']:.2f}–{fast['ci_high']:.2f}]," in lines[2]
    assert any(line.startswith("| base | 1 | 1 | 600 | 3 | ") for line in lines)
    assert any(line.startswith("| fast | 1 | 1 | 600/600 | 3/3 | ") and line.endswith(" | 1.11x |") for line in lines)


def test_report_is_deterministic_and_quick_for_fifty_cells(tmp_path):
    started = time.perf_counter()
    report = make_report(
        tmp_path, {"a": 1.2, "b": 1.1}, requests=64, batch_sizes=(1, 4, 16, 64), concurrency=(1, 2, 4, 8)
    )
    took = time.perf_counter() - started
    assert len(report.cells) == 48 and len(report.speedups) == 32
    assert took < 3.0, f"building a 48-cell report took {took:.2f} s"
    again = make_report(
        tmp_path, {"a": 1.2, "b": 1.1}, requests=64, batch_sizes=(1, 4, 16, 64), concurrency=(1, 2, 4, 8)
    )
    assert again.speedups == report.speedups and again.mean_speedups == report.mean_speedups


def test_report_json_round_trips_and_old_reports_are_refused(tmp_path):
    report = make_report(tmp_path, {"fast": 1.3}, requests=30, trials=2)
    write_report(report, tmp_path)
    stored = json.loads((tmp_path / "report.json").read_text())
    assert all(c["p99"] is None for c in stored["cells"])
    assert stored == report.to_dict()
    assert (tmp_path / "report.md").read_text() == markdown(report)
    assert (tmp_path / "latency.csv").read_text().splitlines() == report.latency_csv().splitlines()
    del stored["mean_speedups"]
    (tmp_path / "report.json").write_text(json.dumps(stored))
    with pytest.raises(HeadpruneError, match="older headprune"):
        render_report(tmp_path)


def test_quality_changes_carry_a_paired_test_and_only_real_ones_are_marked(tmp_path):
    base = [1] * 800 + [0] * 200
    worse = [0] * 30 + base[30:]  # 30 examples lost, none gained: significant
    noisy = [0] * 3 + base[3:800] + [1] * 2 + base[802:]  # 3 lost, 2 gained: not significant
    records = [{"record": "start", "signature": {}, "started": 0.0}]
    for name, correct in (("base", base), ("worse", worse), ("noisy", noisy)):
        records.append({**quality(name, sum(correct) / 1000), "per_example": correct})
    settings = CompareSettings(
        repo=tmp_path / "repo",
        baseline="base",
        candidates=["worse", "noisy"],
        data=tmp_path / "d",
        out=tmp_path,
        batch_sizes=[1],
        concurrency=[1],
        trials=1,
    )
    facts = {n: Facts(n, 12 - 2 * i, 1000 - 100 * i) for i, n in enumerate(("base", "worse", "noisy"))}
    report = build_report(settings, facts, records, ENVIRONMENT, ["headprune", "compare"])
    deployments = report.to_dict()["deployments"]
    assert deployments["worse"]["quality"]["p_value"] < 1e-6
    assert deployments["noisy"]["quality"]["p_value"] == pytest.approx(1.0)
    assert "p_value" not in deployments["base"]["quality"] and "per_example" not in deployments["worse"]["quality"]
    text = markdown(report)
    section = text[text.index("## Quality") : text.index("## Latency")]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    assert "-3.00*" in rows["worse"] and "-0.10 |" in rows["noisy"] and "*" not in rows["noisy"]


def test_report_round_trips_through_its_dict_with_extra_sections_and_scores(tmp_path):
    report = make_report(tmp_path, {"a": 1.3, "b": 1.0}, accuracies={"a": 0.88}, requests=30, trials=2, max_drop=1)
    report = replace(
        report,
        scores={"scores": {"encoder": {"0": [0.5, None], "1": [0.1, 0.2]}}},
        extra={"experiments": {"curves": {}}, "demo": {"budget": {"train": 10}}},
    )
    data = report.to_dict()
    assert list(data)[-4:] == ["scores", "verdict", "experiments", "demo"]
    again = Report.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data and again == report
    assert markdown(again) == markdown(report) and again.latency_csv() == report.latency_csv()
    assert again.plot_names() == report.plot_names() and "head_importance.png" in again.plot_names()


def test_journals_that_name_the_record_type_kind_still_build_a_report(tmp_path):
    current = make_report(tmp_path, {"a": 1.3}, requests=30, trials=2, seed=3)
    rng = np.random.default_rng(3)
    records = [{"kind": "start", "signature": {}, "started": 0.0}]
    records += [
        {"kind": "quality", **{k: v for k, v in quality(n, 0.9).items() if k != "record"}} for n in ("base", "a")
    ]
    for name, speed in (("base", 1.0), ("a", 1.3)):
        records += [{"kind": r.pop("record"), **r} for r in latency_records(name, rng, 10.0 / speed, 30, 2)]
    settings = CompareSettings(
        repo=tmp_path / "repo",
        baseline="base",
        candidates=["a"],
        data=tmp_path / "d",
        out=tmp_path,
        batch_sizes=[1, 4],
        concurrency=[1],
        trials=2,
    )
    facts = {n: Facts(n, 12 - 2 * i, 1000 - 100 * i) for i, n in enumerate(("base", "a"))}
    old = build_report(settings, facts, records, ENVIRONMENT, ["headprune", "compare"]).to_dict()
    assert len(old["cells"]) == 4 and old["complete"]
    assert [s["ratio"] for s in old["speedups"]] == [s["ratio"] for s in current.to_dict()["speedups"]]
