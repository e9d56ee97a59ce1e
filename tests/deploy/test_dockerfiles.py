"""The images' Dockerfiles: hadolint-clean, and structurally what the deployment docs promise
(non-root, readiness HEALTHCHECK, no torch in the serving image, COPY sources in the context)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings
from tests.deploy.tools import (
    DEPLOY,
    DOCKERFILES,
    ROOT,
    context_files,
    dockerignore_rules,
    hadolint_binary,
    is_ignored,
    read_dockerfile,
)

SERVICE_DOCKERFILE = DEPLOY / "docker" / "service.Dockerfile"
HADOLINT_CONFIG = DEPLOY / "docker" / "hadolint.yaml"


def hadolint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint_binary(), "--no-color", "--config", str(HADOLINT_CONFIG), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_three_images_exist():
    assert {p.name for p in DOCKERFILES} == {
        "service.Dockerfile",
        "train.Dockerfile",
        "torchserve.Dockerfile",
    }


def test_hadolint_passes_every_dockerfile():
    result = hadolint(*DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && apt-get install curl\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3003", "DL3002"):  # untagged base, cd in RUN, root user
        assert rule in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_structure(dockerfile: Path):
    instructions, stages = read_dockerfile(dockerfile)
    first = next(i for i in instructions if i.keyword != "ARG")
    assert first.keyword == "FROM", "only ARGs may come before the first FROM"
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage must drop root"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}, f"final USER is {user}"
    # Base images are pinned by tag (an ARG default counts).
    args = dict(
        re.match(r"(\w+)=(\S+)", i.args).groups() for i in instructions if i.keyword == "ARG"
    )
    for stage in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), stage.base)
        known_stage = base in {s.name for s in stages if s.name}
        assert known_stage or re.search(r":[\w.-]+$", base), f"unpinned base {stage.base}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path):
    rules = dockerignore_rules(ROOT / ".dockerignore")
    _, stages = read_dockerfile(dockerfile)
    checked = 0
    for stage in stages:
        for ins in stage.all("COPY"):
            words = ins.args.split()
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for src in sources:
                path = ROOT / src
                assert path.exists(), f"{dockerfile.name}:{ins.line}: COPY source {src} missing"
                files = context_files(path)
                assert files, f"{src} is empty"
                kept = [f for f in files if not is_ignored(f, rules)]
                dropped = [f for f in files if is_ignored(f, rules) and not f.endswith(".mar")]
                assert kept and not dropped, f"{src}: .dockerignore drops {dropped[:5]}"
                checked += 1
    assert checked


def test_dockerignore_matcher_follows_docker_rules():
    rules = dockerignore_rules(ROOT / ".dockerignore")
    assert is_ignored("tests/deploy/test_compose.py", rules)
    assert is_ignored("docker-compose.yml", rules)
    assert is_ignored("service/__pycache__/app.cpython-311.pyc", rules)
    assert is_ignored("model_store/mnist-cdcgan.mar", rules)
    assert not is_ignored("service/app.py", rules)
    assert not is_ignored("model_store/mnist-cdcgan/1/generator.onnx", rules)


def test_service_image_is_slim_non_root_and_checks_readiness():
    instructions, stages = read_dockerfile(SERVICE_DOCKERFILE)
    base = next(i.args for i in instructions if i.keyword == "ARG" and "CUDA_IMAGE" in i.args)
    # onnxruntime-gpu's default wheels are built for CUDA 12 and cuDNN 9.
    assert re.search(r"nvidia/cuda:12\.\d+(\.\d+)?-cudnn-runtime-ubuntu", base), base
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    installs = re.findall(r"pip install ([^&;]+)", runs)
    assert installs and all("[" not in arg and "torch" not in arg for arg in installs), installs
    assert "! pip show torch" in runs, "the build must fail if torch slipped in"
    runtime = stages[-1]
    env = " ".join(i.args for i in runtime.all("ENV"))
    settings = Settings()
    assert "GAN_SERVE_HOST=0.0.0.0" in env
    assert f"GAN_SERVE_PORT={settings.port}" in env
    assert "GAN_SERVE_MODEL_STORE=/app/model_store" in env
    assert any(i.args.split()[-1] == "/app/model_store" for i in runtime.all("COPY"))
    assert [i.args for i in runtime.all("EXPOSE")] == [str(settings.port)]
    (health,) = runtime.all("HEALTHCHECK")
    assert "/readyz" in health.args and "--start-period" in health.args
    cmd = json.loads(runtime.all("CMD")[-1].args)
    assert cmd == ["gan-serve"]


def test_training_image_installs_the_train_extra():
    instructions, stages = read_dockerfile(DEPLOY / "docker" / "train.Dockerfile")
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert ".[train]" in runs
    assert json.loads(stages[-1].all("ENTRYPOINT")[-1].args) == ["gan-train"]


def third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"service"}}


def test_torchserve_image_has_what_the_archive_handler_imports():
    """The .mar's handler and the contract module it bundles run inside this image."""
    handler = third_party_imports(ROOT / "training" / "torchserve_handler.py")
    contract = third_party_imports(ROOT / "service" / "manifest.py")
    needed = handler | contract
    assert {"onnxruntime", "numpy"} <= needed, needed
    instructions, _ = read_dockerfile(DEPLOY / "docker" / "torchserve.Dockerfile")
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    installed = {m.lower() for m in re.findall(r'"([A-Za-z][\w-]*)[<>=!~]', runs)}
    distribution = {"PIL": "pillow", "ts": "torchserve", "yaml": "pyyaml"}
    provided_by_base = {"torch", "ts"}
    missing = {distribution.get(n, n).lower() for n in needed - provided_by_base} - installed
    assert not missing, f"torchserve.Dockerfile does not install {sorted(missing)}"
