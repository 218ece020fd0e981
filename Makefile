# gateprobe: `make demo`, `make test`, `make bench` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test demo bench

venv: $(VENV)/.installed

# Re-installs when setup.cfg or pyproject.toml change; torch is pinned on the command line so pip
# never resolves another torch.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test]' torch==2.13.0
	touch $@

test: venv
	$(BIN)/pytest -x -q tests

# For now: the shipped checkpoints against the biharmonic baseline (a later issue adds `gateprobe demo`).
demo: venv
	$(BIN)/gateprobe evaluate checkpoints/scenes-gated --n 64
	$(BIN)/gateprobe evaluate checkpoints/scenes-pconv --n 64

bench: venv
	$(BIN)/python benchmarks/run_all.py
