# Two commands set up and use a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where no torch is installed we ask for the CPU build; a GPU user runs `make` inside an
# environment that already has torch (VENV=... or `pip install -e .`), which is kept.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup demo app test test-slow bench clean

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

# The local page (http://127.0.0.1:7860/) on what `make demo` trained, offline. The generation demo
# samples tokens of its own digit tokenizer, so where its GPT run exists (`vqgan-lc demo --generate
# gpt`) the app opens on that tokenizer, its digits and its generator; otherwise on the photo
# tokenizer of `make demo` and its held-out crops.
APP_GEN ?= runs/demo-gpt
app: $(VENV)/.installed-demo
	@if [ -f $(APP_GEN)/runs/gpt-lc/generator/model.safetensors ]; then \
		$(VENV)/bin/vqgan-lc app $(APP_GEN)/tokenizers/vqgan-lc/tokenizer --data $(APP_GEN)/data --generator $(APP_GEN)/runs/gpt-lc; \
	else \
		$(VENV)/bin/vqgan-lc app runs/demo/vqgan-lc/tokenizer --data demo:eval:512; \
	fi

test: setup
	$(PY) -m pytest -n 2 -q

test-slow: setup
	$(PY) -m pytest -n 2 -q -m slow

bench: setup
	$(PY) benchmarks/quantizer_search.py
	$(PY) benchmarks/kmeans.py

clean:
	rm -rf $(VENV) runs .pytest_cache
