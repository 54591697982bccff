# mtlkit: `make demo` trains the default model on the built-in scenes; `make test` runs every test.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine class has a CPU wheel of torch 2.13.0 on disk; elsewhere pick your own build, e.g.
#   make demo TORCH_SPEC="torch>=2.2"   (pyproject.toml itself asks for torch>=2.2,<3)
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint bench browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

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
	$(BIN)/ruff check src tests bench

bench: install
	$(BIN)/python bench/weighting_step.py
	$(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
