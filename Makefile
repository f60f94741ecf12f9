# visual-search: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# uv resolves and installs the pinned set in seconds; pip alone takes many minutes
# to backtrack through Beam + TensorFlow + Airflow.
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: help install run test test-fast bench lint clean

help:  ## Show this help.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.py constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python -c constraints.txt -e ".[test,airflow]"
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install everything, pinned by constraints.txt.

run: $(STAMP)  ## Run the whole pipeline on a generated catalog (vsearch demo).
	$(BIN)/vsearch demo --workdir demo-output

test: $(STAMP)  ## Run the whole test suite.
	$(BIN)/python -m pytest tests

bench: $(STAMP)  ## Run the benchmarks and rewrite BENCHMARKS.md.
	$(BIN)/python -m benchmarks.run_all

lint: $(STAMP)  ## ruff and mypy.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy vsearch pipelines transforms models index

clean:  ## Remove the virtualenv and generated outputs.
	rm -rf $(VENV) demo-output bench-output .pytest_cache .mypy_cache .ruff_cache
