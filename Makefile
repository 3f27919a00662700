# fedcare — every entry bootstraps .venv from the pinned stack (constraints.txt) first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
# TensorFlow/CUDA start-up noise: fedcare's CLI silences it itself (fedcare/research/terminal.py).

.PHONY: demo test test-fast lint heart-benchmark browser clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "fedcare needs $(PYTHON) (tensorflow-privacy supports Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

## The main job: 4 virtual hospital sites, DP-SGD, bundled breast-cancer data; prints each
## site's whole-run epsilon and accuracy; writes runs/demo/ (report.json, plots, model.keras).
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/fedcare simulate --run-name demo

## Headless Chromium (Debian package) for the console's browser tests.
browser:
	scripts/ensure-browser.sh

## The whole test suite, slow end-to-end runs included (what CI runs).
test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check fedcare tests
	$(BIN)/mypy fedcare

heart-benchmark: $(STAMP)
	$(BIN)/fedcare benchmark-heart --out runs/heart-benchmark.json

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
