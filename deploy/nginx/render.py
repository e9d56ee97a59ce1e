"""Render ``nginx.conf.template`` for a set of gan-serve replicas.

Why a renderer and not envsubst: the config is rendered both for docker compose (committed as
``nginx.compose.conf``) and on the fly by the failover test with loopback ports and a temporary
prefix, and nginx's own ``$variables`` must survive the substitution untouched.

Usage:
    python deploy/nginx/render.py --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002 \\
        --listen 127.0.0.1:8080 --prefix /tmp/nginx > /tmp/nginx/nginx.conf
    nginx -p /tmp/nginx -c /tmp/nginx/nginx.conf -g 'daemon off;'
    python deploy/nginx/render.py --compose > deploy/nginx/nginx.compose.conf
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def upstream_lines(servers: list[str], params: str = "max_fails=1 fail_timeout=2s") -> str:
    """One ``server`` line per replica; a failed replica is skipped for ``fail_timeout``."""
    if not servers:
        raise ValueError("at least one upstream server is needed")
    return "\n        ".join(f"server {s} {params};" for s in servers)


def render(values: dict[str, str], template: str | None = None) -> str:
    """Fill every ``{{name}}``; a missing or unknown name is an error, never an empty string."""
    text = TEMPLATE.read_text() if template is None else template
    needed = set(PLACEHOLDER.findall(text))
    missing = needed - values.keys()
    unknown = values.keys() - needed
    if missing or unknown:
        raise KeyError(f"placeholders missing: {sorted(missing)}, unknown: {sorted(unknown)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def local_values(upstreams: list[str], listen: str, prefix: Path) -> dict[str, str]:
    """Values for plain processes on one host: pid, logs and temp files all under ``prefix``."""
    return {
        "worker_processes": "1",
        "pid_file": str(prefix / "nginx.pid"),
        "error_log": str(prefix / "error.log"),
        "access_log": str(prefix / "access.log"),
        "temp_dir": str(prefix / "tmp"),
        "resolver": "",
        "servers": upstream_lines(upstreams),
        "listen": listen,
    }


def compose_values() -> dict[str, str]:
    """Values for docker compose: replicas found through Docker's DNS and re-resolved as they
    come and go (``resolve`` needs nginx >= 1.27.3, the compose file pins a newer image)."""
    return {
        "worker_processes": "auto",
        "pid_file": "/tmp/nginx.pid",
        "error_log": "/dev/stderr",
        "access_log": "/dev/stdout",
        "temp_dir": "/tmp/nginx",
        "resolver": "resolver 127.0.0.11 valid=5s ipv6=off;",
        "servers": upstream_lines(["gan-serve:8000"], "resolve max_fails=1 fail_timeout=2s"),
        "listen": "8080",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compose", action="store_true", help="the docker compose rendering")
    parser.add_argument("--upstream", action="append", default=[], help="host:port of a replica")
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--prefix", type=Path, default=Path("/tmp/gan-serve-nginx"))
    args = parser.parse_args(argv)
    if args.compose:
        values = compose_values()
    else:
        if not args.upstream:
            parser.error("give --upstream at least once, or --compose")
        values = local_values(args.upstream, args.listen, args.prefix.resolve())
    sys.stdout.write(render(values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
