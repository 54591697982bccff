# mtlkit: `make demo` trains the default model on the built-in scenes; `make test` runs every test.
# Both create .venv and install everything on first use, including the optional extras the tests use
# (slurm: submitit, ray, trackers: mlflow-skinny + wandb, peers: torchjd and its solvers for the
# weighting comparisons; about 50 s and 530 MB more than .[dev]).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine class has a CPU wheel of torch 2.13.0 on disk; elsewhere pick your own build, e.g.
#   make demo TORCH_SPEC="torch>=2.2"   (pyproject.toml itself asks for torch>=2.2,<3)
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint bench browser wheel-check docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,slurm,ray,trackers,peers]"
	touch $@

install: $(VENV)/.installed

# The documentation site's tools (mkdocs, Material, mkdocstrings), on top of the dev install.
$(VENV)/.docs-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,docs]"
	touch $@

demo: install
	$(BIN)/mtlkit train demo

# Headless Chromium for the report's browser test (skipped with a reason where it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "note: chromium not installed; the browser test will be skipped"; }

test: install browser
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench docs/gen_pages.py .ci/check_extras.py

# The documentation site into site/ (reference pages generated from the code by docs/gen_pages.py);
# --strict: a broken link or reference fails the build.
docs: $(VENV)/.docs-installed
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Build the sdist and the wheel, install the wheel in a fresh venv outside the checkout and use it
# from an empty folder (CLI, one tiny training, a report, the public API, every extra's imports).
wheel-check: install
	bash .ci/wheel_check.sh "$(BIN)/python" "$(TORCH_SPEC)"

bench: install
	$(BIN)/python bench/weighting_step.py
	$(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache site dist build
