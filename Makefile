# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project into it when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 0

.PHONY: demo test lint typecheck pytest clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "edge-agent needs Python 3.11 or newer; found " + sys.version.split()[0])'
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "cannot create $(VENV): on Debian or Ubuntu, run: sudo apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

demo: $(STAMP)
	@echo "edge-agent demo: simulated sensors -> pipeline -> 5 s windows. Ctrl-C stops it."
	$(BIN)/edge-agent run -c config/simulated.toml $(if $(filter-out 0,$(DEMO_SECONDS)),--duration $(DEMO_SECONDS))

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check agent drivers tests
	$(BIN)/ruff format --check agent drivers tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .edge-agent .pytest_cache .mypy_cache .ruff_cache
