"""The served benchmarks' shared step: checkpoints exported in their precision and compared through Triton."""

from __future__ import annotations

import json

import pytest

from benchmarks.served import compare_served
from tests.helpers import random_sentences, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_int8_deployment_is_measured_and_reported_like_any_other(bert_dir, tmp_path):
    data = write_jsonl(
        tmp_path / "eval.jsonl",
        [{"text": t, "label": ("negative", "positive")[i % 2]} for i, t in enumerate(random_sentences(40, seed=8))],
    )
    path = compare_served(
        {"base": (bert_dir, "fp32"), "base_int8": (bert_dir, "int8")},
        data,
        tmp_path / "out",
        batch_sizes=[4],
        trials=1,
        command=["pytest"],
        seq_len=32,
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {n: d["precision"] for n, d in report["deployments"].items()} == {"base": "fp32", "base_int8": "int8"}
    assert report["deployments"]["base_int8"]["onnx_bytes"] < report["deployments"]["base"]["onnx_bytes"]
    assert all(d["quality"]["examples"] == 40 for d in report["deployments"].values())
    assert "base_int8** (0 % of heads pruned, INT8 weights)" in path.read_text()
