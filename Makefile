# burst-nli: set up, run the main job, test, bench. `make help` lists the targets.
PYTHON ?= python3
# The CPU wheel of torch 2.13.0 satisfies the project's range without pulling a CUDA build.
# On a machine that has no such wheel at hand, point pip at PyTorch's CPU index, e.g.
#   make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# and on a GPU machine install the CUDA build of torch you want before `make setup`.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := .setup.stamp

.PHONY: help setup run test bench clean

help:
	@echo "make setup  install torch (CPU wheel unless one is installed), the project and its test tools"
	@echo "make run    the main job: a 339-job classify burst in process on synthetic:distilbert-mnli"
	@echo "make test   set up, then run the test suite"
	@echo "make bench  set up, then compare the seed's way with the engine (writes bench/results/)"

$(STAMP): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PYTHON) -m loadtest burst --model synthetic:distilbert-mnli

test: setup
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) bench/engine.py --out bench/results

clean:
	rm -f $(STAMP)
