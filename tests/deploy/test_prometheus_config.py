"""Prometheus config and alert rules, checked by Prometheus' own promtool."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.deploy.tools import DEPLOY

PROM_DIR = DEPLOY / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: apt-get install prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_config_and_rules():
    result = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    rules["groups"][0]["rules"][0]["expr"] = "sum by (le (rate(x[5m]))"
    broken = tmp_path / "alerts.yml"
    broken.write_text(yaml.safe_dump(rules))
    assert promtool("check", "rules", str(broken)).returncode != 0


def test_every_replica_is_scraped_through_dns():
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    serve = jobs["gan-serve"]
    assert serve.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = serve["dns_sd_configs"]
    assert sd["names"] == ["gan-serve"] and sd["type"] == "A" and sd["port"] == 8000
