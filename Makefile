# jlora: two commands for a fresh clone.
#   make test   set up .venv, then lint, format check and the test suite (CPU)
#   make demo   set up .venv, then the main demo job on CPU with the built-in tiny model
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint clean

setup: $(STAMP)

# uv installs several times faster than pip here; it is installed into the venv itself.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	JAX_PLATFORMS=cpu $(PY) -m pytest

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m jlora.demo

clean:
	rm -rf $(VENV)
