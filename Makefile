# Two commands matter: `make demo` and `make test`. Both build .venv on first run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel by default (it lies on disk here); a CUDA user sets TORCH_SPEC='torch>=2.2'.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.mvc-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,demo]" "$(TORCH_SPEC)"
	touch $(STAMP)

# The demo writes its repository, chart and lineage picture into DEMO_DIR (made anew).
DEMO_DIR ?= demo-out
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/mvc demo $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mvc tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
