# `make demo` and `make test` work from a fresh clone with nothing installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/synaprune demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts examples

bench: $(STAMP)
	$(PY) benchmarks/step_cost.py

clean:
	rm -rf $(VENV) build src/*.egg-info
