"""The Grafana dashboards: well-formed, provisioned against the right data source, covering the
promised panels, and (checked against a live service) referring only to metrics it exports.
Prometheus itself then scrapes that service and evaluates every dashboard query."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import exported_family, metric_names, variable_query_metrics
from tests.deploy.tools import DEPLOY, free_port
from tests.support.server import ServiceProcess
from tests.support.tiny_model import write_tiny_model
from tests.support.tiny_translator import write_tiny_translator

DASHBOARDS = DEPLOY / "grafana" / "dashboards"
MAIN = DASHBOARDS / "gan-serve.json"
GPU = DASHBOARDS / "gan-serve-gpu.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panel_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]


def referenced_metrics(dashboard: dict) -> set[str]:
    names = set().union(*(metric_names(e) for e in panel_exprs(dashboard)))
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            names |= variable_query_metrics(query)
    return names


def exported_series(metrics_text: str) -> set[str]:
    """Every series name the exposition can contain, from the HELP/TYPE of each family."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_promql_name_extraction():
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(gan_serve_x_bucket{route=~"$r",'
        ' le!="+Inf"}[$__rate_interval] offset 5m))) / on (model) group_left(version) '
        "gan_serve_info * 1e3 > bool 2 and up"
    )
    assert metric_names(expr) == {"gan_serve_x_bucket", "gan_serve_info", "up"}
    assert variable_query_metrics("label_values(gan_serve_info, model)") == {"gan_serve_info"}
    assert exported_family("gan_serve_x_bucket", {"gan_serve_x"})
    assert not exported_family("gan_serve_y_total", {"gan_serve_x_total"})


def test_dashboards_are_well_formed_and_use_the_provisioned_datasource():
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    (prom,) = datasources
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090"
    uids = set()
    for path in (MAIN, GPU):
        dashboard = load(path)
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        ds_var = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
        assert ds_var["current"]["value"] == prom["uid"]
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
            box = panel["gridPos"]
            assert box["x"] + box["w"] <= 24


def test_main_dashboard_has_the_promised_panels():
    exprs = panel_exprs(load(MAIN))
    joined = "\n".join(exprs)
    assert "gan_serve_images_generated_total" in joined  # throughput
    for q in ("0.5", "0.9", "0.99"):
        pattern = rf"histogram_quantile\({q}, .*gan_serve_request_duration_seconds_bucket"
        assert any(re.search(pattern, e) for e in exprs), f"p{q} latency"
    assert "gan_serve_batch_size_images_bucket" in joined  # batch-size distribution
    assert "gan_serve_queue_depth_images" in joined
    assert "gan_serve_refusals_total" in joined
    heatmaps = [p for p in load(MAIN)["panels"] if p["type"] == "heatmap"]
    assert heatmaps and heatmaps[0]["targets"][0]["format"] == "heatmap"


def test_main_dashboard_covers_the_translate_route():
    translate = [e for e in panel_exprs(load(MAIN)) if 'route="/v1/models/{name}/translate"' in e]
    assert any("gan_serve_requests_total" in e for e in translate)
    assert any("gan_serve_request_duration_seconds_bucket" in e for e in translate)


def test_gpu_memory_lives_on_the_optional_exporter_dashboard():
    assert not any(n.startswith("DCGM_") for n in referenced_metrics(load(MAIN)))
    gpu_metrics = referenced_metrics(load(GPU))
    assert "DCGM_FI_DEV_FB_USED" in gpu_metrics
    assert all(n.startswith("DCGM_FI_") for n in gpu_metrics), gpu_metrics


def drive_traffic(url: str, stop: threading.Event | None = None) -> None:
    """Every kind of request the dashboard plots: PNG, grid and npy generation, a bad request."""
    with httpx.Client(base_url=url, timeout=10) as client:
        while True:
            for seed in range(6):
                r = client.get("/v1/models/tiny/generate", params={"seed": seed, "label": 1})
                assert r.status_code == 200, r.text
            r = client.post("/v1/models/tiny/generate", json={"n": 8, "format": "grid"})
            assert r.status_code == 200, r.text
            r = client.post("/v1/models/tiny/generate", json={"seeds": [1, 2], "format": "npy"})
            assert r.status_code == 200, r.text
            r = client.post("/v1/models/tiny/generate", json={"n": 0})
            assert r.status_code == 422 and "n" in r.text
            r = client.post("/v1/models/flip/translate", json={"images": [[[0, 255], [255, 0]]]})
            assert r.status_code == 200, r.text
            if stop is None or stop.is_set():
                return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def live_service(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    write_tiny_model(store)
    write_tiny_translator(store, "flip")
    with ServiceProcess(store) as service:
        drive_traffic(service.url)
        yield service


def test_dashboards_reference_only_metrics_the_service_exports(live_service):
    text = httpx.get(f"{live_service.url}/metrics", timeout=5).text
    exported = exported_series(text)
    assert "gan_serve_requests_total" in exported, "parsing the exposition found nothing"
    referenced = referenced_metrics(load(MAIN))
    assert len(referenced) >= 8
    unknown = sorted(n for n in referenced if n not in exported)
    assert not unknown, f"the dashboard queries metrics the service does not export: {unknown}"
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alert_metrics = {
        name
        for group in alerts["groups"]
        for rule in group["rules"]
        for name in metric_names(str(rule["expr"]))
    }
    assert not sorted(alert_metrics - exported - {"up"}), "alerts on unexported metrics"
    # After the traffic above, the plotted series have samples, not just HELP lines.
    sampled = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for name in (
        "gan_serve_images_generated_total",
        "gan_serve_request_duration_seconds_bucket",
        "gan_serve_batch_size_images_bucket",
        "gan_serve_queue_depth_images",
        "gan_serve_refusals_total",
        "gan_serve_model_info",
    ):
        assert name in sampled, name


def test_translate_traffic_is_counted_by_route_and_model(live_service):
    """The translate panels and the per-model panels (images/s, batch sizes) see translations."""
    text = httpx.get(f"{live_service.url}/metrics", timeout=5).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def total(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    route = "/v1/models/{name}/translate"
    assert total("gan_serve_requests_total", route=route, status="200") >= 1
    assert total("gan_serve_request_duration_seconds_count", route=route) >= 1
    assert total("gan_serve_images_generated_total", model="flip") >= 1
    assert total("gan_serve_batch_size_images_count", model="flip") >= 1


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends: its interval macro and dashboard variables substituted."""
    expr = expr.replace("$__rate_interval", "15s")
    return re.sub(r"\$\w+", ".*", expr)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_prometheus_evaluates_every_dashboard_query(live_service, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: apt-get install prometheus"
    target = live_service.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "gan-serve", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    traffic = threading.Thread(target=drive_traffic, args=(live_service.url, stop))
    traffic.start()

    def query(expr: str) -> dict:
        r = httpx.get(f"{api}/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                # Enough scrapes for rate() over the 15 s window to see the traffic.
                samples = query("count_over_time(gan_serve_requests_in_flight[15s])")["result"]
                if samples and float(samples[0]["value"][1]) >= 6:
                    break
            except (httpx.HTTPError, AssertionError, ValueError):
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("prometheus never scraped the service enough")

        dashboard = load(MAIN)
        for panel in dashboard["panels"]:
            for t in panel["targets"]:
                # Every panel shows data: the traffic covers each plotted series.
                data = query(grafana_to_promql(t["expr"]))
                assert data["result"], f"{panel['title']}: no data for {t['expr']}"
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                m = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"]["query"])
                assert m, var["query"]
                r = httpx.get(f"{api}/label/{m.group(2)}/values", timeout=10)
                assert r.json()["data"], f"variable {var['name']} would be empty"
    finally:
        stop.set()
        traffic.join(30)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
