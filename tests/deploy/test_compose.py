"""docker-compose.yml validated offline by a real Compose v2 binary (no Docker engine needed),
then its resolved model checked for what the deployment docs promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from service.settings import Settings
from tests.deploy.tools import COMPOSE_FILE, DEPLOY, GPU_OVERRIDE, ROOT, run_compose


def resolved(tmp_path: Path, *args: str) -> dict:
    result = run_compose(tmp_path, *args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "files",
    [
        ["-f", str(COMPOSE_FILE)],
        ["-f", str(COMPOSE_FILE), "--profile", "torchserve"],
        ["-f", str(COMPOSE_FILE), "-f", str(GPU_OVERRIDE)],
        ["-f", str(COMPOSE_FILE), "-f", str(GPU_OVERRIDE), "--profile", "torchserve"],
    ],
    ids=["default", "torchserve", "gpu", "gpu+torchserve"],
)
def test_compose_config_is_valid(tmp_path, files):
    result = run_compose(tmp_path, *files, "config", "--quiet")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "broken",
    [
        # a key Compose does not know
        {"services": {"web": {"image": "nginx:1.28", "replicas_count": 2}}},
        # a named volume that is never declared
        {"services": {"web": {"image": "nginx:1.28", "volumes": ["data:/data"]}}},
        # depends_on a service that does not exist
        {"services": {"web": {"image": "nginx:1.28", "depends_on": ["db"]}}},
    ],
    ids=["unknown-key", "undeclared-volume", "missing-dependency"],
)
def test_compose_rejects_a_broken_file(tmp_path, broken):
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = run_compose(tmp_path, "-f", str(path), "config", "--quiet", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip()


def test_stack_has_the_promised_services(tmp_path):
    default = resolved(tmp_path, "-f", str(COMPOSE_FILE))["services"]
    assert set(default) == {"gan-serve", "nginx", "prometheus", "grafana"}
    with_ts = resolved(tmp_path, "-f", str(COMPOSE_FILE), "--profile", "torchserve")["services"]
    assert set(with_ts) == set(default) | {"torchserve"}


def test_service_replicas_sit_behind_nginx(tmp_path):
    services = resolved(tmp_path, "-f", str(COMPOSE_FILE))["services"]
    serve = services["gan-serve"]
    assert serve["build"]["dockerfile"] == "deploy/docker/service.Dockerfile"
    assert serve["deploy"]["replicas"] >= 2
    assert "ports" not in serve, "replicas publish no host port; nginx is the entry point"
    assert serve["expose"] == [str(Settings().port)]
    # Settings names must be real settings: pydantic-settings ignores unknown GAN_SERVE_* names.
    fields = {f"GAN_SERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(serve["environment"]) <= fields, set(serve["environment"]) - fields
    nginx = services["nginx"]
    assert nginx["depends_on"]["gan-serve"]["condition"] == "service_healthy"
    assert [p["target"] for p in nginx["ports"]] == [8080]
    conf = next(v for v in nginx["volumes"] if v["target"] == "/etc/nginx/nginx.conf")
    conf_text = Path(conf["source"]).read_text()
    assert "server gan-serve:8000" in conf_text and "listen 8080;" in conf_text


def test_bind_mounts_point_at_files_in_the_repository(tmp_path):
    services = resolved(tmp_path, "-f", str(COMPOSE_FILE), "--profile", "torchserve")["services"]
    binds = [
        (name, v)
        for name, s in services.items()
        for v in s.get("volumes", [])
        if v["type"] == "bind"
    ]
    assert len(binds) >= 5
    for name, volume in binds:
        source = Path(volume["source"])
        assert source.is_relative_to(ROOT), f"{name}: {source} outside the repository"
        if source.name != "model_store":  # produced by training / shipped with the package
            assert source.exists(), f"{name}: bind source {source} is missing"
        assert volume.get("read_only"), f"{name}: {source} should be mounted read-only"


def test_prometheus_and_grafana_use_the_repository_config(tmp_path):
    services = resolved(tmp_path, "-f", str(COMPOSE_FILE))["services"]
    prom_sources = {v["source"] for v in services["prometheus"]["volumes"] if v["type"] == "bind"}
    assert str(DEPLOY / "prometheus" / "prometheus.yml") in prom_sources
    assert str(DEPLOY / "prometheus" / "alerts.yml") in prom_sources
    graf = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    assert graf["/etc/grafana/provisioning"] == str(DEPLOY / "grafana" / "provisioning")
    assert graf["/var/lib/grafana/dashboards"] == str(DEPLOY / "grafana" / "dashboards")
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/gan-serve.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()


def test_gpu_override_reserves_nvidia_devices(tmp_path):
    services = resolved(tmp_path, "-f", str(COMPOSE_FILE), "-f", str(GPU_OVERRIDE))["services"]
    serve = services["gan-serve"]
    (device,) = serve["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert serve["environment"]["GAN_SERVE_DEVICE"] == "cuda"
    assert serve["deploy"]["replicas"] >= 2, "the override keeps the base file's settings"
    assert "dcgm-exporter" in services
    default = resolved(tmp_path, "-f", str(COMPOSE_FILE))["services"]["gan-serve"]
    assert "reservations" not in default["deploy"].get("resources", {})


def test_torchserve_profile_serves_the_mar(tmp_path):
    services = resolved(tmp_path, "-f", str(COMPOSE_FILE), "--profile", "torchserve")["services"]
    ts = services["torchserve"]
    assert ts["build"]["dockerfile"] == "deploy/docker/torchserve.Dockerfile"
    (store,) = ts["volumes"]
    assert Path(store["source"]) == ROOT / "model_store"
    assert store["target"] == "/home/model-server/model-store"
    config = (DEPLOY / "torchserve" / "config.properties").read_text()
    assert "load_models=mnist-cdcgan.mar" in config
    assert "model_store=/home/model-server/model-store" in config


def test_nothing_privileged_is_published(tmp_path):
    """Grafana needs a password set by the user, Prometheus has no lifecycle API and, like
    Grafana, is published on loopback only; nginx (the public port) does not proxy reload or
    /metrics."""
    refused = run_compose(tmp_path, "-f", str(COMPOSE_FILE), "config", grafana_password=None)
    assert refused.returncode != 0 and "GF_ADMIN_PASSWORD" in refused.stderr
    services = resolved(tmp_path, "-f", str(COMPOSE_FILE))["services"]
    grafana = services["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "compose-test-password"
    assert not any("lifecycle" in arg for arg in services["prometheus"]["command"])
    for name in ("prometheus", "grafana"):
        assert all(p.get("host_ip") == "127.0.0.1" for p in services[name]["ports"]), name
    nginx = (DEPLOY / "nginx" / "nginx.compose.conf").read_text()
    assert "location ~ ^/v1/models/[^/]+/reload$" in nginx and "location = /metrics" in nginx


def test_shipped_torchserve_configs_keep_management_off_the_network():
    for path in (
        DEPLOY / "kserve" / "config" / "config.properties",
        DEPLOY / "torchserve" / "config.properties",
    ):
        settings = dict(
            line.split("=", 1)
            for line in path.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
        assert settings["management_address"].startswith("http://127.0.0.1:"), path
        assert settings.get("enable_model_api", "false") == "false", path
