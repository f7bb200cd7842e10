# make demo | make test | make lint   (each first runs scripts/setup.sh, which creates .venv)
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup demo test lint

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/scdask demo

# The SLURM tests need the one-node SLURM of scripts/slurm-local.sh. If it is not up and this
# user can start it, it is started for the run and stopped afterwards; otherwise those tests
# skip with the reason (or fail, when SCDASK_REQUIRE_SLURM=1 as in .ci/run).
# Any non-zero pytest exit fails the target, including 5 (no tests collected).
test: setup
	@started=0; \
	if scripts/slurm-local.sh status >/dev/null 2>&1; then \
	  echo "make test: using the running local SLURM"; \
	elif scripts/slurm-local.sh start; then \
	  started=1; \
	else \
	  echo "make test: could not start a local SLURM (see above); the slurm tests will skip"; \
	fi; \
	rc=0; $(PY) -m pytest -q tests || rc=$$?; \
	if [[ $$started == 1 ]]; then scripts/slurm-local.sh stop || true; fi; \
	if [[ $$rc == 5 ]]; then echo "make test: pytest collected no tests"; fi; \
	exit $$rc

lint: setup
	.venv/bin/ruff check src tests
	.venv/bin/ruff format --check src tests
