"""The serving side starts without PyTorch: `headprune --help`, serve, models, classify, compare and report; and
`--help` of every command without the plotting library either; and no import cycle among the project's modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exporter", "serving")

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
    result = subprocess.run(
        [sys.executable, "-c", PROBE.replace("import sys\n", "import sys, torch\n", 1)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip().startswith("torch")


def test_help_of_every_command_imports_neither_torch_nor_matplotlib():
    result = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "light"


def test_the_help_probe_would_notice_matplotlib():
    probe = HELP_PROBE.replace("import sys\n", "import sys, matplotlib\n", 1)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().startswith("matplotlib")


def project_modules(root: Path) -> dict[str, Path]:
    """Returns {dotted module name: file} of every module under exporter/ and serving/."""
    modules = {}
    for package in PACKAGES:
        for file in (root / package).rglob("*.py"):
            parts = file.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Returns {module: the project modules it imports}, counting imports inside functions too (a deferred import
    hides a cycle at import time, not from the design)."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, file in modules.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                found |= {owner(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package up level - 1 folders
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + [base] * bool(base)
                    )
                found |= {
                    owner(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules else owner(base)
                    for alias in node.names
                }
        graph[name] = found - {None, name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Returns the import cycles of ``graph``: its strongly connected components of more than one module."""
    index, low, stack, found = {}, {}, [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_exporter_or_serving_imports_itself_through_others():
    graph = import_graph(project_modules(ROOT))
    assert len(graph) > 100 and "exporter.triton.install" in graph["exporter.triton.repository"]
    assert cycles(graph) == []


def test_the_cycle_walk_would_notice_a_deferred_import_closing_a_loop():
    graph = import_graph(project_modules(ROOT))
    # exporter.triton.repository imports exporter.triton.generation; an import back, even inside a function, loops.
    graph["exporter.triton.generation"] = graph["exporter.triton.generation"] | {"exporter.triton.repository"}
    assert ["exporter.triton.generation", "exporter.triton.repository"] in cycles(graph)
