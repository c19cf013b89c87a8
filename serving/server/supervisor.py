"""Serving until told to stop: the server and every model's backend process are watched, and a failure is reported
and answered by a restart (bounded) or by giving up with an exit code for an outer supervisor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from serving.server.process import TritonServer

MAX_RESTARTS, RESTART_WINDOW_S = 5, 600  # a model that dies at once on every start must not restart forever
GAVE_UP = 3  # the exit code when serving stopped on a failure


def supervise(
    server: TritonServer,
    stop: threading.Event,
    on_failure: str,
    say: Callable[[str], None] = lambda _: None,
    announce: Callable[[TritonServer], None] = lambda _: None,
) -> int:
    """Serves with the started ``server`` until ``stop`` is set; returns 0, or GAVE_UP after a failure when
    ``on_failure`` is "exit" or more than MAX_RESTARTS restarts fell within RESTART_WINDOW_S ("restart" restarts the
    server otherwise). ``say`` gets each failure and decision; ``announce`` is called whenever the server is ready."""
    started = server.model_processes()  # before announcing: a client may act the moment it reads the announcement
    announce(server)
    restarts: list[float] = []
    while not stop.wait(0.5):
        failure = failure_of(server, started)
        if failure is None:
            continue
        say(failure)
        restarts = [t for t in restarts if time.monotonic() - t < RESTART_WINDOW_S] + [time.monotonic()]
        if on_failure == "exit" or len(restarts) > MAX_RESTARTS:
            if on_failure != "exit":
                say(
                    f"{MAX_RESTARTS} restarts within {RESTART_WINDOW_S // 60} minutes: giving up (log: {server.log_file})"
                )
            return GAVE_UP
        say("restarting Triton ...")
        server.stop()
        server.start()
        started = server.model_processes()
        announce(server)
    return 0


def failure_of(server: TritonServer, started: dict[str, list[int]]) -> str | None:
    """Returns what failed in a running server (it, or a model's backend process), None when all is well."""
    if server.process.poll() is not None:
        return f"Triton stopped unexpectedly (exit code {server.process.returncode}): {server.failure_reason()}"
    failed = server.failed_models(started)
    if failed:
        return f"model {', '.join(failed)}: its backend process died; Triton fails its requests from now on"
    return None
