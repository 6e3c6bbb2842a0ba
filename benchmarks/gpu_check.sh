#!/usr/bin/env bash
# The prepared GPU check for a session that has device time (issues #3 and #5): one call, under 9 minutes.
#
# Here, before the call (Omniglot travels in the git-ignored carry/ folder; 14 MB):
#   mkdir -p carry/omniglot && cp ../shared/data/omniglot/*.zip carry/omniglot/
#   the peers and MuJoCo as wheels for the device's Python 3.12 in carry/whl:
#   DEST=carry/whl bash benchmarks/peers/gpu_wheels.sh
#   (without them the peers are "not installed" and step 4 uses 2D navigation)
# Then: run(command="bash benchmarks/gpu_check.sh", carry=["carry"], timeout_s=560)
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
main() {
if ls carry/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site carry/whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu_device.txt"

# Budget: starting the machine took 30-60 s of the 15 device minutes on 2026-11-27 (the tool warns of
# up to 6); the timeouts of steps 1-5 add up to 514 s (step 6, 100 s more, comes last), most
# important first, and every step writes its results under $OUT as it goes (on 2026-11-27 steps 1-5
# ran in 246 s on an H200).
if [ "$QUICK" = 1 ]; then REPEATS=1; ITERS=20; LIMIT=5; else REPEATS=10; ITERS=1000; LIMIT=8; fi

# 1. Throughput and peak memory of every paper workload: fastmaml vs a plain loop and the peers
#    (learn2learn, higher: their wheels in carry/whl) and the CUDA-graph step the trainer uses,
#    second and first order; meta-gradients checked in float64. --time-limit bounds each of the 8
#    (workload, order) groups.
GRAPH_ROW=(); [ "$DEVICE" = cpu ] || GRAPH_ROW=('fastmaml cuda graph')
timeout $((LIMIT * 8 + 60)) $PY benchmarks/bench.py --device "$DEVICE" --repeats "$REPEATS" --time-limit "$LIMIT" \
  --workloads sinusoid omniglot-5w1s omniglot-20w1s miniimagenet-5w1s \
  --impls fastmaml "${GRAPH_ROW[@]}" 'fastmaml vmap' 'fastmaml loop' 'fastmaml micro-batch 4' 'torch.func loop' learn2learn higher \
  --micro-batch-size 4 --out "$OUT/bench_gpu.md"

# 2. The GPU levers (TF32, cudnn.benchmark, convolution as a batched matmul, CUDA graphs) on
#    fastmaml's meta-step, with the float32-vs-float64 meta-gradient error of each.
timeout 90 $PY benchmarks/gpu_levers_bench.py --device "$DEVICE" --repeats $((REPEATS * 3)) \
  --time-limit $((LIMIT + 4)) --out "$OUT/gpu_levers.md"

# 3. The real Omniglot 5-way 1-shot preset on the GPU (15 queries per class as issue #5's target run),
#    with the trainer's defaults (CUDA graph, TF32 off) and with TF32: seconds per iteration over
#    ITERS iterations, to extrapolate the 60,000-iteration run.
if [ -f carry/omniglot/images_background.zip ]; then
  export FASTMAML_CACHE=/tmp/fastmaml-cache
  for TF32 in false true; do
    timeout 60 $PY -m fastmaml train omniglot --root carry/omniglot --ways 5 --shots 1 --device "$DEVICE" \
      --iterations "$ITERS" --out /tmp/omniglot-tf32-$TF32 --no-progress --set queries=15 --set val_every=0 \
      --set log_every=$((ITERS / 5)) --set checkpoint_every="$ITERS" --set threads=0 --set tf32=$TF32
    cp /tmp/omniglot-tf32-$TF32/metrics.jsonl "$OUT/omniglot_gpu_tf32_$TF32.jsonl"
  done
else
  echo "carry/omniglot/*.zip not found: skipping the Omniglot run" | tee -a "$OUT/gpu_device.txt"
fi

# 4. Meta-RL: the TRPO meta-update on the GPU (sampling stays on the CPU), one timed iteration after a
#    warm-up (half-cheetah when mujoco and gymnasium came as wheels, else 2D navigation).
RL_ENV=nav2d; $PY -c "import mujoco, gymnasium" 2>/dev/null && RL_ENV=cheetah-dir
timeout 70 $PY benchmarks/rl_maml_bench.py --env "$RL_ENV" --iterations 1 --strategies vmap \
  --set device="$DEVICE"
# the tests that run only on a GPU: the TRPO update, the trainer's and the benchmark's CUDA graphs
[ "$DEVICE" = cpu ] || timeout 60 $PY -m pytest -q -p no:cacheprovider tests/unit/rl/test_rl_maml_trpo.py \
  tests/integration/test_fewshot_cli.py tests/unit/test_bench.py -k "gpu or cuda_graph"

# 5. Peak memory vs inner steps (vmap whole / micro-batch 4, loop, loop checkpointed), Omniglot 20-way.
[ "$QUICK" = 1 ] || timeout 50 $PY benchmarks/bench.py --device "$DEVICE" --sweep-only \
  --out "$OUT/bench_gpu_memory.md"

# 6. torch.compile of the meta-loss (MAML(compile=True)), unmeasured on a GPU so far: Omniglot 5-way
#    1-shot second order against the default step and learn2learn (compiling takes part of the limit;
#    last, so a slow compile costs nothing above).
timeout 100 $PY benchmarks/bench.py --device "$DEVICE" --repeats "$REPEATS" --time-limit "$LIMIT" --no-memory \
  --workloads omniglot-5w1s --orders second --compile --impls fastmaml 'fastmaml compiled' learn2learn \
  --grad-check-tasks 2 --out "$OUT/bench_gpu_compile.md"
ls -la "$OUT"
}
main 2>&1 | tee "$OUT/gpu_check.log"
