#!/usr/bin/env bash
# What users install is what CI tests: build the sdist and the wheel (the wheel from the sdist),
# install the wheel in a fresh venv outside the checkout, and use it from an empty folder.
# Usage: .ci/wheel_check.sh PYTHON TORCH_SPEC   (PYTHON has `build`; TORCH_SPEC e.g. torch==2.13.0)
set -euo pipefail
PYTHON=${1:?python with the build package}
TORCH_SPEC=${2:?torch requirement, e.g. torch==2.13.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtlkit-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start )) s] $*"; }

step "build sdist + wheel"
"$PYTHON" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
ls "$WORK/dist"
wheel=$(ls "$WORK"/dist/mtlkit-*.whl)
version=$(PYTHONPATH="$ROOT/src" "$PYTHON" -c "import mtlkit; print(mtlkit.__version__)")
[[ $(basename "$wheel") == mtlkit-"$version"-* ]] || { echo "wheel $(basename "$wheel") is not version $version"; exit 1; }
# the package data the code reads at run time, and the PEP 561 marker that lets type checkers use mtlkit's hints
"$PYTHON" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = [n for n in ("mtlkit/py.typed", "mtlkit/presets/demo.yaml") if n not in names]
assert not missing, f"the wheel lacks {missing}"
print("wheel carries mtlkit/py.typed and the presets")
PY

step "fresh venv outside the checkout: $TORCH_SPEC, then the wheel"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
# --no-compile: no .pyc for torch's thousands of files (this venv is thrown away; saves minutes)
"$VPY" -m pip install -q --no-compile "$TORCH_SPEC" 2>&1 | { grep -v "^WARNING: Location" || true; }
"$VPY" -m pip install -q --no-compile "$wheel" 2>&1 | { grep -v "^WARNING: Location" || true; }

mkdir "$WORK/empty" && cd "$WORK/empty"
export PATH="$WORK/venv/bin:$PATH" MTLKIT_CACHE="$WORK/cache" OMP_NUM_THREADS=1 PYTHONPATH=
step "the CLI from an empty folder"
mtlkit --help >/dev/null
mtlkit --version
mtlkit list >list.txt && sed -n '/^presets:/,$p' list.txt
grep -q '^  demo ' list.txt && grep -q '^  nyuv2_paper ' list.txt
mtlkit config show demo train.epochs=1 >demo.yaml
mtlkit sweep nyuv2_paper dataset.root=/nowhere --dry-run >sweep.txt && head -2 sweep.txt

step "one tiny epoch of the demo preset, then its report"
mtlkit train demo train.epochs=1 dataset.n_train=16 dataset.n_val=8 dataset.height=32 dataset.width=64 \
  train.batch_size=8 train.progress=false train.tensorboard=false
run=$(ls -d runs/demo-*)
"$VPY" - "$run" "$version" <<'PY'
import json, sys
res = json.load(open(f"{sys.argv[1]}/results.json"))
assert res["status"] == "finished" and res["epochs"] == 1, res
assert res["versions"]["mtlkit"] == sys.argv[2], res["versions"]
print("results.json:", res["status"], "mtlkit", res["versions"]["mtlkit"])
PY
mtlkit report "$run" --out report
test -s report/report.md

step "the public API"
"$VPY" - <<'PY'
import importlib.metadata as md
import sys

import mtlkit
from mtlkit.catalog import presets
from mtlkit.config import load_config
from mtlkit.registry import ARCHITECTURES, DATASETS, WEIGHTINGS
assert mtlkit.__file__.startswith(sys.prefix), f"mtlkit imported from {mtlkit.__file__}, not the venv"
assert md.version("mtlkit") == mtlkit.__version__
for name in getattr(mtlkit, "__all__", []):
    getattr(mtlkit, name)
cfg = load_config(presets()["demo"], ["model.width=0.0625"])
assert {"mtan", "cross_stitch"} <= set(ARCHITECTURES.names()) and "dwa" in WEIGHTINGS and "scenes" in DATASETS
tasks = DATASETS.get(cfg.dataset.name)(cfg.dataset).tasks()
model = ARCHITECTURES.get(cfg.model.arch)(tasks, width=cfg.model.width)
weighting = WEIGHTINGS.get("dwa")([t.name for t in tasks])
print(f"import mtlkit {mtlkit.__version__}: {len(ARCHITECTURES.names())} architectures, {len(WEIGHTINGS.names())} weightings,"
      f" {len(presets())} presets; {type(model).__name__} with {sum(p.numel() for p in model.parameters())} params")
PY

step "every declared extra installs and its packages import"
"$VPY" "$ROOT/.ci/check_extras.py" "$wheel"
step "wheel check passed"
