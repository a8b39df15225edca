# Two commands on a fresh machine (README: Quickstart). Both set up first (scripts/setup: the right torch build,
# fintrl, the offline model; skipped when installed) into the active Python environment.
#   make quickstart   train and score recipes/quickstart.yaml into runs/quickstart/ (CPU: a few minutes)
#   make test         the test suite, as CI runs it (.ci/run calls this); PYTEST_ARGS='-m "not slow"' to narrow it
#   make setup        only the set-up
# A project virtualenv when scripts/setup made one (an OS-managed Python, PEP 668), else the active python3
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
export PYTHON
PYTEST_ARGS ?=

.PHONY: setup quickstart test

setup:
	@bash scripts/setup

quickstart: setup
	$(PYTHON) -m fintrl run recipes/quickstart.yaml --overwrite

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)
