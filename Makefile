# burst-nli: set up, run the main job, test, bench. `make help` lists the targets.
PYTHON ?= python3
# The CPU wheel of torch 2.13.0 satisfies the project's range without pulling a CUDA build.
# On a machine that has no such wheel at hand, point pip at PyTorch's CPU index, e.g.
#   make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# and on a GPU machine install the CUDA build of torch you want before `make setup`.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := .setup.stamp

.PHONY: help setup run test bench bench-host bench-gpu check-images clean

help:
	@echo "make setup  install torch (CPU wheel unless one is installed), the project and its test tools"
	@echo "make run    the main job: replay the bundled 339-job peak news minute in process on synthetic:distilbert-mnli"
	@echo "make test   set up, then run the test suite"
	@echo "make bench  set up, then compare the seed's way with the engine (writes bench/results/)"
	@echo "make bench-gpu  every way side by side in one run: seed, pipeline, LitServe, burst-nli in process and over HTTP (BENCH_GPU_ARGS=--quick on a CPU)"
	@echo "make bench-host  the host path with the GPU's forward emulated (bench/host.py): decode to aggregate, in process and over HTTP, on any machine"
	@echo "make check-images  hadolint both Dockerfiles, then run their steps on a clean virtualenv"

$(STAMP): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PYTHON) -m loadtest replay peak-minute --target inproc --model synthetic:distilbert-mnli

test: setup
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) bench/engine.py --out bench/results

# The host path with the GPU's forward emulated (bench/host.py): runs on any machine.
bench-host: setup
	$(PYTHON) bench/host.py --out bench/results

# The side-by-side table of every way to serve the jobs (bench/gpu.py); installs the `peers` extra (LitServe) unless it is there.
BENCH_GPU_ARGS ?=
bench-gpu: setup
	$(PYTHON) -c "import litserve" 2>/dev/null || $(PYTHON) -m pip install -e ".[peers]"
	$(PYTHON) bench/gpu.py --out bench/results $(BENCH_GPU_ARGS)

# Docker cannot run on the CI machines: lint the Dockerfiles (hadolint comes with the dev extra) and
# run what they run (install, bake-model, the entry commands) on a fresh virtualenv.
HADOLINT ?= $(shell $(PYTHON) -c "import shutil, sysconfig; print(shutil.which('hadolint', path=sysconfig.get_path('scripts')) or 'hadolint')")

check-images: setup
	$(HADOLINT) Dockerfile.gpu Dockerfile.cpu
	$(PYTHON) .ci/check_image_steps.py --python $(PYTHON) --torch "$(TORCH_SPEC)" --torch-pip-args "$(TORCH_PIP_ARGS)"

clean:
	rm -f $(STAMP)
