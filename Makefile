# make demo | make test | make lint   (each first runs scripts/setup.sh, which creates .venv)
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup demo test test-main test-interop lint

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/scdask demo

# The SLURM tests need the one-node SLURM of scripts/slurm-local.sh. If it is not up and this
# user can start it, it is started for the run and stopped afterwards; otherwise those tests
# skip with the reason (or fail, when SCDASK_REQUIRE_SLURM=1 as in .ci/run).
# Every docstring example in src/scdask runs too (--doctest-modules).
# Any non-zero pytest exit fails the target, including 5 (no tests collected).
# Then the interop tests run again on Python 3.12 with the newest anndata and scanpy (.venv312);
# without a python3.12 (PATH or pyenv) they are skipped with a line, or fail when
# SCDASK_REQUIRE_PY312=1 (as in .ci/run).
# (the first candidate that really runs 3.12: a pyenv shim may exist without the version)
PY312 ?= $(shell for c in $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python 2>/dev/null) $$(command -v python3.12); do "$$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && echo "$$c" && break; done)
INTEROP_TESTS := tests/ops/test_interop.py tests/ops/test_operation_table.py tests/test_other_inputs.py

test: setup test-main test-interop

test-main: setup
	@started=0; \
	if scripts/slurm-local.sh status >/dev/null 2>&1; then \
	  echo "make test: using the running local SLURM"; \
	elif scripts/slurm-local.sh start; then \
	  started=1; \
	else \
	  echo "make test: could not start a local SLURM (see above); the slurm tests will skip"; \
	fi; \
	rc=0; $(PY) -m pytest -q --doctest-modules src/scdask || rc=$$?; \
	$(PY) -m pytest -q tests || rc=$$?; \
	if [[ $$started == 1 ]]; then scripts/slurm-local.sh stop || true; fi; \
	if [[ $$rc == 5 ]]; then echo "make test: pytest collected no tests"; fi; \
	exit $$rc

test-interop: test-main
	@if [[ -z "$(PY312)" ]]; then \
	  echo "make test: no python3.12 found; the Python 3.12 interop run is skipped"; \
	  [[ "$${SCDASK_REQUIRE_PY312:-0}" != 1 ]]; exit $$?; \
	fi; \
	PYTHON="$(PY312)" SCDASK_VENV=.venv312 SCDASK_EXTRAS=interop scripts/setup.sh && \
	.venv312/bin/python -m pytest -q $(INTEROP_TESTS)

lint: setup
	.venv/bin/ruff check src tests
	.venv/bin/ruff format --check src tests
