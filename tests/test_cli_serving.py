"""The export, serve, models and classify commands, run as a user would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import tritonclient.http as httpclient
from click.testing import CliRunner

import serving.server.process
from exporter.triton.repository import export_to_repository
from serving.cli import main
from serving.server.process import TritonServer, free_port


def test_export_serve_classify_and_stop(bert_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main, ["export", str(bert_dir), "--repo", str(tmp_path / "repo"), "--name", "demo", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["validation"]["passed"]
    bad = runner.invoke(main, ["export", str(bert_dir), "--repo", str(tmp_path / "repo"), "--name", "bad name"])
    assert bad.exit_code == 2 and "not usable" in bad.output
    ports = [free_port() for _ in range(3)]
    command = [
        sys.executable,
        "-m",
        "serving",
        "serve",
        "--repo",
        str(tmp_path / "repo"),
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        "--log-file",
        str(tmp_path / "t.log"),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        assert "Triton is ready" in line and f"127.0.0.1:{ports[0]}" in line, line
        listed = runner.invoke(main, ["models", "--url", f"127.0.0.1:{ports[1]}", "--protocol", "grpc", "--json"])
        assert {m["name"] for m in json.loads(listed.output)["models"]} == {"demo", "demo_text"}
        answer = runner.invoke(
            main,
            [
                "classify",
                "--model",
                "demo_text",
                "--url",
                f"127.0.0.1:{ports[0]}",
                "--json",
                "the movie was great",
                "bad plot",
            ],
        )
        rows = json.loads(answer.output)["results"]
        assert [r["label"] in ("negative", "positive") for r in rows] == [True, True]
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    # Stopped as asked: Triton unloaded every model itself (no client connection left open kept it waiting).
    assert server.returncode == 0 and "Triton stopped: every model unloaded" in output, output
    assert "Exit timeout expired" not in (tmp_path / "t.log").read_text()
    time.sleep(0.2)
    gone = subprocess.run(["pgrep", "-f", str(tmp_path / "repo")], capture_output=True)
    assert gone.stdout.strip() == b""


def test_classify_without_a_server_says_what_to_do():
    result = CliRunner().invoke(main, ["classify", "--model", "m_text", "--url", f"127.0.0.1:{free_port()}", "hi"])
    assert result.exit_code == 2 and "cannot reach Triton" in result.output and "headprune serve" in result.output


def test_a_stop_that_runs_out_of_tritons_exit_timeout_is_reported(bert_dir, tmp_path):
    export_to_repository(bert_dir, tmp_path / "repo", "demo")
    server = TritonServer(
        tmp_path / "repo",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=tmp_path / "t.log",
    ).start()
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_ready()  # and the connection stays open: Triton waits for it when told to stop
    try:
        problem = server.stop()
    finally:
        client.close()
    assert problem is not None and f"exit timeout ({serving.server.process.EXIT_TIMEOUT_S} s) expired" in problem
    assert (
        TritonServer(
            tmp_path / "repo",
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            log_file=tmp_path / "t.log",
        )
        .start()
        .stop()
        is None
    )  # no connection left open: a clean stop
