# visual-search: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# uv resolves and installs the pinned set in seconds; pip alone takes many minutes
# to backtrack through Beam + TensorFlow + Airflow.
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# The Airflow environment lives apart from the pipeline's (see pyproject.toml for why).
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

.PHONY: help install chromium airflow-env run test bench lint worker-requirements clean

help:  ## Show this help.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python -c constraints.txt -e ".[serve,test]"
	touch $(STAMP)

$(AIRFLOW_STAMP): requirements-airflow.in constraints-airflow.txt $(STAMP)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(BIN)/uv pip install --python $(AIRFLOW_VENV)/bin/python -c constraints-airflow.txt -r requirements-airflow.in
	touch $(AIRFLOW_STAMP)

install: $(STAMP) chromium  ## Create .venv and install everything, pinned by constraints.txt.

# The browser tests (the service's /health page) drive Debian's chromium through playwright.
# Installed with apt as root on a fresh machine; skipped when /usr/bin/chromium is there.
chromium:  ## Install Debian's chromium for the browser tests (root; skipped if present).
	@if [ -x /usr/bin/chromium ]; then \
	  echo "chromium: /usr/bin/chromium is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q chromium chromium-driver; \
	else \
	  echo "chromium: /usr/bin/chromium is missing; as root run: apt-get install -y chromium chromium-driver" >&2; \
	fi

airflow-env: $(AIRFLOW_STAMP)  ## Create .venv-airflow (Airflow + Beam/Google providers) for the DAG.

run: $(STAMP)  ## Run the whole pipeline on a generated catalog (vsearch demo).
	$(BIN)/vsearch demo --workdir demo-output

# Two workers, one test file each at a time: most tests wait on subprocesses (Airflow, Beam
# workers, the GCS emulator) or run one Python thread, so two overlap well on a 2-core machine.
# Files are handed out in collection order (tests/conftest.py puts files with a slow test first),
# not xdist's default of the most tests first, which started the DAG tests last.
TEST_WORKERS ?= 2

test: $(STAMP) $(AIRFLOW_STAMP) chromium  ## Run the whole test suite.
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# hnswlib (benchmarks/index_peers.py's peer) ships no wheels: pip builds it with the C++ compiler.
bench: $(STAMP)  ## Run the benchmarks and rewrite BENCHMARKS.md.
	$(BIN)/uv pip install --python $(BIN)/python -c constraints.txt hnswlib
	$(BIN)/python -m benchmarks.run_all

lint: $(STAMP)  ## ruff, mypy and the layer contract (import-linter).
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core synthetic models index transforms search pipelines vsearch deploy
	$(BIN)/lint-imports

worker-requirements: $(STAMP)  ## Regenerate deploy/requirements-worker*.txt (Dataflow workers, images) from pyproject.toml + constraints.txt.
	$(BIN)/python deploy/worker_requirements.py

clean:  ## Remove the virtualenv and generated outputs.
	rm -rf $(VENV) $(AIRFLOW_VENV) demo-output bench-output .pytest_cache .mypy_cache .ruff_cache
