# `make demo` and `make test` work from a fresh clone with nothing installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The demo needs only the package's own dependencies: the test tools (Lightning, TensorBoard,
# Ray, selenium) would double the demo's set-up time.
RUNTIME_STAMP := $(VENV)/.runtime-stamp

.PHONY: demo test lint bench clean browser

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $(RUNTIME_STAMP) $(STAMP)

$(RUNTIME_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(RUNTIME_STAMP)

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/synaprune demo

# The report's browser test needs Debian's chromium and chromium-driver: installed when absent
# (quietly; as root, or through sudo where there is one), nothing done when present.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing chromium and chromium-driver (Debian packages) for the browser test"; \
	  $(SUDO) apt-get update -qq -o DPkg::Lock::Timeout=600 && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
	    chromium chromium-driver >/dev/null; fi

test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts examples

bench: $(STAMP)
	$(PY) benchmarks/step_cost.py

clean:
	rm -rf $(VENV) build src/*.egg-info
