# The two commands: `make train` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every pip install, and the build environments pip and `build` make, at the versions of
# constraints.txt: a new release elsewhere changes nothing until that file does.
PINNED := PIP_CONSTRAINT=$(CURDIR)/constraints.txt

.PHONY: train test bench lint default-model clean-venv dist wheel-check constraints

# Everything (every extra, the test and lint tools), at the versions CI runs: constraints.txt.
$(STAMP): pyproject.toml setup.py constraints.txt src/digitlab/vision/_flat.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PINNED) $(PY) -m pip install --quiet --upgrade pip setuptools
	$(PINNED) $(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m digitlab train --preset fast

test: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) benchmarks/tutorial_speed.py --epochs 2
	$(PY) benchmarks/time_to_accuracy.py --device cpu --preset fast --seeds 5 --baseline

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

# The model shipped inside the package (src/digitlab/assets): the robust preset, measured on
# MNIST and on the photo-like benchmark; the figures are stored beside the weights.
default-model: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m digitlab train --preset robust --device cpu --out runs/default-model --force
	$(PY) benchmarks/realworld.py --run runs/default-model --singles 2000 --numbers 2000 \
		--json runs/default-model/realworld.json
	$(PY) -m digitlab.default_model runs/default-model \
		--benchmark runs/default-model/realworld.json

clean-venv:
	rm -rf $(VENV)

# The sdist and a wheel (with the compiled extension) in dist/.
dist: $(STAMP)
	rm -rf dist
	$(PINNED) $(PY) -m build --quiet --outdir dist .

# The wheel installed alone into clean venvs: the core install reads digits without
# PyTorch, and [serve] serves them.
wheel-check: dist
	$(PY) .ci/wheel_check.py dist

# Pin what .venv holds now as the versions CI installs.
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --all --exclude-editable \
		| grep -v '^digitlab'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
