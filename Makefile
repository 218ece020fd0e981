# gateprobe: `make demo`, `make test`, `make bench` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test test-fast test-slow demo bench reports

venv: $(VENV)/.installed $(VENV)/.kernel

# Re-installs when setup.cfg or pyproject.toml change; torch is pinned on the command line so pip
# never resolves another torch.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test,ray,bench]' torch==2.13.0
	touch $@

# The C++ statistics kernel, built now rather than at the first recording (about 35 s with g++;
# cached in torch's extension folder). Without a compiler: one line, and the pure-torch path.
$(VENV)/.kernel: $(VENV)/.installed probe/stats/native_kernel.cpp probe/stats/native_build.py
	$(BIN)/gateprobe-build-kernel
	touch $@

# The whole suite in two steps (CI runs it through .ci/run): the fast tests, then those marked `slow`
# (setup.cfg's [tool:pytest] markers). `make test-fast` is the first step alone.
test: test-fast test-slow

test-fast: venv
	$(BIN)/pytest -x -q -m "not slow" tests

test-slow: venv
	$(BIN)/pytest -x -q -m slow tests

# Records both shipped checkpoints, analyses, writes runs/demo/scenes-pconv-vs-gated.html, serves the explorer.
demo: venv
	$(BIN)/gateprobe demo

# The canonical reports committed in reports/ (N = 1024 held-out Scenes images per model; the gated model with
# its random-init twin as the control of the G claims).
CANON := runs/canonical
reports: venv
	$(BIN)/gateprobe record --model checkpoints/scenes-pconv --data scenes:64 --n 1024 --out $(CANON)/scenes-pconv --overwrite
	$(BIN)/gateprobe record --model checkpoints/scenes-gated --data scenes:64 --n 1024 --out $(CANON)/scenes-gated --overwrite --with-baseline
	$(BIN)/gateprobe analyze $(CANON)/scenes-gated --n 128
	$(BIN)/gateprobe report $(CANON)/scenes-pconv $(CANON)/scenes-gated --out reports/scenes-pconv-vs-gated.html \
		--title "gateprobe: partial vs gated convolution on Scenes (shipped checkpoints, 1024 held-out images)"

bench: venv
	$(BIN)/python benchmarks/run_all.py
