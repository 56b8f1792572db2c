# The two commands: `make train` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test bench lint default-model clean-venv

$(STAMP): pyproject.toml setup.py src/digitlab/vision/_flat.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
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

# The documentation site: regenerate the generated pages, then build with broken links failing.
.PHONY: docs bench-page bench-results screenshots
docs: $(STAMP)
	$(PY) scripts/gen_docs.py
	$(PY) -m mkdocs build --strict --site-dir build/site

# The benchmarks page (and the other generated pages) from benchmarks/results/*.json.
bench-page: $(STAMP)
	$(PY) scripts/gen_docs.py

# The drawing page's pictures in docs/images, from a real server in Chromium.
screenshots: $(STAMP)
	$(PY) scripts/screenshots.py

# Every benchmark, each writing its result into benchmarks/results/, then the page. The GPU
# results come from the same scripts with --device cuda on a machine that has one.
R := benchmarks/results
bench-results: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) benchmarks/preprocess_speed.py --json $(R)/preprocess_speed.json
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/inference.py --repeats 5 --json $(R)/inference.json
	$(PY) benchmarks/tutorial_speed.py --epochs 2 --json $(R)/tutorial_speed.json
	$(PY) benchmarks/time_to_accuracy.py --device cpu --preset fast --seeds 5 --baseline \
		--json $(R)/time_to_accuracy_fast_cpu.json
	$(PY) benchmarks/realworld.py --singles 2000 --numbers 2000 --seed 0 \
		--result $(R)/realworld.json
	$(PY) benchmarks/serve_target.py --rounds 5 --result $(R)/serve_target.json
	$(PY) scripts/gen_docs.py
