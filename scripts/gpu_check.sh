#!/usr/bin/env bash
# The GPU path checked in one command (docs/GPU.md); the steps live in bench/gpu_check.py.
#
# Usage: bash scripts/gpu_check.sh OUT_DIR [--wheels DIR] [--quick] [--models A,B] [--families A,B]
#   --wheels DIR  install what this Python lacks from the wheels scripts/gpu_wheels.sh prepared
#                 (DIR/small/*.whl, and DIR/parts/ joined and checked against SHA256SUMS) into a
#                 private folder, without network; nothing of this Python is changed
#   --quick       every grid shrunk, runs on a CPU machine too (the test suite runs it)
#   --models A,B  the models to check (see python -m bench.gpu_check --help)
#   --families A,B  models checked in process only (default: the other shipped families)
# PYTHON picks the interpreter (default: python3); GAN_SERVE_GPU_SITE the private folder.
set -euo pipefail

usage() {
  echo "usage: $0 OUT_DIR [--wheels DIR] [--quick] [--models A,B] [--families A,B]" >&2
  exit 2
}
out=""
wheels=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) [ $# -ge 2 ] || usage; wheels=$2; shift 2 ;;
    --quick) extra+=(--quick); shift ;;
    --models) [ $# -ge 2 ] || usage; extra+=(--models "$2"); shift 2 ;;
    --families) [ $# -ge 2 ] || usage; extra+=(--families "$2"); shift 2 ;;
    -*) usage ;;
    *) [ -z "$out" ] || usage; out=$1; shift ;;
  esac
done
[ -n "$out" ] || usage
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || { echo "gpu_check: --wheels $wheels is not a folder" >&2; exit 2; }
  wheels=$(cd "$wheels" && pwd)
  site=${GAN_SERVE_GPU_SITE:-${TMPDIR:-/tmp}/gan-serve-gpu-site}
  joined=$(mktemp -d)
  trap 'rm -rf "$joined"' EXIT
  if [ -f "$wheels/parts/SHA256SUMS" ]; then
    while read -r _ name; do
      cat "$wheels/parts/$name".part-* >"$joined/$name"
    done <"$wheels/parts/SHA256SUMS"
    (cd "$joined" && sha256sum --quiet -c "$wheels/parts/SHA256SUMS") || {
      echo "gpu_check: the joined wheel does not match $wheels/parts/SHA256SUMS:" \
        "a part is missing or damaged" >&2
      exit 2
    }
  fi
  shopt -s nullglob
  found=("$wheels"/small/*.whl "$wheels"/*.whl "$joined"/*.whl)
  shopt -u nullglob
  [ ${#found[@]} -gt 0 ] || { echo "gpu_check: no wheels in $wheels" >&2; exit 2; }
  echo "gpu_check: installing ${#found[@]} wheels into $site" >&2
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${found[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The project itself, for every child process (service front ends, engines, training).
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# The CUDA and cuDNN libraries of the nvidia-* wheels (CUDA 13: nvidia/cu13/lib, cuDNN:
# nvidia/cudnn/lib) on the library path, so onnxruntime's CUDA provider finds them in every
# process; onnxruntime.preload_dlls() alone only looks beside its own install.
nvidia_libs=$("$python" - <<'EOF'
import glob, os, site, sys
roots = [*sys.path, *site.getsitepackages()]
dirs = []
for root in roots:
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))):
        if lib not in dirs:
            dirs.append(lib)
print(":".join(dirs))
EOF
)
if [ -n "$nvidia_libs" ]; then
  export LD_LIBRARY_PATH="$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

cd "$repo"
exec "$python" -m bench.gpu_check "$out" "${extra[@]}"
