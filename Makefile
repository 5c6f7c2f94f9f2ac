# RustCI Runner: developer entry points. Everything runs from the project's own virtualenv (.venv),
# created on first use and re-installed only when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean clean-state

$(PY):
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is needed as python3.11 or python3" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "Could not create $(VENV); on Debian: apt-get install python3-venv" >&2; exit 1; }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

## run: a coordinator and one local agent in the foreground (Ctrl-C stops both); RUN_ARGS="--port 9090"
run: $(STAMP)
	$(PY) -m rustci local up $(RUN_ARGS)

## test: the test suite; PYTEST_ARGS="-k jobs -x"
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## bench: every bench/bench_*.py, one after the other
bench: $(STAMP)
	@set -e; for script in bench/bench_*.py; do \
		[ -e "$$script" ] || { echo "no bench/bench_*.py yet"; break; }; \
		echo "== $$script"; PYTHONPATH=. $(PY) "$$script"; \
	done

clean:
	rm -rf $(VENV)

## clean-state: forget the local coordinator's keys, runners and jobs, and the local agent's identity
clean-state:
	rm -rf .rustci
