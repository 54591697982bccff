#!/usr/bin/env bash
# The GPU benchmark in one command (bench/gpu.py: MTAN step vs the official-style reference, gradient
# methods vs equal, ResNet-50 HPS/MTAN throughput), writing one JSON and a Markdown table beside it.
#
#   bench/gpu.sh --out "$OUT/gpu.json"               # on a lent H100/H200 (under 8 minutes)
#   bench/gpu.sh --device cpu --tiny --out /tmp/g.json  # the CPU dry run (.ci/run runs it)
#
# It runs from a checkout without installing mtlkit (PYTHONPATH=src). Its Python dependencies other
# than torch (bench/gpu_requirements.txt) are imported if present; otherwise they are installed from
# bench/gpu_wheels/ with `pip install --no-index --find-links` (no network needed there). Fill that
# folder on a machine with network access first: `make gpu-wheels`. $PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import torch, numpy" || { echo "bench/gpu.sh: needs torch and numpy installed (the GPU image has both)" >&2; exit 2; }
if ! "$PYTHON" -c "import pydantic, yaml, tqdm, scipy" 2>/dev/null; then
  if [ ! -d bench/gpu_wheels ]; then
    echo "bench/gpu.sh: missing Python packages and no bench/gpu_wheels/ (run 'make gpu-wheels' where there is network)" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --find-links bench/gpu_wheels -r bench/gpu_requirements.txt
fi
# TorchJD is optional: its rows appear when it imports (its wheels are in gpu_wheels/ too)
if ! "$PYTHON" -c "import torchjd, qpsolvers, quadprog" 2>/dev/null && [ -d bench/gpu_wheels ]; then
  "$PYTHON" -m pip install -q --no-index --find-links bench/gpu_wheels -r bench/gpu_requirements_peers.txt \
    || echo "bench/gpu.sh: TorchJD not installed (no matching wheels): its rows will be missing" >&2
fi
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" bench/gpu.py "$@"
