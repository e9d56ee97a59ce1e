"""The playground page in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("GAN_SERVE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"


def test_page_assets_and_api_without_a_browser(service):
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/playground/app.js">' in page.text
    for asset in ("index.html", "app.js", "style.css"):  # nothing fetched from elsewhere
        text = (REPO_ROOT / "service" / "static" / asset).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert httpx.get(f"{service.url}/playground/app.js").status_code == 200
    assert httpx.get(f"{service.url}/playground/secret.py").status_code == 404
    names = [m["name"] for m in httpx.get(f"{service.url}/playground/api/models").json()["models"]]
    assert names == ["plain", "tiny"]
    grid = httpx.get(
        f"{service.url}/playground/api/samples",
        params={"model": "tiny", "seed": 4, "n": 3, "label": 2},
    ).json()
    assert grid["seeds"] == [4, 5, 6] and grid["labels"] == [2, 2, 2] and len(grid["images"]) == 3
    walk = httpx.get(
        f"{service.url}/playground/api/interpolate",
        params={"model": "tiny", "seed_a": 1, "seed_b": 2, "steps": 5},
    ).json()
    assert len(walk["frames"]) == 5 and walk["frames"][0] != walk["frames"][-1]
    bad = httpx.get(f"{service.url}/playground/api/samples", params={"model": "tiny", "label": 10})
    assert bad.status_code == 422 and "label" in bad.json()["error"]["message"]
    missing = httpx.get(f"{service.url}/playground/api/samples", params={"model": "nope"})
    assert missing.status_code == 404


@pytest.mark.slow
def test_class_click_renders_new_images_in_chromium(service, tmp_path: Path):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            external: list[str] = []
            page.on(
                "request",
                lambda req: (
                    None if req.url.startswith((service.url, "data:")) else external.append(req.url)
                ),
            )
            page.goto(f"{service.url}/")
            page.wait_for_selector("body[data-ready=true]", timeout=20_000)
            page.select_option("#model", "tiny")
            page.wait_for_function("document.querySelectorAll('#grid img').length === 16")
            # "mixed" and the ten classes sit on one row at 1280 px
            rows = page.eval_on_selector_all(
                "#classes button", "bs => new Set(bs.map(b => b.offsetTop)).size"
            )
            assert rows == 1
            # axis labels carry the decimals their step needs
            assert page.evaluate("niceTicks(0.37).labels") == ["0", "0.1", "0.2", "0.3", "0.4"]
            assert page.evaluate("niceTicks(2.2).labels") == ["0", "1", "2", "3", "4"]
            assert page.evaluate("niceTicks(730).labels") == ["0", "200", "400", "600", "800"]
            before = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.src)")

            page.click("#classes button[data-label='3']")
            page.wait_for_function(
                "labels => [...document.querySelectorAll('#grid img')]"
                "  .every(i => i.dataset.label === '3' && i.complete && i.naturalWidth > 0)",
                arg=None,
                timeout=10_000,
            )
            after = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.src)")
            assert after != before and len(set(after)) > 1
            assert page.is_visible("#classes button[data-label='3'][aria-pressed=true]")

            # interpolation slider swaps the frame
            page.wait_for_function("document.getElementById('interp-frame').naturalWidth > 0")
            first = page.get_attribute("#interp-frame", "src")
            page.fill("#interp-slider", "15")
            page.dispatch_event("#interp-slider", "input")
            assert page.get_attribute("#interp-frame", "src") != first

            # the chart is fed by /metrics: a throughput number appears after two scrapes
            page.click("#refresh")
            page.wait_for_function(
                "!isNaN(parseFloat(document.getElementById('throughput').textContent))",
                timeout=10_000,
            )
            # once a scrape has seen the images, the legend's peak is the chart's highest point
            # and the throughput axis reads in distinct steps
            page.click("#refresh")
            page.wait_for_function("state.history.some(p => p.throughput > 0)", timeout=10_000)
            peak, shown, ticks = page.evaluate(
                "[Math.max(...state.history.map(p => p.throughput)),"
                " document.getElementById('throughput-peak').textContent, state.ticks.throughput]"
            )
            assert peak > 0 and float(shown) == pytest.approx(peak, rel=0.01)
            assert len(set(ticks)) == 5 and float(ticks[-1]) >= peak
            assert errors == [] and external == []
            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 5_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "playground.png")
