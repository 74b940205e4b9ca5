# psplab: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both create .venv when it is missing. torch is pinned: an unpinned torch pulls GBs of CUDA.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench capacity-study clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

# The demo sweep on an embedded Ray (~2 min on 2 cores). --resume makes it rerunnable: a
# finished sweep is left as it is, an interrupted one is finished; nothing is overwritten.
demo: $(STAMP)
	$(BIN)/psp sweep launch sweeps/demo.yaml --name demo --storage results/sweeps --resume
	$(BIN)/psp plots results/sweeps/demo/results --out results/figures/demo

# The capacity study: the sweep (resumable: a finished one is left as it is), then the report,
# README.md and PNG figures in docs/capacity-study/, every number written by the command.
capacity-study: $(STAMP)
	$(BIN)/psp sweep launch sweeps/capacity_study.yaml --name capacity_study --storage results/sweeps --resume
	$(BIN)/psp capacity report results/sweeps/capacity_study/results --out docs/capacity-study

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) results figures .pytest_cache
