# The two commands: `make train` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every pip install, and the build environments pip and `build` make, at the versions of
# constraints.txt: a new release elsewhere changes nothing until that file does.
PINNED := PIP_CONSTRAINT=$(CURDIR)/constraints.txt

.PHONY: train test test-fast test-all bench lint default-model clean-venv dist wheel-check constraints
.PHONY: sanitize fuzz

# Everything (every extra, the test and lint tools), at the versions CI runs: constraints.txt.
$(STAMP): pyproject.toml setup.py constraints.txt src/digitlab/vision/_flat.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PINNED) $(PY) -m pip install --quiet --upgrade pip setuptools
	$(PINNED) $(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m digitlab train --preset fast

# The whole suite, but for the root-only tests (pyproject.toml's addopts).
test: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m pytest -q

# While developing: offline and quick (no MNIST, no training, no browser or PostgreSQL).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser and not postgres and not root"

# Everything, the root-only tests included: for CI, which runs as root.
test-all: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) benchmarks/tutorial_speed.py --epochs 2
	$(PY) benchmarks/time_to_accuracy.py --device cpu --preset fast --seeds 5 --baseline

# Style, types, and the layers and no-cycles contracts of pyproject.toml's [tool.importlinter].
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The model shipped inside the package (src/digitlab/assets): the robust preset, measured on
# MNIST and on the photo-like benchmark; the figures are stored beside the weights.
default-model: $(STAMP)
	$(PY) -m digitlab data fetch
	$(PY) -m digitlab train --preset robust --device cpu --out runs/default-model --force
	$(PY) benchmarks/realworld.py --run runs/default-model --singles 2000 --numbers 2000 \
		--json runs/default-model/realworld.json
	$(PY) scripts/default_model.py runs/default-model \
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

# vision/_flat.c under AddressSanitizer and UBSan: built into a temporary copy of src/ (the
# normal build is left alone), loaded into an ordinary python with the ASan runtime
# preloaded. Leak checks are off: CPython keeps memory until exit by design.
# `make sanitize`: the native, PNG and decode tests; `make fuzz`: FUZZ_SECONDS of seeded
# mutation fuzzing (tests/fuzz_targets.py) of the PNG reader, decode_image and the C
# entry points; a finding's input is written to fuzz-findings/.
FUZZ_SECONDS ?= 600
FUZZ_SEED ?= 0
SANITIZE_TESTS := tests/test_flat_native.py tests/test_png.py tests/test_decode.py
SANITIZE_CFLAGS := -shared -fPIC -O1 -g -ffp-contract=off -fno-wrapv \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
define SANITIZED
set -e; san=$$(mktemp -d "$${TMPDIR:-/tmp}/digitlab-sanitize.XXXXXX"); \
trap 'rm -rf "$$san"' EXIT; cp -r src "$$san/src"; rm -f "$$san"/src/digitlab/vision/_flat*.so; \
inc=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
ext=$$($(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'); \
gcc $(SANITIZE_CFLAGS) -I"$$inc" src/digitlab/vision/_flat.c \
	-o "$$san/src/digitlab/vision/_flat$$ext"; \
asan=$$(gcc -print-file-name=libasan.so); test -e "$$asan"; \
export PYTHONPATH="$$san/src" LD_PRELOAD="$$asan" DIGITLAB_REQUIRE_NATIVE=1 \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1; \
$(PY) -c 'import sys, digitlab.vision._flat as f; sys.exit(None if f.__file__.startswith(sys.argv[1]) and "libasan" in open("/proc/self/maps").read() else "not the sanitizer build: " + f.__file__)' "$$san";
endef

sanitize: $(STAMP)
	@$(SANITIZED) $(PY) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS)

fuzz: $(STAMP)
	@$(SANITIZED) $(PY) tests/fuzz_targets.py --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED)

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
