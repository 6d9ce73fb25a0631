# The two commands of the README: `make run` (set up, build the organism if missing, run every notebook
# headlessly) and `make test`. Everything lives in .venv, installed from requirements.lock (torch: the CPU build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COMPAT := .venv-compat
export HF_HUB_OFFLINE := 1

.PHONY: setup run test test-compat test-browser bench lab organism lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e '.[dev]'
	$(BIN)/python -c "from toolkit.run.runner import ensure_kernel; ensure_kernel()"
	touch $@

# The unit tests at the lowest supported versions (requirements-compat.lock: torch 2.11, transformers 5.17, every
# other direct dependency at its lower bound), in a second venv kept between runs; `.ci/lock` rewrites both locks.
$(COMPAT)/.installed: pyproject.toml requirements-compat.lock
	rm -rf $(COMPAT)
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q --upgrade pip
	$(COMPAT)/bin/pip install -q -r requirements-compat.lock
	$(COMPAT)/bin/pip install -q --no-deps -e '.[dev]'
	touch $@

test-compat: $(COMPAT)/.installed
	@start=$$(date +%s); OMP_NUM_THREADS=1 $(COMPAT)/bin/python -m pytest -q -p no:cacheprovider -n $(JOBS) --dist loadgroup -m "not slow and not browser"; \
	status=$$?; echo "test-compat: $$(( $$(date +%s) - start )) s at the lowest supported versions"; exit $$status

run: setup
	$(BIN)/python -m toolkit build-organism --if-missing
	$(BIN)/python -m toolkit run

# Both cores: pytest-xdist's workers take tests as they free up (loadgroup keeps an xdist_group on one worker, where
# tests share an expensive fixture); the 15 slowest tests are listed at the end.
JOBS ?= 2
test: setup
	./.ci/install-browser
	@start=$$(date +%s); $(BIN)/python -m pytest -q -n $(JOBS) --dist loadgroup --durations=15; \
	status=$$?; echo "make test: $$(( $$(date +%s) - start )) s on $(JOBS) workers"; exit $$status

test-browser: setup
	./.ci/install-browser
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadgroup -m browser

bench: setup
	$(BIN)/python -m toolkit bench

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

organism: setup
	$(BIN)/python -m toolkit build-organism

lint: setup
	$(BIN)/ruff check toolkit tests
