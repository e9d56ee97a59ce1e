"""``/docs`` in a real headless browser with every request off this host refused: the page
must still list the API's operations (its assets come from the installed package)."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Route, sync_playwright

from tests.interop.test_playground import CHROMIUM


def test_docs_assets_are_served_here_and_counted_under_their_routes(service):
    page = httpx.get(f"{service.url}/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text
    script = httpx.get(f"{service.url}/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
    assert httpx.get(f"{service.url}/docs/assets/..%2Fcore.py").status_code == 404
    assert "/v1/models" in httpx.get(f"{service.url}/openapi.json").json()["paths"]
    metrics = httpx.get(f"{service.url}/metrics").text
    for route in ("/docs", "/openapi.json", "/docs/assets/{name}"):
        assert f'route="{route}"' in metrics, route


@pytest.mark.slow
def test_docs_page_lists_the_operations_with_the_network_blocked(service):
    refused: list[str] = []

    def local_only(route: Route) -> None:
        if route.request.url.startswith(service.url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route("**/*", local_only)
            page.goto(f"{service.url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            paths = page.eval_on_selector_all(
                ".opblock-summary-path", "els => els.map(e => e.dataset.path || e.textContent)"
            )
        finally:
            browser.close()
    assert "/v1/models/{name}/generate" in paths and "/healthz" in paths, paths
    assert refused == []
