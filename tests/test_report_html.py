"""report.html: one self-contained page, checked in a real headless Chromium against report.json."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from exporter.errors import HeadpruneError
from serving.cli import main
from serving.report import viewer
from serving.report.report import write_report
from tests.browser import chromium
from tests.test_report import make_report

# report.json's cell fields, in the latency table's column order (no tokens/s column: not a language model).
LATENCY_FIELDS = (
    "deployment",
    "batch_size",
    "concurrency",
    "requests",
    "trials",
    "p50",
    "p90",
    "p95",
    "p99",
    "mean",
    "throughput",
    "throughput_min",
)
SPEEDUP_FIELDS = (
    "candidate",
    "batch_size",
    "concurrency",
    "candidate_requests",
    "candidate_trials",
    "ratio",
    "predicted",
)
PHONE, DESKTOP = {"width": 390, "height": 844}, {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    # 2 trials of 30 requests cannot support a p99: the page must show those cells as empty, not as numbers.
    report = make_report(
        folder,
        {"p25": 1.2, "p50": 1.5},
        {"base": 0.9, "p25": 0.89, "p50": 0.85},
        requests=30,
        trials=2,
        max_drop=2,
        batch_sizes=(1, 4, 16),
        concurrency=(1, 2),
    )
    write_report(report, folder)
    return folder


def table_rows(page, key: str) -> list[list[dict]]:
    """Returns the rows of the page's table ``key`` as the browser has them: each cell's text and data-value."""
    return page.eval_on_selector_all(
        f"#table-{key} tbody tr",
        "rows => rows.map(r => Array.from(r.cells).map(c => ({text: c.textContent, value: c.getAttribute('data-value')})))",
    )


def values(rows: list[list[dict]]) -> list[list]:
    """Returns the rows' data-values as report.json holds them (numbers as numbers, no value as None)."""

    def parse(raw):
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    return [[parse(cell["value"]) for cell in row] for row in rows]


def open_page(browser, folder, viewport):
    """Returns a page showing folder's report.html, with the console errors, page errors and network requests it
    made."""
    page = browser.new_page(viewport=viewport)
    seen = {"errors": [], "requests": []}
    page.on("console", lambda message: message.type in ("error", "warning") and seen["errors"].append(message.text))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.goto((folder / "report.html").as_uri())
    page.wait_for_load_state("load")
    return page, seen


def blank(png: bytes) -> bool:
    """Returns True when a screenshot is one flat colour (nothing drawn)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return pixels.std() < 5


def test_the_page_renders_the_verdict_plots_and_report_json_numbers_in_chromium(report_folder):
    report = json.loads((report_folder / "report.json").read_text())
    with chromium() as browser:
        for viewport in (DESKTOP, PHONE):
            page, seen = open_page(browser, report_folder, viewport)
            assert seen["errors"] == []
            assert seen["requests"] == [(report_folder / "report.html").as_uri()]  # nothing else fetched
            # The verdict comes first, fully inside the first screen, and says what report.json says.
            verdict = page.locator("#verdict")
            box = verdict.bounding_box()
            assert verdict.is_visible() and box["y"] + box["height"] <= viewport["height"]
            assert verdict.inner_text() == f"Verdict: {report['verdict']['text']}"
            assert not blank(page.screenshot(clip=box))
            # A phone scrolls the tables, not the page.
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            plots = page.locator("#plots img")
            assert plots.count() == 4  # latency, throughput, quality vs latency, quality vs pruned (3 head counts)
            for index in range(plots.count()):
                image = plots.nth(index)
                image.scroll_into_view_if_needed()
                assert image.is_visible() and image.evaluate("i => i.complete && i.naturalWidth > 0")
                assert not blank(image.screenshot())
            cells = values(table_rows(page, "latency"))
            assert cells == [[c[field] for field in LATENCY_FIELDS] for c in report["cells"]]
            speedups = values(table_rows(page, "speedup"))
            assert speedups == [[s[field] for field in SPEEDUP_FIELDS] for s in report["speedups"]]
            texts = [[cell["text"] for cell in row] for row in table_rows(page, "latency")]
            assert [row[5] for row in texts] == [f"{c['p50']:.2f}" for c in report["cells"]]
            assert {row[8] for row in texts} == {"–"} and "–" not in {row[7] for row in texts}  # p99 no, p95 yes
            page.close()


def test_clicking_a_header_sorts_the_rows_by_the_number_behind_the_cells(report_folder):
    with chromium() as browser:
        page, seen = open_page(browser, report_folder, DESKTOP)
        header = page.locator("#table-latency th", has_text="p50 ms")
        before = values(table_rows(page, "latency"))
        header.click()
        ascending = values(table_rows(page, "latency"))
        assert header.get_attribute("aria-sort") == "ascending"
        assert [row[5] for row in ascending] == sorted(row[5] for row in before)
        assert sorted(map(tuple, ascending)) == sorted(map(tuple, before))  # rows move whole
        header.click()
        assert [row[5] for row in values(table_rows(page, "latency"))] == sorted((r[5] for r in before), reverse=True)
        page.locator("#table-latency th", has_text="p99").click()  # a column with no values keeps every row
        assert sorted(map(tuple, values(table_rows(page, "latency")))) == sorted(map(tuple, before))
        assert seen["errors"] == []


def test_open_hands_the_page_to_a_browser_or_serves_it_on_loopback(report_folder):
    opened = []
    assert viewer.open_report(report_folder, browser=lambda url: opened.append(url) or True) is None
    assert opened == [(report_folder / "report.html").resolve().as_uri()]
    server = viewer.open_report(report_folder, browser=lambda url: False)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.read() == (report_folder / "report.html").read_bytes()
        with pytest.raises(urllib.error.HTTPError, match="404"):  # the page only: not the data beside it
            urllib.request.urlopen(server.url.replace("report.html", "report.json"), timeout=10)
    finally:
        server.stop()
    with pytest.raises(HeadpruneError, match="has no report.html"):
        viewer.open_report(report_folder / "missing")


def test_report_open_rerenders_then_opens_the_page(report_folder, monkeypatch):
    opened = []
    monkeypatch.setattr(viewer.webbrowser, "open", lambda url: opened.append(url) or True)
    (report_folder / "report.html").unlink()
    result = CliRunner().invoke(main, ["report", str(report_folder), "--open"])
    assert result.exit_code == 0, result.output
    assert "opened in the browser" in result.output and opened == [(report_folder / "report.html").resolve().as_uri()]
    assert (report_folder / "report.html").read_text().startswith("<!DOCTYPE html>")
