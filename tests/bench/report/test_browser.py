"""report.html in a real headless Chromium (playwright): it loads without console or page errors and without
requests beyond itself, every figure decodes, and the expected tables are there with rows.

Needs /usr/bin/chromium (`make browser` installs it). Without it this test skips with the reason, except in
CI (CI=true), where it fails: there the browser is part of the test environment.
"""
from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TABLES = ("tasks", "main-colour", "main-other", "main-balanced-auroc", "paired-test", "fewshot", "ood-0",
          "ablation-gates", "ablation-gate-dim", "ablation-gated-layers", "ablation-keep-ratio",
          "ablation-adapter-layers", "routing", "missing")


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: the browser test must run here; `make browser` installs Chromium)")
    pytest.skip(f"{reason}; `make browser` installs it")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright (python) is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(bench_report):
    """report.html served on localhost (as one would publish it)."""
    folder = bench_report.html_path.parent

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{bench_report.html_path.name}"
    server.shutdown()
    server.server_close()


def test_report_renders_in_headless_chromium(browser, served):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems, requests = [], []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.on("request", lambda req: requests.append(req.url))
    response = page.goto(served, wait_until="load")
    assert response is not None and response.ok
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    images = page.evaluate("Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight, "
                           "i.src.slice(0, 22)])")
    assert len(images) == 4
    for width, height, src in images:
        assert width > 0 and height > 0 and src == "data:image/png;base64,"
    for key in TABLES:
        rows = page.locator(f"table#{key} tbody tr").count()
        assert rows > 0, f"table {key} has no rows"
    assert page.locator("table#main-other td.best").count() >= 1  # best per column marked
    assert page.locator("script").count() == 0
    assert page.title().startswith("medvtab bench report")
    assert [u for u in requests if not u.startswith("data:")] == [served]  # self-contained: nothing else loaded
    assert not problems, problems
    page.close()
