# Two commands for a new user: `make demo` (the main job, end to end) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-all demo clean

$(VENV)/.installed: constraints.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -n 2 -q tests

test-all: install
	$(PY) -m pytest -n 2 -q -m "" tests

demo: install
	$(PY) scripts/demo.py --output demo_output

clean:
	rm -rf $(VENV) demo_output
