"""What the serving environment must hold before Triton starts: the server binary, and the packages the
Python backends import, checked in the interpreter whose environment the backend stubs use.

Each problem is reported with what to do, before the server starts: a missing package would otherwise
surface as a model that fails to load, and numpy 2 as answers with empty outputs (this Triton build's
stubs are compiled against numpy 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from exporter.errors import HeadpruneError

# The packages the backends import (serving/server/backends, exporter/triton/models), with the why of each.
BACKEND_PACKAGES = {
    "numpy": "every Python backend",
    "onnxruntime": "the ONNX models",
    "tokenizers": "the text and translation front ends",
    "pillow": "the image front ends",
}
_PROBE = (
    "import importlib.metadata as m, json, sys\n"
    "def version(name):\n"
    "    try:\n"
    "        return m.version(name)\n"
    "    except m.PackageNotFoundError:\n"
    "        return None\n"
    "print(json.dumps({'python': '%%d.%%d' %% sys.version_info[:2], **{n: version(n) for n in %r}}))"
)


def check_binary(path: Path) -> Path:
    """Returns ``path`` if it is an executable tritonserver; raises HeadpruneError otherwise."""
    if not path.is_file() or not os.access(path, os.X_OK):
        raise HeadpruneError(
            f"the Triton server binary '{path}' is missing or not executable",
            "reinstall the server package: `make setup`, or pip install --force-reinstall nvidia-pytriton",
        )
    return path


def _versions(python: str) -> dict[str, str | None]:
    names = [*BACKEND_PACKAGES, "onnxruntime-gpu"]
    try:
        probe = subprocess.run([python, "-c", _PROBE % names], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise HeadpruneError(
            f"the serving Python '{python}' cannot be run ({error})", "give an existing Python 3 interpreter"
        ) from error
    if probe.returncode != 0:
        raise HeadpruneError(
            f"the serving Python '{python}' failed: {probe.stderr.strip()[-300:]}",
            "give a working Python 3 interpreter",
        )
    versions = json.loads(probe.stdout)
    # The GPU build installs under its own distribution name.
    versions["onnxruntime"] = versions["onnxruntime"] or versions["onnxruntime-gpu"]
    del versions["onnxruntime-gpu"]
    return versions


def check_serving_environment(python: str) -> dict[str, str]:
    """Returns {package: version} of the backends' packages (and "python": its version) in ``python``'s environment;
    raises HeadpruneError naming each missing package, numpy 2, or a Python version other than this one's (the
    backend stub is the one built for this Python)."""
    versions = _versions(python)
    ours = "%d.%d" % sys.version_info[:2]
    if versions["python"] != ours:
        raise HeadpruneError(
            f"the serving Python '{python}' is Python {versions['python']}, but headprune runs on "
            f"Python {ours} and starts Triton's backend stub built for {ours}",
            f"give a Python {ours} interpreter (its environment holding the backends' packages)",
        )
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        needs = "; ".join(f"{name} (for {BACKEND_PACKAGES[name]})" for name in missing)
        raise HeadpruneError(
            f"the serving Python '{python}' lacks {needs}",
            f"install them into that environment: {python} -m pip install {' '.join(missing)}",
        )
    numpy_major = int(versions["numpy"].split(".")[0])
    if numpy_major >= 2:
        raise HeadpruneError(
            f"the serving Python '{python}' has numpy {versions['numpy']}: this Triton build's "
            "Python backend answers every request with empty outputs under numpy 2",
            f"install numpy 1 there: {python} -m pip install 'numpy<2'",
        )
    return versions
