# Two commands set up and use a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where no torch is installed we ask for the CPU build; a GPU user runs `make` inside an
# environment that already has torch (VENV=... or `pip install -e .`), which is kept.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup demo test test-slow bench clean

# Extras: [demo] (photos, MNIST digits, plots) and [train] (tensorboard) for `make demo`;
# [dev] (both, plus test tools) for `make test`. Each stamp file records one installed set.
$(VENV)/.torch: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: $(VENV)/.torch
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

$(VENV)/.installed-demo: $(VENV)/.torch
	$(PY) -m pip install -q -e ".[demo,train]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(VENV)/bin/vqgan-lc demo --out runs/demo

test: setup
	$(PY) -m pytest -n 2 -q

test-slow: setup
	$(PY) -m pytest -n 2 -q -m slow

bench: setup
	$(PY) benchmarks/quantizer_search.py
	$(PY) benchmarks/kmeans.py

clean:
	rm -rf $(VENV) runs .pytest_cache
