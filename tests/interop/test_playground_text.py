"""The playground's text box for a text-to-image model, in a real headless browser."""

from __future__ import annotations

import os

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.support.server import ServiceProcess
from tests.support.tiny_model import write_tiny_model
from tests.support.tiny_text_model import write_tiny_text_model

CHROMIUM = os.environ.get("GAN_SERVE_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def text_service(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("text-store")
    write_tiny_text_model(store, "words")
    write_tiny_model(store, "tiny", 1)
    with ServiceProcess(store, "--threads", "1", "--no-warmup") as proc:
        yield proc


def test_text_api_lists_words_and_refuses_unknown_ones(text_service) -> None:
    url = text_service.url
    models = {m["name"]: m for m in httpx.get(f"{url}/playground/api/models").json()["models"]}
    assert models["words"]["kind"] == "text-to-image" and "seven" in models["words"]["vocabulary"]
    assert "vocabulary" not in models["tiny"]
    ok = httpx.get(f"{url}/playground/api/text", params={"model": "words", "text": "a one", "n": 2})
    assert ok.status_code == 200 and ok.json()["seeds"] == [0, 1] and len(ok.json()["images"]) == 2
    bad = httpx.get(f"{url}/playground/api/text", params={"model": "words", "text": "a zebra"})
    assert bad.status_code == 422 and "zebra" in bad.json()["error"]["message"]


@pytest.mark.slow
def test_caption_box_renders_images_in_chromium(text_service) -> None:
    url = text_service.url
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/")
            page.wait_for_selector("body[data-ready=true]", timeout=20_000)
            page.select_option("#model", "words")
            page.wait_for_function("document.querySelectorAll('#text-grid img').length === 8")
            assert page.is_visible("#text-panel") and not page.is_visible("#samples-panel")
            assert "seven" in page.inner_text("#text-words")
            first = page.eval_on_selector_all("#text-grid img", "imgs => imgs.map(i => i.src)")
            page.fill("#caption", "a thin seven")
            page.click("#text-generate")
            page.wait_for_function(
                "before => [...document.querySelectorAll('#text-grid img')]"
                "  .some((img, i) => img.src !== before[i])",
                arg=first,
            )
            assert "a thin seven" in page.inner_text("#text-caption")
            page.fill("#caption", "a zebra")
            page.press("#caption", "Enter")
            page.wait_for_function("document.getElementById('status').textContent.length > 0")
            assert "zebra" in page.inner_text("#status")
            page.select_option("#model", "tiny")
            page.wait_for_function("document.querySelectorAll('#grid img').length === 16")
            assert not page.is_visible("#text-panel")
            assert errors == []
        finally:
            browser.close()
