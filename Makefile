# mtlkit: `make demo` trains the default model on the built-in scenes; `make test` runs every test.
# Both create .venv on first use. `make demo` installs mtlkit and its own dependencies only (torch and
# the core list of pyproject.toml); `make test` adds the dev tools and every optional extra the tests
# use (slurm: submitit, ray, trackers: mlflow-skinny + wandb, peers: torchjd and its solvers for the
# weighting comparisons): a 1.3 GB venv for the demo (754 MB of
# it torch; 2 min 21 s from fresh on a shared 2-core machine), about 0.6 GB more for the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine class has a CPU wheel of torch 2.13.0 on disk; elsewhere pick your own build, e.g.
#   make demo TORCH_SPEC="torch>=2.2"   (pyproject.toml itself asks for torch>=2.2,<3)
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-fast lint format bench gpu-wheels browser wheel-check docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# What `make demo` needs: torch and mtlkit's core dependencies.
$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

# What `make test` needs on top: the dev tools and every optional extra.
$(VENV)/.installed: pyproject.toml $(VENV)/.core-installed
	$(BIN)/pip install -q -e ".[dev,slurm,ray,trackers,peers]"
	touch $@

install: $(VENV)/.installed

# The documentation site's tools (mkdocs, Material, mkdocstrings), on top of the dev install.
$(VENV)/.docs-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,docs]"
	touch $@

demo: $(VENV)/.core-installed
	$(BIN)/mtlkit train demo

# Headless Chromium for the report's browser test (skipped with a reason where it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "note: chromium not installed; the browser test will be skipped"; }

test: install browser
	$(BIN)/python -m pytest -q

# The edit loop's tier: the unit tests of every package (tests/<package>/), without the tests marked
# slow and without tests/integration/ and tests/e2e/ (their marker comes from the folder: tests/conftest.py).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration and not e2e"

# The Python files ruff checks and formats; mypy reads its file list from [tool.mypy] in pyproject.toml.
LINT_PATHS := src tests bench docs/gen_pages.py docs/hooks.py .ci/check_extras.py

# ruff's rules, the formatting (line length 120, pyproject.toml [tool.ruff]) and mypy over src/mtlkit;
# `make format` rewrites what `ruff format --check` would reject.
lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --select I --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

# The documentation site into site/ (reference pages generated from the code by docs/gen_pages.py),
# then the checks of the built site in tests/e2e/test_docs.py (no SUMMARY page, offline math, widths);
# --strict: a broken link or reference fails the build.
docs: $(VENV)/.docs-installed browser
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/python -m pytest -q tests/e2e/test_docs.py -k site_

# Build the sdist and the wheel, install the wheel in a fresh venv outside the checkout and use it
# from an empty folder (CLI, one tiny training, a report, the public API, every extra's imports).
wheel-check: install
	bash .ci/wheel_check.sh "$(BIN)/python" "$(TORCH_SPEC)"

# The CPU benchmarks (docs/benchmarks.md): run them alone on the machine; JSON + Markdown in bench/results/.
$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python bench/weighting_step.py
	$(BIN)/python bench/train_step.py

# The wheels bench/gpu.sh installs on a GPU machine without network (bench/gpu_wheels/, gitignored):
# binary wheels for Linux x86_64 and the GPU image's CPython (GPU_PYTHON: ask the image, `python3 -V`);
# 54 MB for CPython 3.12 (scipy and numpy are most of it), under the device runner's 64 MiB carry limit.
GPU_PYTHON ?= 3.12
GPU_WHEEL_FLAGS = -q -d bench/gpu_wheels --only-binary=:all: --platform manylinux2014_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --python-version $(GPU_PYTHON)
gpu-wheels:
	$(PYTHON) -m pip download $(GPU_WHEEL_FLAGS) -r bench/gpu_requirements.txt
	# TorchJD without its dependencies: it names torch, which the image has (a CUDA torch is gigabytes)
	$(PYTHON) -m pip download $(GPU_WHEEL_FLAGS) --no-deps -r bench/gpu_requirements_peers.txt
	@du -sh bench/gpu_wheels

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache site dist build
