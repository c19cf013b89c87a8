"""The embedded Triton Inference Server: the real ``tritonserver`` binary from the nvidia-pytriton wheel.

One class owns the process: its command line, environment, backend folder, start,
readiness wait and stop. Loopback only and no client model control unless asked.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tritonclient.http as httpclient

from exporter.errors import HeadpruneError
from serving.server.environment import check_binary, check_serving_environment

START_MARK = "=== headprune: starting tritonserver"
# Seconds Triton waits, when told to stop, for connections to close and models to unload.
EXIT_TIMEOUT_S = 10


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as error:
        raise HeadpruneError("the nvidia-pytriton package is not installed", "run 'make setup'") from error
    return Path(pytriton.__file__).parent / "tritonserver"


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_loopback(host: str) -> bool:
    """Returns True when ``host`` is a loopback name or address (reachable only from this machine)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int, flag: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise HeadpruneError(
                f"port {port} on {host} is taken ({error.strerror})",
                f"stop whatever listens there or pass another {flag}",
            ) from error


@dataclass
class TritonServer:
    """A tritonserver process serving ``repo``; use as a context manager or call start()/stop()."""

    repo: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    allow_model_control: bool = False
    log_file: Path | None = None
    startup_timeout: float = 180.0
    python: str = field(default_factory=lambda: sys.executable)  # whose packages the backend stubs import
    # Model control on an address other hosts reach lets any of them run code in the server: refused unless confirmed.
    expose_model_control: bool = False
    # Triton flags that choose the models to load (a deployment manifest's): they replace the control mode that
    # allow_model_control would choose, and count as model control for the loopback check.
    model_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = field(default=None, init=False)
    _backends: Path | None = field(default=None, init=False)

    @property
    def http_url(self) -> str:
        """Returns HOST:PORT of the HTTP endpoint, as tritonclient expects it."""
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """Returns HOST:PORT of the gRPC endpoint."""
        return f"{self._client_host}:{self.grpc_port}"

    def url(self, protocol: str) -> str:
        """Returns HOST:PORT of the endpoint for ``protocol`` ("http" or "grpc")."""
        return self.http_url if protocol == "http" else self.grpc_url

    @property
    def metrics_url(self) -> str:
        """Returns the URL of the Prometheus metrics page."""
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def _backend_dir(self) -> Path:
        root = _pytriton_root()
        folder = Path(tempfile.mkdtemp(prefix="headprune-backends-"))
        python = folder / "python"
        python.mkdir()
        stub = (
            root
            / "python_backend_stubs"
            / f"{sys.version_info.major}.{sys.version_info.minor}"
            / "triton_python_backend_stub"
        )
        if not stub.exists():
            raise HeadpruneError(
                f"the Triton Python backend has no stub for Python {sys.version_info.major}.{sys.version_info.minor}",
                "use Python 3.8-3.13",
            )
        # Copies, not links: Triton refuses a backend library that resolves outside its folder.
        for source in (
            root / "backends/python/libtriton_python.so",
            root / "backends/python/triton_python_backend_utils.py",
            stub,
        ):
            shutil.copy2(source, python / source.name)
        onnx_backend = folder / "onnxruntime"
        onnx_backend.mkdir()
        (onnx_backend / "model.py").write_text(
            resources.files("serving.server.backends.onnxruntime").joinpath("model.py").read_text()
        )
        return folder

    def command(self, backends: Path) -> list[str]:
        """Returns the tritonserver command line."""
        control = (
            ["--model-control-mode=explicit", "--load-model=*"]
            if self.allow_model_control
            else ["--model-control-mode=none"]
        )
        if self.model_args:
            control = list(self.model_args)
        return [
            str(_pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={Path(self.repo).resolve()}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            *control,
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = Path(_pytriton_root()).parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        # The Python backend stub imports from whichever Python is first on PATH: make it ours.
        env["PATH"] = os.pathsep.join([str(Path(self.python).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
        return env

    def start(self) -> "TritonServer":
        """Starts the server and waits until every model is ready; raises HeadpruneError with Triton's reason."""
        # Explicit model control (also behind model_args) opens Triton's load and unload API.
        if (
            (self.allow_model_control or self.model_args)
            and not is_loopback(self.host)
            and not self.expose_model_control
        ):
            raise HeadpruneError(
                f"model control on {self.host} would let any host that reaches it load models, and so "
                "run code in the server",
                "bind to 127.0.0.1, or confirm with `expose_model_control`",
            )
        if not Path(self.repo).is_dir():
            raise HeadpruneError(
                f"model repository '{self.repo}' does not exist", "export a model into it with 'headprune export'"
            )
        for port, flag in (
            (self.http_port, "--http-port"),
            (self.grpc_port, "--grpc-port"),
            (self.metrics_port, "--metrics-port"),
        ):
            _check_port(self.host, port, flag)
        check_binary(_pytriton_root() / "bin" / "tritonserver")
        check_serving_environment(self.python)
        self._backends = self._backend_dir()
        if self.log_file is None:
            # A private folder: a fixed name in the shared temp folder could be pre-created or linked by another user.
            self.log_file = Path(tempfile.mkdtemp(prefix="headprune-triton-")) / "triton.log"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        # Appended: after a restart, the log still shows why the previous server failed.
        log = open(self.log_file, "a")
        log.write(f"{START_MARK} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        log.flush()
        self.process = subprocess.Popen(
            self.command(self._backends),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # Closed before returning: Triton's shutdown waits (up to its exit timeout) for every open HTTP connection.
        client = httpclient.InferenceServerClient(self.http_url)
        try:
            self._poll_ready(client)
        finally:
            client.close()

    def _poll_ready(self, client) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reason = self.failure_reason()
                self.stop()
                raise HeadpruneError(
                    f"Triton exited while starting: {reason}",
                    f"fix the model repository '{self.repo}' (full log: {self.log_file})",
                )
            try:
                if client.is_server_ready():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.25)
        self.stop()
        raise HeadpruneError(
            f"Triton was not ready after {self.startup_timeout:.0f} s", f"look at its log {self.log_file}"
        )

    def failure_reason(self) -> str:
        """Returns the model-load errors (or last error lines) from the server log."""
        text = self._log_since_start()  # this start's lines only: the log is appended to
        # Triton says either "failed to load 'm' version 1: why" or "failed to load model 'm': why".
        reasons = dict(
            re.findall(r"failed to load (?:model )?'([^']+)'(?: version \d+)?: (.*?)(?:\\n|\"?$)", text, re.M)
        )
        if reasons:
            return "; ".join(f"model '{name}': {why.strip()[:300]}" for name, why in reasons.items())
        errors = [
            line
            for line in text.splitlines()
            if line.startswith("E") and "nvml" not in line.lower() and "dcgm" not in line.lower()
        ]
        return errors[-1] if errors else (text.strip().splitlines() or ["no output"])[-1]

    def processes(self) -> dict[int, str]:
        """Returns {pid: command line} of the server and every process it started (its backend stubs)."""
        found = {}
        if self.process is None:
            return found
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # /proc/PID/stat: state and process group follow the command name, which may hold spaces.
                state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
                if int(group) == self.process.pid and state != "Z":  # a dead, unreaped stub is a zombie
                    found[int(entry.name)] = (
                        (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    )
            except (OSError, IndexError, ValueError):  # the process ended while being read
                continue
        return found

    def model_processes(self) -> dict[str, list[int]]:
        """Returns {model name: pids of its backend stub processes}, one per model instance."""
        root = f"{Path(self.repo).resolve()}/"
        models: dict[str, list[int]] = {}
        for pid, command in self.processes().items():
            for word in command.split():
                if "triton_python_backend_stub" in command and word.startswith(root):
                    models.setdefault(word[len(root) :].split("/")[0], []).append(pid)
                    break
        return models

    def failed_models(self, started: dict[str, list[int]]) -> list[str]:
        """Returns the models, of ``started`` (model_processes() once ready), that lost a backend stub process since:
        Triton fails their requests from then on but still lists them as ready."""
        alive = set(self.processes())
        return sorted(name for name, pids in started.items() if not set(pids) <= alive)

    def stop(self) -> str | None:
        """Stops the server and every process it started (backend stubs included); returns None when Triton unloaded
        its models and exited by itself within its exit timeout, otherwise what went wrong."""
        problem = None
        if self.process is not None and self.process.poll() is None:
            try:
                # Triton alone: it unloads its models, which ends their backend stubs in order.
                os.kill(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=EXIT_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                problem = f"Triton had not exited {EXIT_TIMEOUT_S + 10} s after SIGTERM and was killed"
            except ProcessLookupError:
                pass
            if problem is None and "Exit timeout expired" in self._log_since_start():
                problem = (
                    f"Triton's exit timeout ({EXIT_TIMEOUT_S} s) expired before its models were unloaded "
                    "(clients still connected, or requests unfinished); its processes were killed"
                )
        if self.process is not None:
            self._kill_group(self.process.pid)
            self.process.wait()
        if self._backends is not None:
            shutil.rmtree(self._backends, ignore_errors=True)
            self._backends = None
        return problem

    def _log_since_start(self) -> str:
        text = Path(self.log_file).read_text(errors="replace") if self.log_file and Path(self.log_file).exists() else ""
        return text.rsplit(START_MARK, 1)[-1]

    @staticmethod
    def _kill_group(group: int, timeout: float = 10.0) -> None:
        # Backend stubs share the server's process group: none may outlive it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
