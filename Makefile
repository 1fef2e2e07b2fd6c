# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project into it when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 0
DEMO_CONFIG ?= config/simulated.toml

.PHONY: demo test lint typecheck pytest clean mosquitto bench

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "edge-agent needs Python 3.11 or newer; found " + sys.version.split()[0])'
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "cannot create $(VENV): on Debian or Ubuntu, run: sudo apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

demo: $(STAMP) mosquitto
	@echo "edge-agent demo: simulated sensors -> pipeline -> 5 s windows -> MQTT. Ctrl-C stops it."
	@DEMO_SECONDS=$(DEMO_SECONDS) DEMO_CONFIG=$(DEMO_CONFIG) $(BIN)/python -m agent.demo

test: $(STAMP) mosquitto lint typecheck pytest

# The tests and the demo start their own mosquitto; install it from Debian's packages if missing.
mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing mosquitto (Debian package)"; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	    else \
	      echo "mosquitto is missing: run 'sudo apt-get install mosquitto mosquitto-clients' (or your system's equivalent)"; exit 1; \
	    fi; }

lint: $(STAMP)
	$(BIN)/ruff check agent drivers tests bench
	$(BIN)/ruff format --check agent drivers tests bench
	@if command -v shellcheck >/dev/null; then shellcheck systemd/install.sh; fi

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

# Every figure beside its anchor and goal: a table here, the details in bench/results.json.
# One module: make bench BENCH_ARGS='--only wire'; a smoke run: BENCH_ARGS=--quick.
bench: $(STAMP) mosquitto
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .edge-agent .pytest_cache .mypy_cache .ruff_cache
