# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-merge bench-tasks browser datasets clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  # the merge benchmark's --quick run (3 tasks, ~2-3 min), prints the table
	$(VENV)/bin/eigenmix bench merge --quick --force --out runs/bench-quick

test: $(STAMP) browser datasets  # one pytest worker per core (tests/conftest.py shares the cores out)
	$(PY) -m pytest -n auto --dist loadfile

browser:  # headless Chromium for the report's browser test (Debian's package; the test says so when it is missing)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; } || \
	  echo "could not install chromium (apt-get): the browser test will fail and say so"

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
IMAGENET_NAMES := /usr/share/darknet/data/imagenet.labels.list

datasets:  # Fashion-MNIST and ImageNet's class names (Debian's packages; the readers say so when they are missing)
	@test -f $(FASHION_MNIST) -a -f $(IMAGENET_NAMES) || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist darknet >/dev/null; } || \
	  echo "could not install dataset-fashion-mnist / darknet (apt-get): the Fashion-MNIST and bridge tests will fail and say so"

lint: $(STAMP)  # style, types, and the import layering of ARCHITECTURE.md
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/factored_svd.py --json benchmarks/results/factored_svd.json

bench-merge: $(STAMP)  # ~10 minutes: PEFT's dense SVDs dominate
	$(PY) benchmarks/merge_speed.py --json benchmarks/results/merge_speed.json

bench-tasks: $(STAMP)  # the full 8-task merge benchmark (~30 min with training, ~10 min with cached adapters)
	$(VENV)/bin/eigenmix bench merge --force --out benchmarks/results/multitask_merge

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

.PHONY: docs
MKDOCS ?= serve
docs: $(STAMP)  # the documentation site: serves it at http://127.0.0.1:8000 (`make docs MKDOCS=build`: builds it, --strict, into site/)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs $(MKDOCS)
