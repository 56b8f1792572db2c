# The two commands: `make train` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test bench lint default-model clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m digitlab train --preset default

test: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) benchmarks/tutorial_speed.py --epochs 2

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

clean-venv:
	rm -rf $(VENV)
