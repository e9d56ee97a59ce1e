#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs it.
# Run it inside a virtualenv: the Python packages go into the active Python, no root needed.
# Root (or sudo) is needed only while Debian packages are missing.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

python=$(command -v python || command -v python3)
"$python" -m pip install -q -e ".[train,torchserve,dev]"

# Real servers the tests start on loopback: Prometheus, nginx, wrk, Chromium.
need=()
for pkg_bin in prometheus:prometheus nginx:nginx wrk:wrk chromium:chromium; do
  pkg=${pkg_bin%%:*}; bin=${pkg_bin##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "scripts/test.sh: missing Debian packages: ${need[*]}; install them as root" \
        "(apt-get install ${need[*]}) or install sudo, then rerun" >&2
      exit 2
    }
    SUDO="sudo"
  fi
  echo "scripts/test.sh: installing Debian packages: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

"$python" -m pytest "$@"
