# jlora: two commands for a fresh clone.
#   make test   set up .venv, then lint, format check and the test suite (CPU)
#   make demo   set up .venv, then the demo on CPU: the drain policies on the tiny model, simulated
#               (the same table on every machine) and real (this machine, at 70% of its capacity)
#   make tensorboard   serve the demo's TensorBoard runs (runs/demo) at http://localhost:6006
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo tensorboard lint clean

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

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs/demo

clean:
	rm -rf $(VENV)
