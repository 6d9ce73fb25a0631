# The two commands of the README: `make run` (set up, build the organism if missing, run every notebook
# headlessly) and `make test`. Everything lives in .venv; torch is installed first, pinned to the CPU build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup run test test-browser bench lab organism lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -c "from toolkit.run.runner import ensure_kernel; ensure_kernel()"
	touch $@

run: setup
	$(BIN)/python -m toolkit build-organism --if-missing
	$(BIN)/python -m toolkit run

test: setup
	./.ci/install-browser
	$(BIN)/python -m pytest -q

test-browser: setup
	./.ci/install-browser
	$(BIN)/python -m pytest -q -m browser

bench: setup
	$(BIN)/python -m toolkit bench

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

organism: setup
	$(BIN)/python -m toolkit build-organism

lint: setup
	$(BIN)/ruff check toolkit tests
