"""`headprune optimize`: the search's rules (bisection, budget, non-inferiority, choice), the paired intervals it
reports, and the whole command through the real Triton on a tiny classifier and a tiny language model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from exporter.evaluation.significance import format_p_value, paired_gain_interval
from exporter.pruning.checkpoint import load_model, load_tokenizer
from serving.benchmark.journal import Journal
from serving.benchmark.latency import paired_trial_ratio, t_quantile_975
from serving.optimize.levers import not_applicable
from serving.optimize.pipeline import optimize
from serving.optimize.report import headline, quality_sentence
from serving.optimize.search import BASELINE, Candidate, OptimizeSettings, Search, choose, non_inferior, recipe
from tests.helpers import make_bert, make_trained_marian, random_sentences, write_jsonl


def settings_for(tmp_path, **overrides) -> OptimizeSettings:
    values = dict(
        model=tmp_path / "model",
        train=tmp_path / "train.jsonl",
        dev=tmp_path / "dev.jsonl",
        test=tmp_path / "test.jsonl",
        repo=tmp_path / "repo",
        name="best",
        out=tmp_path / "out",
    )
    return OptimizeSettings(**{**values, **overrides})


# Two levels, two trials, any speed accepted: a tiny model's pruned speed is within the server's noise.
TINY_RUN = dict(step=0.5, max_level=0.5, search_trials=2, test_trials=2, min_speedup=0.0)


# --- the rules ---------------------------------------------------------------------------------------------------


def test_the_paired_gain_interval_of_accuracy_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    baseline = rng.random(2000) < 0.85
    candidate = baseline.copy()
    flips = rng.choice(2000, 120, replace=False)  # most flip a right answer: a drop of about 4 points
    candidate[flips] = ~candidate[flips]
    low, high = paired_gain_interval("accuracy", baseline.astype(int).tolist(), candidate.astype(int).tolist())
    difference = candidate.astype(float) - baseline.astype(float)
    half = 1.96 * 100 * difference.std() / math.sqrt(len(difference))
    mean = 100 * difference.mean()
    assert abs(low - (mean - half)) < 0.25 and abs(high - (mean + half)) < 0.25
    assert low < high < 0


def test_the_gain_of_perplexity_is_positive_when_perplexity_falls():
    baseline = [(2.0, 1)] * 50
    candidate = [(1.5, 1)] * 50  # lower nll: better
    low, high = paired_gain_interval("perplexity", baseline, candidate)
    assert low > 0 and high > 0


def test_non_inferiority_needs_the_whole_interval_above_the_drop():
    assert non_inferior({"gain_low": -0.9}, 1.0)
    assert not non_inferior({"gain_low": -1.1}, 1.0)
    assert not non_inferior({"gain_low": 0.0}, 0.0)  # no budget: only a proven gain qualifies


def test_the_verdict_names_the_interval_either_way():
    change = {"metric": "accuracy", "gain": -0.8, "gain_low": -2.6, "gain_high": 1.0}
    assert quality_sentence(change, 1.0).startswith("not distinguishable from a drop of 1 point (")
    assert "[-2.60, +1.00]" in quality_sentence(change, 1.0)
    assert quality_sentence(change, 3.0).startswith("within 3 points")


def test_resampled_p_values_are_never_printed_as_zero():
    assert format_p_value("bleu", 0.0) == "< 0.001"
    assert format_p_value("perplexity", 0.0, resamples=2000) == "< 0.0005"
    assert format_p_value("accuracy", 0.0123) == "0.012"


def test_the_paired_trial_interval_is_a_t_interval_over_log_ratios():
    assert t_quantile_975(1) == 12.706
    assert abs(t_quantile_975(10) - 2.228) < 0.005 and abs(t_quantile_975(40) - 2.021) < 0.005
    baseline = {0: 10.0, 1: 20.0, 2: 15.0}
    candidate = {0: 20.0, 1: 44.0, 2: 30.0}  # ratios 2, 2.2, 2: each trial pairs with its own baseline
    ratio, low, high, pairs = paired_trial_ratio(baseline, candidate)
    logs = np.log([2.0, 2.2, 2.0])
    half = 4.303 * logs.std(ddof=1) / math.sqrt(3)
    assert pairs == 3 and ratio == pytest.approx(math.exp(logs.mean()))
    assert low == pytest.approx(math.exp(logs.mean() - half)) and high == pytest.approx(math.exp(logs.mean() + half))
    # Unpaired, the trials' spread (10 to 20 examples/s) would swamp the interval; paired it stays near 2.
    assert 1.7 < low < 2 < 2.2 < high < 2.5


def test_each_candidate_names_its_steps_one_lever_at_a_time():
    chosen = Candidate(0.8, True, "int8")
    assert [s.name for s in chosen.steps] == [
        "fp32_plain_p0",
        "fp32_plain_p80",
        "fp32_distilled_p80",
        "int8_distilled_p80",
    ]
    assert [s.name for s in Candidate(0.0, False, "int8").steps] == ["fp32_plain_p0", "int8_plain_p0"]
    assert recipe("classification", 0.5) == Candidate(0.5, True, "int8")
    assert recipe("language-modeling", 0.5) == Candidate(0.5, True, "int8")
    assert recipe("image-classification", 0.5) == Candidate(0.5, False, "fp32")
    assert (
        not_applicable("translation") == not_applicable("language-modeling") == not_applicable("classification") == {}
    )
    assert set(not_applicable("image-classification")) == {"dynamic INT8 weights", "distil from the unpruned model"}


class FakeSearch(Search):
    """The search's decisions alone: a candidate keeps the quality up to ``limit``, each takes ``seconds``; INT8
    cannot be made above ``int8_up_to``."""

    def __init__(self, settings, task, limit, seconds=1.0, int8_up_to=1.0):
        super().__init__(settings, task, make=lambda candidate: None)
        self.limit, self.seconds, self.int8_up_to, self.tried = limit, seconds, int8_up_to, []

    def measure(self, candidate):
        self.tried.append(candidate.name)
        failed = candidate.precision == "int8" and candidate.level > self.int8_up_to
        trial = {
            "record": "trial",
            "candidate": candidate.to_dict(),
            "eligible": candidate.level <= self.limit and not failed,
            "speedup": {"ratio": 1 + candidate.level + (candidate.precision == "int8")},
            "seconds": self.seconds,
            **({"failed": "INT8 changed decisions"} if failed else {}),
        }
        self.journal.append(trial)
        return trial


@pytest.mark.parametrize("limit", [0.0, 0.1, 0.35, 0.6, 0.9])
def test_the_search_bisects_to_the_highest_level_that_keeps_the_quality(tmp_path, limit):
    search = FakeSearch(settings_for(tmp_path), "classification", limit)
    search.start(resume=False)
    trials, stopped = search.run()
    assert not stopped and len(search.tried) <= 1 + 4  # INT8 alone, then log2(9) levels
    best = choose(trials)
    passing = [level for level in settings_for(tmp_path).levels if level <= limit]
    assert best["candidate"]["level"] == (max(passing) if passing else 0.0)


def test_where_int8_cannot_be_made_the_same_level_in_fp32_stands_for_it(tmp_path):
    search = FakeSearch(settings_for(tmp_path), "classification", 0.7, int8_up_to=0.3)
    search.start(resume=False)
    trials, _ = search.run()
    assert search.tried == [
        "int8_plain_p0",
        "int8_distilled_p50",
        "fp32_distilled_p50",
        "int8_distilled_p70",
        "fp32_distilled_p70",
        "int8_distilled_p80",
        "fp32_distilled_p80",
    ]
    assert [t["candidate"]["name"] for t in trials if t["eligible"]] == [
        "int8_plain_p0",
        "fp32_distilled_p50",
        "fp32_distilled_p70",
    ]


def test_the_search_stops_when_the_next_candidate_would_not_fit_the_budget(tmp_path):
    search = FakeSearch(settings_for(tmp_path, budget_minutes=2.5 / 60), "classification", 0.9, seconds=1.0)
    search.start(resume=False)
    trials, stopped = search.run()
    assert stopped and len(trials) == 2  # 1 s each; a third would need 3 s of a 2.5 s budget


def test_a_rerun_with_the_same_settings_reuses_the_trials_and_other_settings_are_refused(tmp_path):
    first = FakeSearch(settings_for(tmp_path), "classification", 0.5)
    first.start(resume=False)
    first.run()
    again = FakeSearch(settings_for(tmp_path), "classification", 0.5)
    again.start(resume=True)
    assert len(again.trials()) == len(first.tried)
    from exporter.errors import HeadpruneError

    with pytest.raises(HeadpruneError, match="other settings"):
        FakeSearch(settings_for(tmp_path, max_drop=2.0), "classification", 0.5).start(resume=True)


def test_choose_keeps_the_fastest_eligible_candidate_that_beats_the_baseline():
    trials = [
        {"eligible": True, "speedup": {"ratio": 1.5}, "candidate": {"level": 0.3}},
        {"eligible": False, "speedup": {"ratio": 3.0}, "candidate": {"level": 0.9}},
        {"eligible": True, "speedup": {"ratio": 2.0}, "candidate": {"level": 0.6}},
    ]
    assert choose(trials)["candidate"]["level"] == 0.6
    slow = [{"eligible": True, "speedup": {"ratio": 0.9}, "candidate": {"level": 0.1}}]
    assert choose(slow) is None and choose(slow, min_speedup=0.5) == slow[0]
    assert choose(trials, min_speedup=2.5) is None


def test_settings_refuse_proving_on_the_dev_split(tmp_path):
    from exporter.errors import HeadpruneError

    with pytest.raises(HeadpruneError, match="same file"):
        settings_for(tmp_path, test=tmp_path / "dev.jsonl").check()
    with pytest.raises(HeadpruneError, match="2 trials"):
        settings_for(tmp_path, test_trials=1).check()


# --- end to end through Triton ------------------------------------------------------------------------------------


def labelled_splits(model_dir, folder) -> dict:
    """Writes train/dev/test files labelled by the model's own predictions (every sixth flipped)."""
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    paths = {}
    for index, (split, count) in enumerate((("train", 96), ("dev", 64), ("test", 64))):
        texts = random_sentences(count, seed=20 + index)
        with torch.no_grad():
            predicted = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
        rows = [
            {"text": t, "label": model.config.id2label[(p + (i % 6 == 0)) % 2]}
            for i, (t, p) in enumerate(zip(texts, predicted))
        ]
        paths[split] = write_jsonl(folder / f"{split}.jsonl", rows)
    return paths


@pytest.mark.slow
def test_optimize_chooses_on_dev_proves_on_test_and_installs_the_choice(tmp_path):
    # Wide enough that pruning and INT8 change the served time by more than the server's own noise.
    model_dir = make_bert(tmp_path / "bert", head_size=64)
    splits = labelled_splits(model_dir, tmp_path)
    settings = settings_for(
        tmp_path,
        model=model_dir,
        **splits,
        max_drop=100.0,
        step=0.25,
        max_level=0.75,
        search_trials=2,
        test_trials=3,
        distill_epochs=1,
        seq_len=64,
        min_int8_agreement=0.8,
    )  # a tiny random model's decisions sit close to its boundary
    path = optimize(settings)
    result = json.loads((settings.out / "optimize.json").read_text())
    trials = result["search"]["trials"]
    # Any quality qualifies under a budget of 100 points: the bisection climbs to the top level.
    assert [t["candidate"]["name"] for t in trials] == ["int8_plain_p0", "int8_distilled_p50", "int8_distilled_p75"]
    assert all(t["eligible"] for t in trials), [t.get("failed") for t in trials]
    fastest = max(trials, key=lambda t: t["speedup"]["ratio"])
    assert result["chosen"]["name"] == fastest["candidate"]["name"] and fastest["speedup"]["ratio"] > 1
    chosen = Candidate.from_dict(result["chosen"])
    # Choices were measured on dev, the proof on test, and each step of the waterfall is there.
    dev_start = Journal(settings.out / "dev" / chosen.name / "measurements.jsonl").records()[0]
    test_start = Journal(settings.out / "test" / "measurements.jsonl").records()[0]
    assert dev_start["signature"]["data"] == str(splits["dev"])
    assert test_start["signature"]["data"] == str(splits["test"])
    assert [row["step"]["name"] for row in result["proof"]["steps"]] == [s.name for s in chosen.steps[1:]]
    final = result["proof"]["steps"][-1]
    assert final["quality"]["examples"] == 64 and final["throughput"]["baseline_trials"] == 3
    assert final["quality"]["gain_low"] <= final["quality"]["gain"] <= final["quality"]["gain_high"]
    assert result["environment"]["machine"]["cpu_model"] is not None
    # The choice is installed with the unpruned model beside it.
    best = json.loads((settings.repo / "best" / "1" / "deployment.json").read_text())
    unpruned = json.loads((settings.repo / "best_unpruned" / "1" / "deployment.json").read_text())
    assert (best["heads"], unpruned["heads"], best["precision"]) == (round(12 * (1 - chosen.level)), 12, "int8")
    text = path.read_text()
    assert result["headline"] in text and "within 100 points" in result["headline"]
    assert (settings.out / "waterfall.png").stat().st_size > 0


@pytest.mark.slow
def test_optimize_on_a_language_model_prunes_distils_and_quantizes(tmp_path, gpt2_dir, lm_data):
    lines = random_sentences(60, seed=30, low=4, high=10)
    files = {name: tmp_path / f"{name}.txt" for name in ("train", "dev", "test")}
    for index, path in enumerate(files.values()):
        path.write_text("\n".join(lines[20 * index : 20 * (index + 1)]) + "\n")
    settings = settings_for(tmp_path, model=gpt2_dir, **files, name="lm", max_drop=1e6, seq_len=16, **TINY_RUN)
    optimize(settings)
    result = json.loads((settings.out / "optimize.json").read_text())
    trials = result["search"]["trials"]
    assert [t["candidate"]["name"] for t in trials][:2] == ["int8_plain_p0", "int8_distilled_p50"]
    assert not any(t.get("failed") for t in trials)  # INT8 kept the perplexity and continuations of both
    assert all(t["quality"]["metric"] == "perplexity" for t in trials)
    final = result["proof"]["steps"][-1]
    assert final["step"]["name"] == result["chosen"]["name"] and final["quality"]["metric"] == "perplexity"
    check = json.loads((settings.out / "repo" / "int8_distilled_p50" / "1" / "validation.json").read_text())
    assert check["quantization"]["passed"] and check["quantization"]["texts"] == 20  # the training texts
    assert result["levers_not_applicable"] == {}


@pytest.mark.slow
def test_optimize_on_a_translation_model_measures_bleu_and_pulls_every_lever(tmp_path):
    model_dir = make_trained_marian(tmp_path / "marian", seed=3, layers=2)
    files = {}
    for index, name in enumerate(("train", "dev", "test")):
        sources = random_sentences(24, seed=40 + index)
        rows = [{"source": s, "target": " ".join(s.split()[::-1])} for s in sources]  # what the model learned
        files[name] = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    settings = settings_for(tmp_path, model=model_dir, **files, name="mt", max_drop=1000.0, batch_size=4, **TINY_RUN)
    optimize(settings)
    result = json.loads((settings.out / "optimize.json").read_text())
    trials = result["search"]["trials"]
    # INT8 alone, then the full recipe; where INT8 could not keep the translations, the same level in FP32.
    assert [t["candidate"]["name"] for t in trials][:2] == ["int8_plain_p0", "int8_distilled_p50"]
    assert all(t.get("failed") or t["quality"]["metric"] == "bleu" for t in trials)
    final = result["proof"]["steps"][-1]
    assert final["step"]["name"] == result["chosen"]["name"] and final["quality"]["metric"] == "bleu"
    assert result["proof"]["baseline_quality"]["examples"] == 24
    assert "end_to_end" not in result["proof"]  # the tensor model already takes raw sentences
    assert (settings.repo / "mt_translate" / "config.pbtxt").exists()
    assert (settings.repo / "mt_unpruned_translate" / "config.pbtxt").exists()
    assert result["levers_not_applicable"] == {}


def test_without_a_qualifying_candidate_the_headline_keeps_the_unpruned_model():
    result = {
        "settings": {"max_drop": 0.5},
        "proof": None,
        "task": "classification",
        "environment": {"machine": {"cpu_model": "CPU X", "int8_instructions": ["avx2"]}},
    }
    assert headline(result).startswith("No candidate kept") and "CPU X (avx2)" in headline(result)
    assert BASELINE.label == "unpruned, FP32"
