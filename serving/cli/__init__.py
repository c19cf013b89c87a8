"""The ``headprune`` command line: a thin layer over the exporter and serving libraries.

Each module registers its commands on ``main`` when imported; command bodies import the
heavy libraries (torch, transformers) only when they run, so ``headprune --help`` and the
serving commands start without them.
"""

from serving.cli import compare, demo, deployment, kubernetes, optimize, pruning, translation  # noqa: F401  (registers the commands)
from serving.cli.app import main

__all__ = ["main"]
