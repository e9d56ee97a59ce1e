"""Kubernetes manifests and the KServe example, checked structurally: they parse, carry the
required fields, probe real routes of the service app, and agree on ports, names and labels."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from tests.deploy.tools import DEPLOY, ROOT

K8S = DEPLOY / "k8s"
VARIANTS = ["cpu", "gpu"]


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomize(directory: Path) -> list[dict]:
    """The objects ``kubectl apply -k directory`` would create (resources only, no patches)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, "only plain resources"
    objects: list[dict] = []
    for entry in kustomization["resources"]:
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory}: resource {entry} missing"
        objects += kustomize(target) if target.is_dir() else load_all(target)
    return objects


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), f"duplicate kinds: {kinds}"
    return {o["kind"]: o for o in objects}


@pytest.fixture(scope="module")
def app_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route the app serves, as its OpenAPI schema lists them."""
    app = create_app(Settings(model_store=ROOT / "does-not-exist", warmup=False))
    paths = app.openapi()["paths"]
    routes = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert ("GET", "/healthz") in routes, "route introspection found nothing"
    return routes


def test_every_manifest_parses_and_names_its_kind():
    files = sorted(K8S.rglob("*.yaml")) + sorted((DEPLOY / "kserve").rglob("*.yaml"))
    assert len(files) >= 9
    for path in files:
        for doc in load_all(path):
            assert doc.get("apiVersion") and doc.get("kind"), path


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_has_the_full_set(variant):
    objects = by_kind(kustomize(K8S / variant))
    assert set(objects) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert {o["metadata"]["name"] for o in objects.values()} == {"gan-serve"}
    assert objects["Deployment"]["apiVersion"] == "apps/v1"
    assert objects["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert objects["PodDisruptionBudget"]["apiVersion"] == "policy/v1"


def container_of(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return match


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_hit_real_routes_on_the_service_port(variant, app_routes):
    deployment = by_kind(kustomize(K8S / variant))["Deployment"]
    container = container_of(deployment)
    env = {e["name"]: e["value"] for e in container["env"]}
    port = Settings().port
    assert int(env["GAN_SERVE_PORT"]) == port and env["GAN_SERVE_HOST"] == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [port]
    probes = {k: container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[kind]["httpGet"]
        assert ("GET", get["path"]) in app_routes, f"{kind} probes {get['path']}, not a route"
        assert port_number(container, get["port"]) == port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert ("GET", annotations["prometheus.io/path"]) in app_routes
    assert int(annotations["prometheus.io/port"]) == port
    # Settings names in env must be real settings (a typo would be silently ignored).
    fields = {f"GAN_SERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_are_hardened_and_sized(variant):
    deployment = by_kind(kustomize(K8S / variant))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    container = container_of(deployment)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and set(resources["limits"])
    env = {e["name"]: e["value"] for e in container["env"]}
    # The service refuses new work once SIGTERM arrives, so the pod must leave the endpoints
    # first (preStop), and the kubelet must not SIGKILL it mid-drain.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) >= 3
    drain = float(pre_stop[1]) + float(env["GAN_SERVE_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain, "the kubelet must not kill a drain"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_gpu_variant_requests_a_gpu_and_cpu_variant_does_not():
    gpu = container_of(by_kind(kustomize(K8S / "gpu"))["Deployment"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e["value"] for e in gpu["env"]}["GAN_SERVE_DEVICE"] == "cuda"
    cpu = container_of(by_kind(kustomize(K8S / "cpu"))["Deployment"])
    assert "nvidia.com/gpu" not in json.dumps(cpu["resources"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_hpa_and_pdb_point_at_the_deployment(variant):
    objects = by_kind(kustomize(K8S / variant))
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    container = container_of(deployment)
    assert port_number(container, port["targetPort"]) == Settings().port
    pdb = objects["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert hpa["minReplicas"] > pdb["spec"]["minAvailable"]


def test_kserve_example_serves_the_torchserve_archive():
    (isvc,) = load_all(DEPLOY / "kserve" / "inferenceservice.yaml")
    (runtime,) = load_all(DEPLOY / "kserve" / "servingruntime.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert runtime["kind"] == "ServingRuntime"
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]

    properties = dict(
        line.split("=", 1)
        for line in (DEPLOY / "kserve" / "config" / "config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    (container,) = runtime["spec"]["containers"]
    args = container["args"]
    assert f"--model-store={properties['model_store']}" in args
    assert "--ts-config=/mnt/models/config/config.properties" in args
    assert properties["model_store"] == "/mnt/models/model-store"

    snapshot = json.loads(properties["model_snapshot"])
    assert snapshot["modelCount"] == len(snapshot["models"]) == 1
    (name,) = snapshot["models"]
    ((version, entry),) = snapshot["models"][name].items()
    assert name == isvc["metadata"]["name"] == "mnist-cdcgan"
    mar = ROOT / "model_store" / entry["marName"]
    assert mar.is_file(), f"{mar} must be shipped"
    with zipfile.ZipFile(mar) as archive:
        meta = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert meta["model"]["modelName"] == name
    assert meta["model"]["modelVersion"] == version


def test_kserve_runtime_for_gan_serve_itself(app_routes):
    """gan-serve's own image under KServe: OIP v2, a readiness path the app serves, settings
    that exist, the port KServe routes to, the store where KServe puts storageUri."""
    (isvc,) = load_all(DEPLOY / "kserve" / "gan-serve" / "inferenceservice.yaml")
    (runtime,) = load_all(DEPLOY / "kserve" / "gan-serve" / "servingruntime.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] == "gan-serve"
    assert model["protocolVersion"] == "v2" and runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    (container,) = runtime["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= {f"GAN_SERVE_{name.upper()}" for name in Settings.model_fields}
    assert env["GAN_SERVE_MODEL_STORE"] == "/mnt/models"
    assert int(env["GAN_SERVE_PORT"]) == container["ports"][0]["containerPort"] == 8080
    assert int(env["GAN_SERVE_WORKERS"]) == int(container["resources"]["limits"]["cpu"])
    probe = container["readinessProbe"]["httpGet"]
    assert ("GET", probe["path"]) in app_routes and probe["port"] == 8080
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
