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

test: $(STAMP) browser datasets
	$(PY) -m pytest

browser:  # headless Chromium for the report's browser test (Debian's package; the test says so when it is missing)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; } || \
	  echo "could not install chromium (apt-get): the browser test will fail and say so"

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

datasets:  # Fashion-MNIST for the image readers' tests (Debian's package; the reader says so when it is missing)
	@test -f $(FASHION_MNIST) || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
	  echo "could not install dataset-fashion-mnist (apt-get): the Fashion-MNIST tests will fail and say so"

lint: $(STAMP)  # style, types, and the import layering of ARCHITECTURE.md
	$(VENV)/bin/ruff check src tests benchmarks scripts
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
