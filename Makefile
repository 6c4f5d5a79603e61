# ftsup: `make demo` and `make test` each bootstrap .venv idempotently, then do their job.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ftsup-installed

.PHONY: install demo test test-fast lint bench system-deps clean

# torch is pinned (==2.13.0, via the `trainer` extra): an unpinned torch drags a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[trainer,local,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/ftsup demo

test: install
	bash scripts/install-system-deps.sh
	$(VENV)/bin/ruff check supervisor trainer tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -ra

test-fast: install
	$(VENV)/bin/pytest -ra -m "not slow"

lint: install
	$(VENV)/bin/ruff check supervisor trainer tests bench
	$(VENV)/bin/mypy

# Benchmarks: every part under bench/ in its own process -> bench/results.json and bench/RESULTS.md.
bench: install
	$(PY) bench/run_all.py

# Debian's slurmctld, slurmd, slurm-client and munge for the `slurm` tests; a no-op when installed.
system-deps:
	bash scripts/install-system-deps.sh

clean:
	rm -rf $(VENV) demo-run .pytest_cache .mypy_cache .ruff_cache
