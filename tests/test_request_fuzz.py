"""The request fuzz (benchmarks/fuzz.py) against the real Triton server: every hostile request gets its own error,
the server keeps serving, and the reference logits still come back afterwards."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.fuzz import (
    KNOWN_DEFECTS,
    Case,
    Channels,
    Outcome,
    Target,
    check_reference,
    deploy,
    huge_json_shape,
    judge,
    overflowing_shape,
    run_fuzz,
    valid_request,
)
from exporter.triton.repository import export_to_repository
from serving.server.process import TritonServer, free_port

CASES = 200  # about 10 s of requests on 2 cores; `python -m benchmarks.fuzz` runs thousands


def start_server(repo) -> TritonServer:
    """Returns a started server for ``repo`` on free loopback ports."""
    return TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()).start()


def target_of(server: TritonServer, served) -> Target:
    """Returns the fuzz target of a running server."""
    return Target(server.http_url, server.grpc_url, served, alive=lambda: server.process.poll() is None)


@pytest.fixture(scope="module")
def fuzzed(bert_dir, tmp_path_factory):
    repo, served = deploy(bert_dir, tmp_path_factory.mktemp("fuzz"), victim=True)
    server = start_server(repo)
    try:
        yield target_of(server, served)
    finally:
        server.stop()


def test_hostile_requests_get_their_own_errors_and_the_server_keeps_serving(fuzzed):
    report = run_fuzz(fuzzed, CASES, random_seed=0)
    assert report.ok, report.failures[:5]
    assert report.total == CASES and not report.stopped_early
    assert report.crashes == report.hangs == report.wrong_answers == 0
    assert all(report.cases[c] == CASES // 4 for c in ("tensor", "text", "http_raw", "grpc_raw")), report.cases
    assert report.reference_checks == CASES
    answered = sum(report.errors.values()) + sum(report.closed.values()) + sum(report.answered.values())
    assert answered == CASES and sum(report.errors.values()) > 0.8 * CASES
    channels = Channels(fuzzed)
    for served in fuzzed.served:
        for model in (served.model, served.text_model):
            for protocol in ("http", "grpc"):
                assert check_reference(channels, served, model, protocol) is None
    channels.close()


def test_the_check_fails_when_the_reference_is_another_models(fuzzed):
    base, pruned = fuzzed.served
    wrong = replace(fuzzed, served=[replace(pruned, model=base.model)])
    report = run_fuzz(wrong, 4, random_seed=0)
    assert report.stopped_early and not report.ok
    assert "the reference request to base" in report.failures[-1]["problem"]


@pytest.mark.parametrize(
    "outcome, framing, problem",
    [
        (Outcome("ok"), False, "a bad request succeeded"),
        (Outcome("timeout", "timed out"), False, "no answer within the timeout"),
        (Outcome("closed", "RemoteDisconnected"), False, "closed without an answer"),
        (Outcome("closed", "RemoteDisconnected"), True, None),
        (Outcome("error", " "), False, "no message"),
        (Outcome("error", "[400] input_ids must lie in [0, 44)"), False, None),
    ],
)
def test_judge_accepts_only_an_error_for_a_bad_request(outcome, framing, problem):
    verdict = judge(Case("http_raw", "http", "base", "test", None, framing=framing), outcome)
    assert (verdict is None) if problem is None else (problem in verdict)


def test_judge_wants_the_culprit_named_and_the_right_answer_for_a_valid_request():
    assert "does not name 'token_type_ids'" in judge(
        Case("tensor", "grpc", "base", "range", None, mentions="token_type_ids"),
        Outcome("error", "input_ids must lie in [0, 44)"),
    )
    right = np.array([[0.5, -0.5]], dtype=np.float32)
    valid = Case("text", "http", "base_text", "long_valid", None, expect="same", expected=right)
    assert judge(valid, Outcome("ok", output=right + 5e-5)) is None
    assert "expected" in judge(valid, Outcome("ok", output=right + 1e-3))
    assert "a valid request failed" in judge(valid, Outcome("error", "too long"))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=KNOWN_DEFECTS["overflowing_shape"])
def test_known_defect_a_shape_overflowing_64_bits_leaves_the_model_broken(fuzzed):
    # Attacks the "victim" copy only: the models the other tests use keep their stubs.
    channels = Channels(fuzzed)
    assert channels.grpc_raw(overflowing_shape("victim")).kind == "error"
    assert valid_request(channels, "victim").kind == "ok"


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=KNOWN_DEFECTS["json_huge_shape"])
def test_known_defect_a_huge_json_shape_aborts_the_server(bert_dir, tmp_path):
    # Its own server: this request ends the process.
    export_to_repository(bert_dir, tmp_path / "repo", "victim")
    server = start_server(tmp_path / "repo")
    try:
        target = target_of(server, [])
        outcome = Channels(target).http_raw(huge_json_shape("victim"))
        time.sleep(1)
        assert target.alive() and outcome.kind == "error"
    finally:
        server.stop()
