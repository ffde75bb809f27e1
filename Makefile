# Two commands do all set-up themselves:
#   make train   -> creates .venv on first use, fetches the default corpus, trains the default config
#   make test    -> creates .venv on first use, runs the whole test suite (CPU)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: venv train test test-fast bench evaluate clean

$(STAMP): pyproject.toml scripts/find_python.sh
	@set -e; PYBIN=$$(bash scripts/find_python.sh); \
	  echo "Using $$PYBIN ($$($$PYBIN --version))"; \
	  [ -x $(PY) ] || $$PYBIN -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -m pip install -q -e '.[test]'; \
	  touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)
	$(PY) -m experiments.train --config=default $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu $(PY) -m pytest -q -n 2 --dist loadfile $(ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" $(ARGS)

bench: $(STAMP)
	$(PY) -m experiments.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
