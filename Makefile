# Two commands for a new user: `make demo` (the main job, end to end) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-all test-lowest demo web clean

# Resolved by pip alone (the web page's gradio included): `pip check` is clean in the environment this makes.
$(VENV)/.installed: constraints.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test,demo]"
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

# Lint, format and types first (seconds), then the suite; the model's own tests once more with every fast path
# off (modeling_ita.kernels: the plain formulas), against the same golden outputs.
FIGURE_TESTS := tests/test_parity.py tests/test_modeling.py tests/test_pixel_decoder.py tests/test_aggregation_decoder.py \
	tests/test_clip_backbone.py tests/test_loss.py tests/test_transformers_conventions.py tests/apps/test_pipeline.py

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -n 2 -q tests
	ITA_FAST_PATHS=0 $(PY) -m pytest -n 2 -q $(FIGURE_TESTS)

test-all: install
	$(PY) -m pytest -n 2 -q -m "" tests

# The core tests once more with the lowest versions that setup.cfg declares (constraints-lowest.txt), installed
# into an overlay (build/lowest-overlay) that shadows .venv's versions; .venv itself is left unchanged.
test-lowest: install
	$(PY) tools/test_lowest.py

demo: install
	$(PY) scripts/demo.py --output demo_output

web: install
	$(PY) app.py

clean:
	rm -rf $(VENV) demo_output
