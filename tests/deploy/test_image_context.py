"""What the serving image's build stage does, done here without Docker: copy exactly what its
COPY lines take from the build context (after .dockerignore), build the package from that,
check it depends on no torch, install it into a fresh virtual environment, run ``gan-serve``
configured the way the image configures it, and run the image's HEALTHCHECK command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import httpx
import pytest

from tests.deploy.tools import (
    DEPLOY,
    ROOT,
    context_files,
    dockerignore_rules,
    free_port,
    is_ignored,
    read_dockerfile,
)
from tests.support.tiny_model import write_tiny_model

SERVICE_DOCKERFILE = DEPLOY / "docker" / "service.Dockerfile"


def build_stage_sources(dest: Path) -> None:
    """Replay the build stage's COPY lines (sources relative to the repository root): a
    directory's contents land in the target directory, files in the target when it names a
    directory (ends in '/' or several sources), else at the target path."""
    rules = dockerignore_rules(ROOT / ".dockerignore")
    _, stages = read_dockerfile(SERVICE_DOCKERFILE)
    build = next(s for s in stages if s.name == "build")
    for ins in build.all("COPY"):
        *sources, target = [w for w in ins.args.split() if not w.startswith("--")]
        into_dir = target.endswith("/") or len(sources) > 1
        for src in sources:
            for rel in context_files(ROOT / src):
                if is_ignored(rel, rules):
                    continue
                if (ROOT / src).is_dir():
                    out = dest / target / Path(rel).relative_to(src)
                else:
                    out = dest / target / Path(rel).name if into_dir else dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, out)


def healthcheck_command() -> list[str]:
    _, stages = read_dockerfile(SERVICE_DOCKERFILE)
    (health,) = stages[-1].all("HEALTHCHECK")
    return json.loads(health.args[health.args.index("CMD") + 3 :].strip())


def borrow_site_packages(python: Path) -> None:
    """Let a fresh virtual environment import the running one's dependencies, after its own
    packages. ``venv --system-site-packages`` would not do: made from a virtualenv's python it
    sees the base interpreter's packages, not the virtualenv's. Plain path lines in a ``.pth``
    file run none of the running environment's own ``.pth`` hooks, so its editable install of
    this project stays out and the installed wheel is what gets imported."""
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    borrowed = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (Path(own) / "zz_borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_service_builds_from_the_image_context_and_runs_like_the_image(tmp_path):
    src = tmp_path / "src"
    build_stage_sources(src)
    assert (src / "pyproject.toml").is_file() and (src / "service" / "app.py").is_file()
    assert not (src / "training").exists() and not (src / "tests").exists()

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(wheels), str(src)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    (wheel,) = wheels.glob("gan_serve-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(zf.read(meta_name).decode())
    assert "service/app.py" in names and "service/__main__.py" in names
    assert not [n for n in names if n.startswith(("training/", "tests/"))]
    core = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert any(r.startswith("onnxruntime-gpu") for r in core), core
    assert not [r for r in core if r.split()[0].split(">")[0].split("=")[0] == "torch"], core

    # Install it, dependencies taken from this environment, and run it outside the repository.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    borrow_site_packages(python)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    cwd = tmp_path / "app"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [str(python), "-c", "import service; print(service.__file__)"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"service imported from {where}, not the install"

    store = tmp_path / "model_store"
    write_tiny_model(store)
    port = free_port()
    env.update(
        GAN_SERVE_HOST="127.0.0.1",  # the image binds 0.0.0.0; loopback is enough here
        GAN_SERVE_PORT=str(port),
        GAN_SERVE_MODEL_STORE=str(store),
        GAN_SERVE_DEVICE="auto",
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
    )
    health = healthcheck_command()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(venv / "bin" / "gan-serve")], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        # The image's HEALTHCHECK passes once the model is loaded.
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            check = subprocess.run(health, cwd=cwd, env=env, capture_output=True, timeout=10)
            if check.returncode == 0:
                break
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
        assert models.status_code == 200 and "tiny" in models.text
        image = httpx.get(
            f"http://127.0.0.1:{port}/v1/models/tiny/generate", params={"seed": 1}, timeout=10
        )
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    # With the service gone the HEALTHCHECK fails.
    after = subprocess.run(health, cwd=cwd, env=env, capture_output=True, timeout=10)
    assert after.returncode != 0
