"""The trajectory viewer in a real headless browser: Debian's Chromium driven by Playwright (no browser download).

Opens a generated page, expands an episode, filters and sorts the summary table, and saves a screenshot
(``$ATOM_SCREENSHOT_DIR/viewer.png`` when set, else under the test's tmp dir). Skips where no browser is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_viewer import make_page

CHROMIUM = os.environ.get("ATOM_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]  # fmt: skip

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def test_viewer_expands_filters_and_sorts_in_chromium(tmp_path):
    path = make_page(tmp_path)
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        rows = page.locator("#summary tbody tr")
        total = rows.count()
        assert total == 6 and "6 of 6 episodes" in page.inner_text("#f-count")

        # clicking a row opens its episode, whose turns show effects and the hidden code points as badges
        rows.nth(0).click()
        episode = page.locator("details.episode").nth(0)
        assert episode.evaluate("e => e.open")
        assert episode.locator(".turn").first.is_visible()
        assert "invalid update #99" in episode.inner_text()
        assert episode.locator(".cp", has_text="U+202E").count() >= 1
        assert page.locator("script").count() == 1  # the reply's <script> is text, not an element

        # filters: method, then reward range, then "with invalid actions"
        page.select_option("#f-method", "oracle")
        visible = [r for r in rows.all() if r.is_visible()]
        assert 0 < len(visible) < total and all(r.get_attribute("data-method") == "oracle" for r in visible)
        assert not page.locator("details.episode").nth(0).is_visible()  # the scripted episode is filtered out
        page.fill("#f-min", "0.5")
        assert all(float(r.get_attribute("data-reward")) >= 0.5 for r in rows.all() if r.is_visible())
        page.select_option("#f-method", "")
        page.fill("#f-min", "")
        page.check("#f-invalid")
        visible = [r for r in rows.all() if r.is_visible()]
        assert visible and all(int(r.get_attribute("data-invalid")) > 0 for r in visible)
        page.uncheck("#f-invalid")

        # sorting by reward (descending on the first click)
        page.click("#summary th:has-text('reward')")
        rewards = [float(r.get_attribute("data-reward")) for r in rows.all()]
        assert rewards == sorted(rewards, reverse=True)

        # the screenshot: the scripted (hostile) episodes, the first one expanded
        page.select_option("#f-method", "scripted")
        next(r for r in rows.all() if r.is_visible()).click()
        page.evaluate("window.scrollTo(0, 0)")
        shots = Path(os.environ.get("ATOM_SCREENSHOT_DIR", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "viewer.png"))
        browser.close()
    assert (shots / "viewer.png").stat().st_size > 10_000
    assert errors == []
    assert all(u.startswith("file:") for u in requests), requests  # the page loads nothing from the network
