"""A real headless Chromium for page tests: Debian's package (installed by `make setup`), driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

# Without the background-networking flags Chromium keeps calling home, which a closed network refuses.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str:
    """Returns the Chromium binary; fails the test with what to do when it is not installed."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "Chromium is not installed: run `make setup` (it installs Debian's chromium package), or "
            "apt-get install chromium"
        )
    return path


@contextmanager
def chromium() -> Iterator:
    """Yields a launched headless Chromium (a Playwright Browser); closes it after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
