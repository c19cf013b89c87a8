"""Operations with the real Triton server: overload, sustained load, a dead backend process, checks before the
server starts, and what the server exposes."""

from __future__ import annotations

import http.client
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub

from benchmarks.fuzz import huge_json_shape, overflowing_shape
from benchmarks.soak import _sentences, overload, soak
from exporter import HeadPlan, apply_plan, load_model, load_tokenizer, save_pruned
from exporter.errors import HeadpruneError
from exporter.triton.config import DeploymentOptions, read_config
from exporter.triton.repository import export_to_repository
from serving.cli import main
from serving.client import TritonClient
from serving.server import process
from serving.server.process import TritonServer, free_port
from tests.helpers import make_bert

TEXTS = _sentences(24, seed=1)


def ports() -> dict:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A repository with a pruned tiny BERT (default queue limits) and a larger, slower BERT whose queue holds 8
    requests, served by one Triton."""
    root = tmp_path_factory.mktemp("operations")
    small = make_bert(root / "small")
    model = load_model(small)
    apply_plan(model, HeadPlan({"encoder": {0: [1, 2], 1: [0], 2: [3]}}))
    save_pruned(model, load_tokenizer(small), root / "pruned", source=small)
    export_to_repository(root / "pruned", root / "repo", "pruned")
    # Larger, so that 256 requests sent at once cannot all be served before the queue fills.
    slow = make_bert(root / "slow", layers=4, heads=8, head_size=32)
    export_to_repository(
        slow,
        root / "repo",
        "limited",
        options=DeploymentOptions(max_batch_size=2, max_queue_size=8, queue_timeout_ms=30_000),
    )
    with TritonServer(root / "repo", **ports()) as server:
        yield server


def test_overload_refuses_the_excess_at_once_and_answers_the_rest_correctly(served):
    policy = read_config(served.repo / "limited_text" / "config.pbtxt").dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 8 and policy.default_timeout_microseconds == 30_000_000
    result = overload(served, "limited_text", TEXTS, clients=256)
    assert result["refused"] > 0 and result["accepted"] >= 8, result
    assert result["other_errors"] == 0, result  # includes accepted requests answered with wrong logits
    assert all("overloaded" in e and "Exceeds maximum queue size" in e for e in result["first_errors"]), result
    assert result["refused_median_ms"] < result["accepted_median_ms"], result
    assert result["healthy_after"] and result["correct_after"]


@pytest.mark.slow
def test_sustained_load_answers_every_request_correctly_without_growing(served):
    result = soak(served, "pruned_text", TEXTS, requests=1200, concurrency=32)
    assert result["answered"] == 1200 and result["failed"] == 0, result["first_failures"]
    assert result["memory_growth_after_warmup"] < 0.10, result
    assert result["memory_samples"] >= 3


def stub_pids(server: TritonServer, model: str) -> list[int]:
    return server.model_processes()[model]


@pytest.mark.slow
def test_a_dead_backend_process_fails_only_its_model_and_triton_does_not_restart_it(tmp_path):
    small = make_bert(tmp_path / "small")
    for name in ("a", "b"):
        export_to_repository(small, tmp_path / "repo", name)
    with TritonServer(tmp_path / "repo", **ports()) as server:
        started = server.model_processes()
        assert set(started) == {"a", "a_text", "b", "b_text"} and server.failed_models(started) == []
        os.kill(stub_pids(server, "a_text")[0], signal.SIGKILL)
        client = TritonClient(server.http_url)
        for _ in range(3):  # pinned down: the stub stays dead, and Triton still lists the model as ready
            with pytest.raises(HeadpruneError, match="the backend process of model 'a_text'.* has died"):
                client.classify_text("a_text", TEXTS[:2])
            assert client.classify_text("b_text", TEXTS[:2])[0].shape == (2, 2)
            time.sleep(1)
        assert {m["name"]: m["state"] for m in client.models()}["a_text"] == "READY"
        assert server.failed_models(started) == ["a_text"]


class Output:
    """The lines a process writes, read in the background so that waiting for one can time out."""

    def __init__(self, process: subprocess.Popen):
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, text: str, timeout: float = 120) -> list[str]:
        """Returns the lines up to the first one containing ``text``; fails after ``timeout`` seconds or at the end."""
        seen, deadline = [], time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if text in line:
                return seen
        raise AssertionError(f"no line with {text!r} in {seen}")

    def rest(self, timeout: float = 30) -> str:
        """Returns everything written until the process ends."""
        seen = []
        while (line := self.lines.get(timeout=timeout)) is not None:
            seen.append(line)
        return "".join(seen)


def serve(args: list[str]) -> tuple[subprocess.Popen, Output]:
    """Starts ``headprune serve`` and returns it with its output once it says it is ready."""
    command = [sys.executable, "-m", "serving", "serve", *args]
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output = Output(server)
    output.until("(Ctrl-C to stop)")
    return server, output


def stub_of(repo: Path, model: str) -> int:
    """Returns the pid of the running backend stub serving ``model`` from ``repo``."""
    folder = f"{repo.resolve()}/{model}/"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if "triton_python_backend_stub" in command and folder in command and state != "Z":
                return int(entry.name)
    raise AssertionError(f"no backend process for {model}")


@pytest.mark.slow
def test_serve_recovers_from_the_requests_that_break_this_triton_build(tmp_path):
    # The two known defects of Triton 2.51 (benchmarks/fuzz.py KNOWN_DEFECTS): one request kills a model's backend
    # process, another the whole server. `serve` names what failed and restarts; then every model answers again.
    export_to_repository(make_bert(tmp_path / "small"), tmp_path / "repo", "m")
    endpoints = ports()
    args = ["--repo", str(tmp_path / "repo"), *(f"--{k.replace('_', '-')}={v}" for k, v in endpoints.items())]
    http_url, grpc_url = f"127.0.0.1:{endpoints['http_port']}", f"127.0.0.1:{endpoints['grpc_port']}"
    server, output = serve(args)
    try:
        with grpc.insecure_channel(grpc_url) as channel, pytest.raises(grpc.RpcError):
            GRPCInferenceServiceStub(channel).ModelInfer(overflowing_shape("m"), timeout=30)
        lines = output.until("(Ctrl-C to stop)")
        assert any("model m: its backend process died" in line for line in lines), lines
        assert TritonClient(http_url).classify_text("m_text", TEXTS[:2])[0].shape == (2, 2)
        with socket.create_connection(("127.0.0.1", endpoints["http_port"]), timeout=30) as connection:
            connection.sendall(huge_json_shape("m"))
            connection.recv(1)  # the server dies without answering
        lines = output.until("(Ctrl-C to stop)")
        assert any("Triton stopped unexpectedly" in line for line in lines), lines
        assert any("restarting Triton" in line for line in lines)
        assert TritonClient(http_url).classify_text("m_text", TEXTS[:2])[0].shape == (2, 2)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(60) == 0
    server, output = serve([*args, "--on-failure", "exit"])
    try:
        os.kill(stub_of(tmp_path / "repo", "m_text"), signal.SIGKILL)
        assert server.wait(60) == 3
        assert "model m_text: its backend process died" in output.rest()
    finally:
        if server.poll() is None:
            server.kill()


def test_a_missing_server_binary_is_reported_before_anything_starts(tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    monkeypatch.setattr(process, "_pytriton_root", lambda: tmp_path / "pytriton")
    server = TritonServer(tmp_path / "repo", **ports())
    with pytest.raises(HeadpruneError, match="binary .* is missing or not executable") as raised:
        server.start()
    assert "nvidia-pytriton" in raised.value.fix and server.process is None


def test_a_serving_python_without_the_backend_packages_is_refused(tmp_path):
    venv.create(tmp_path / "bare", with_pip=False)
    bare = str(tmp_path / "bare" / "bin" / "python")
    (tmp_path / "repo").mkdir()
    server = TritonServer(tmp_path / "repo", python=bare, **ports())
    with pytest.raises(HeadpruneError) as raised:
        server.start()
    assert "lacks numpy" in raised.value.message and "onnxruntime" in raised.value.message
    assert "tokenizers (for the text and translation front ends)" in raised.value.message
    assert raised.value.fix.startswith(f"install them into that environment: {bare} -m pip install numpy")
    assert server.process is None


def other_python() -> str | None:
    """Returns an installed Python 3 interpreter of another minor version than this one, if there is one."""
    ours = f"python3.{sys.version_info.minor}"
    for candidate in sorted(Path("/root/.pyenv/versions").glob("3.*/bin/python3.*")) + sorted(
        Path("/usr/bin").glob("python3.*")
    ):
        if candidate.name != ours and candidate.name.count(".") == 1 and candidate.name[8:].isdigit():
            return str(candidate)
    return None


@pytest.mark.skipif(other_python() is None, reason="no Python of another version is installed here")
def test_a_serving_python_of_another_version_is_refused(tmp_path):
    (tmp_path / "repo").mkdir()
    server = TritonServer(tmp_path / "repo", python=other_python(), **ports())
    with pytest.raises(HeadpruneError, match=rf"but headprune runs on Python 3\.{sys.version_info.minor}"):
        server.start()
    assert server.process is None


def test_numpy_2_in_the_serving_environment_is_refused(tmp_path, monkeypatch):
    # A distribution record is what the check reads: one for numpy 2, first on the path, is enough to see it refused.
    record = tmp_path / "site" / "numpy-2.1.0.dist-info"
    record.mkdir(parents=True)
    (record / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 2.1.0\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    (tmp_path / "repo").mkdir()
    server = TritonServer(tmp_path / "repo", **ports())
    with pytest.raises(HeadpruneError, match="has numpy 2.1.0: .* empty outputs") as raised:
        server.start()
    assert "'numpy<2'" in raised.value.fix and server.process is None


def test_model_control_on_a_reachable_address_needs_confirmation(tmp_path):
    (tmp_path / "repo").mkdir()
    server = TritonServer(tmp_path / "repo", host="0.0.0.0", allow_model_control=True, **ports())
    with pytest.raises(HeadpruneError, match="model control on 0.0.0.0 would let any host"):
        server.start()
    assert server.process is None
    result = CliRunner().invoke(
        main, ["serve", "--repo", str(tmp_path / "repo"), "--host", "::", "--allow-model-control"]
    )
    assert result.exit_code == 2 and "--expose-model-control" in result.output
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "WARNING" in help_text and "no authentication" in " ".join(help_text.split())
    assert process.is_loopback("127.0.0.1") and process.is_loopback("::1") and process.is_loopback("localhost")
    assert not process.is_loopback("0.0.0.0") and not process.is_loopback("10.0.0.1")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/..%2F..%2F..%2Fetc%2Fpasswd",
        "/v2/models/../../etc/passwd/config",
        "/v2/models/pruned/versions/..%2F..%2Fetc%2Fpasswd/stats",
        "/v2/repository/models/..%2F..%2Fetc/load",
        "/v2/models/%2Fetc%2Fpasswd/config",
    ],
)
def test_no_request_reads_a_file_outside_the_repository(served, path):
    host, port = served.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    method = "POST" if path.endswith("/load") else "GET"
    connection.request(method, path, body=b"{}" if method == "POST" else None)
    response = connection.getresponse()
    body = response.read()
    assert response.status >= 400 and b"root:" not in body
    assert TritonClient(served.http_url).classify_text("pruned_text", TEXTS[:1])[0].shape == (1, 2)
