# burst-nli: set up, run the main job, test, bench. `make help` lists the targets.
# Everything runs in the project's own virtualenv, $(VENV), installed from locks/dev.txt: exact versions
# with hashes (locks/README.md says why and how). Nothing is installed into $(PYTHON) itself.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# torch 2.13.0+cpu (the lock's CPU build) is not on PyPI. The CI machines' pip finds it through its own
# --find-links; elsewhere point pip at PyTorch's CPU index:
#   make setup TORCH_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.setup.stamp
# The main job's report (summary.json, jobs.jsonl, plots): `make run OUT=elsewhere`.
OUT ?= runs/peak-minute

.PHONY: help setup run test test-latest lock bench bench-host bench-gpu check-images clean

help:
	@echo "make setup         create $(VENV) from locks/dev.txt (CPU torch), the project editable in it"
	@echo "make run           the main job: replay the bundled 339-job peak news minute in process on synthetic:distilbert-mnli (report in $(OUT)/)"
	@echo "make test          set up, then run the test suite (what CI runs)"
	@echo "make test-latest   the suite on the newest releases pyproject.toml allows, in .venv-latest, with a report of what moved"
	@echo "make lock          rewrite locks/*.txt from pyproject.toml, keeping pinned versions (UPGRADE=1: the newest)"
	@echo "make bench         set up, then compare the seed's way with the engine (writes bench/results/)"
	@echo "make bench-gpu     every way side by side in one run: seed, pipeline, LitServe, burst-nli in process and over HTTP (BENCH_GPU_ARGS=--quick on a CPU)"
	@echo "make bench-host    the host path with the GPU's forward emulated (bench/host.py): decode to aggregate, in process and over HTTP, on any machine"
	@echo "make check-images  hadolint both Dockerfiles, then run their steps on a clean virtualenv"

# The lock is for CPython 3.11 on Linux x86-64 (locks/README.md); say so instead of failing inside pip.
$(STAMP): locks/dev.txt pyproject.toml
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { \
	  echo "make setup: '$(PYTHON) -m venv' is not available. Install it (Debian/Ubuntu: apt-get install python3-venv)"; \
	  echo "            or name an interpreter that has it: make setup PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c "import sys; sys.exit(sys.version_info[:2] != (3, 11))" || { \
	  echo "make setup: locks/dev.txt is for Python 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1)."; \
	  echo "            name a 3.11 interpreter: make setup PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --require-hashes --no-deps $(TORCH_PIP_ARGS) -r locks/dev.txt
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VPY) -m pip check
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VPY) -m loadtest replay peak-minute --target inproc --model synthetic:distilbert-mnli --out $(OUT)

test: setup
	$(VPY) -m pytest

# Not part of CI: the newest releases inside pyproject.toml's ranges (torch stays the lock's CPU build),
# so a breaking release shows up here before anyone refreshes the lock. Exits as the suite does.
LATEST_VENV ?= .venv-latest
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager $(TORCH_PIP_ARGS) \
	  -c locks/constraints-cpu.txt -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pytest -p no:cacheprovider -q; status=$$?; \
	  $(LATEST_VENV)/bin/python locks/drift.py --lock locks/dev.txt --suite-exit $$status; exit $$status

# uv resolves for the lock's platform, not this machine's; the CPU torch wheel comes from pip's own
# --find-links when one is set (the CI machines), else from PyTorch's CPU index.
UV := UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv
TORCH_CPU_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu)
LOCK := $(UV) pip compile -q pyproject.toml --generate-hashes --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: setup
	$(LOCK) --python-version 3.11 --extra plots --extra dev $(TORCH_CPU_SOURCE) -c locks/constraints-cpu.txt -o locks/dev.txt
	$(LOCK) --python-version 3.11 $(TORCH_CPU_SOURCE) -c locks/constraints-cpu.txt -o locks/image-cpu.txt
	$(LOCK) --python-version 3.12 -c locks/constraints-gpu.txt -o locks/image-gpu.txt

bench: setup
	$(VPY) bench/engine.py --out bench/results

# The host path with the GPU's forward emulated (bench/host.py): runs on any machine.
bench-host: setup
	$(VPY) bench/host.py --out bench/results

# The side-by-side table of every way to serve the jobs (bench/gpu.py); installs the `peers` extra (LitServe),
# which the lock leaves out, unless it is there.
BENCH_GPU_ARGS ?=
bench-gpu: setup
	$(VPY) -c "import litserve" 2>/dev/null || $(VPY) -m pip install -e ".[peers]"
	$(VPY) bench/gpu.py --out bench/results $(BENCH_GPU_ARGS)

# Docker cannot run on the CI machines: lint the Dockerfiles (hadolint comes with the dev extra) and
# run what they run (install from the lock, bake-model, the entry commands) on a fresh virtualenv.
check-images: setup
	$(VENV)/bin/hadolint Dockerfile.gpu Dockerfile.cpu
	$(VPY) .ci/check_image_steps.py --python $(PYTHON) --pip-args "$(TORCH_PIP_ARGS)"

clean:
	rm -rf $(VENV) $(LATEST_VENV)
