#!/usr/bin/env bash
# Everything a short GPU lease should measure, in one call (about 5 minutes on an H200):
#   the gpu-marked tests; bench/gpu.py for DistilBERT-MNLI (every way) and DeBERTa-v3-large
#   (careful, in process, pod); bench/gpu_forward.py.
#
#   bash bench/gpu_session.sh [RESULTS_DIR]      # default: bench/results/gpu-session
#
# On a machine that reaches no package index, the wheels of bench/gpu-wheels.txt travel in .whl/
# (BENCHMARKS.md, "The commands"); they are installed into /tmp/site first when .whl/ is there.
# Each step has its own time limit, so one that hangs does not cost the others, and the results
# are packed after each step into RESULTS_DIR.tgz beside the folder (one file to bring back).
set -u
cd "$(dirname "$0")/.."
out="${1:-bench/results/gpu-session}"
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
pack() { tar czf "$out/../$(basename "$out").tgz" -C "$out" . ; }

{ date -u; nproc; nvidia-smi; python3 -c "import sys, torch, transformers; print(sys.version, torch.__version__, torch.version.cuda, transformers.__version__)"; } > "$out/machine.txt" 2>&1

echo "== the gpu-marked tests"
# Older transformers (5.17) call torch.jit.script at import, which torch 2.11 deprecates: not ours.
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore::DeprecationWarning tests/test_model.py > "$out/gpu-tests.txt" 2>&1
echo "rc=$?"; tail -2 "$out/gpu-tests.txt"; pack

echo "== bench/gpu.py, DistilBERT-MNLI"
timeout 360 python3 bench/gpu.py --out "$out/distilbert" > "$out/distilbert.log" 2>&1
echo "rc=$?"; sed -n '3,14p' "$out/distilbert/gpu.md" 2>/dev/null; pack

echo "== bench/gpu_forward.py"
timeout 120 python3 bench/gpu_forward.py --out "$out/forward" > "$out/forward.log" 2>&1
echo "rc=$?"; grep '^{' "$out/forward.log"; pack

echo "== bench/gpu.py, DeBERTa-v3-large"
timeout 180 python3 bench/gpu.py --model synthetic:deberta-v3-large --ways careful,inproc,pod --sustained-s 5 \
    --idle-jobs 20 --out "$out/deberta" > "$out/deberta.log" 2>&1
echo "rc=$?"; sed -n '3,8p' "$out/deberta/gpu.md" 2>/dev/null; pack
