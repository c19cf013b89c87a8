"""The serving side starts without PyTorch: `headprune --help`, serve, models, classify, compare and report; and
`--help` of every command without the plotting library either."""

from __future__ import annotations

import subprocess
import sys

HELP_PROBE = """
import sys
from click.testing import CliRunner
from serving.cli import main
for args in [["--help"]] + [[name, "--help"] for name in main.commands]:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "matplotlib"))
print(",".join(heavy[:5]) or "light")
"""
PROBE = """
import sys
from click.testing import CliRunner
from serving.cli import main
import serving.client, serving.server.process, serving.benchmark.compare, serving.report.report, serving.report.results
for args in (["--help"], ["serve", "--help"], ["models", "--help"], ["classify", "--help"], ["compare", "--help"],
             ["report", "--help"], ["export", "--help"]):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(",".join(heavy[:5]) or "light")
"""


def test_serving_commands_and_help_do_not_import_torch_or_transformers():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "light"


def test_the_probe_would_notice_torch():
    result = subprocess.run([sys.executable, "-c", PROBE.replace("import sys\n", "import sys, torch\n", 1)],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().startswith("torch")


def test_help_of_every_command_imports_neither_torch_nor_matplotlib():
    result = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "light"


def test_the_help_probe_would_notice_matplotlib():
    probe = HELP_PROBE.replace("import sys\n", "import sys, matplotlib\n", 1)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().startswith("matplotlib")
