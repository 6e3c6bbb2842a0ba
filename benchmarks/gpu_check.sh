#!/usr/bin/env bash
# The prepared GPU check for a session that has device time (issues #3 and #5): one call, about 8 minutes.
#
# Here, before the call (Omniglot travels in the git-ignored carry/ folder; 14 MB):
#   mkdir -p carry/omniglot && cp ../shared/data/omniglot/*.zip carry/omniglot/
#   optional peers as wheels in carry/whl (see /work/.library/device/README.md), e.g. higher==0.2.1;
#   for step 4 on MuJoCo also mujoco and gymnasium and their requirements (else step 4 uses 2D navigation)
# Then: run(command="bash benchmarks/gpu_check.sh", carry=["carry"], timeout_s=600)
# Results come back under $OUT; copy them to benchmarks/results/ (they are not written there on the device).
#
# Dry run on the CPU (checks the script, not the GPU): DEVICE=cpu QUICK=1 OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/fastmaml-gpu}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ls carry/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site carry/whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu_device.txt"

# Budget: about 6 of the 15 device minutes go to starting the machine; the timeouts below add up to 580 s.
if [ "$QUICK" = 1 ]; then REPEATS=1; ITERS=20; LIMIT=10; else REPEATS=10; ITERS=1500; LIMIT=20; fi

# 1. Throughput and peak memory of every paper workload, fastmaml's strategies vs a plain loop (and
#    the peers where their wheels came along), second and first order; meta-gradients checked in float64.
# --time-limit bounds each of the 8 (workload, order) groups; the report is written at the end.
timeout $((LIMIT * 8 + 60)) $PY benchmarks/bench.py --device "$DEVICE" --repeats "$REPEATS" --time-limit "$LIMIT" \
  --workloads sinusoid omniglot-5w1s omniglot-20w1s miniimagenet-5w1s \
  --impls fastmaml 'fastmaml vmap' 'fastmaml loop' 'torch.func loop' learn2learn higher \
  --micro-batch-size 4 --out "$OUT/bench_gpu.md" 2>&1 | tail -n 40 | tee "$OUT/bench_gpu.log"

# 2. Peak memory vs inner steps (vmap whole / micro-batch 4, loop, loop checkpointed), Omniglot 20-way.
[ "$QUICK" = 1 ] || timeout 120 $PY benchmarks/bench.py --device "$DEVICE" --sweep-only \
  --out "$OUT/bench_gpu_memory.md" 2>&1 | tail -n 15

# 3. The real Omniglot 5-way 1-shot preset on the GPU (15 queries per class as issue #5's target run):
#    seconds per iteration over ITERS iterations, to extrapolate the 60,000-iteration run.
if [ -f carry/omniglot/images_background.zip ]; then
  timeout 150 $PY -m fastmaml train omniglot --root carry/omniglot --ways 5 --shots 1 --device "$DEVICE" \
    --iterations "$ITERS" --out "$OUT/omniglot-run" --no-progress --set queries=15 --set val_every=0 \
    --set log_every=$((ITERS / 5)) --set checkpoint_every="$ITERS" --set threads=0 2>&1 | tail -n 5
  cp "$OUT/omniglot-run/metrics.jsonl" "$OUT/omniglot_gpu_metrics.jsonl" 2>/dev/null
  rm -rf "$OUT/omniglot-run"
else
  echo "carry/omniglot/*.zip not found: skipping the Omniglot run" | tee -a "$OUT/gpu_device.txt"
fi
# 4. Meta-RL: the TRPO meta-update on the GPU (sampling stays on the CPU), both task strategies, one
#    timed iteration each after a warm-up; then the test that the GPU update equals the CPU one.
RL_ENV=nav2d; $PY -c "import mujoco, gymnasium" 2>/dev/null && RL_ENV=cheetah-dir
timeout 90 $PY benchmarks/rl_maml_bench.py --env "$RL_ENV" --iterations 1 --strategies vmap loop \
  --set device="$DEVICE" 2>&1 | tee "$OUT/rl_gpu.txt"
[ "$DEVICE" = cpu ] || $PY -m pytest -q -p no:cacheprovider tests/unit/rl/test_rl_maml_trpo.py -k gpu 2>&1 \
  | tail -n 3 | tee -a "$OUT/rl_gpu.txt"
ls -la "$OUT"
