#!/usr/bin/env bash
# Everything that needs a GPU, as ONE command on the lent GPU machine (docs/gpu.md), within 8 minutes.
#
#   bash benches/gpu_wheels.sh                  # here, once: the ~11 MB of wheels the image lacks
#   bash benches/gpu_check.sh --cpu-rehearsal   # here (and in CI): every step a CPU can run, runs
#   device run: bash benches/gpu_check.sh       # carry=[".whl"], timeout_s=540
#
# Steps: the machine; installing pgraft against the image's torch 2.11 / triton 3.6 / Python 3.12
# from the carried wheels; the kernel, buffer and device-placement tests on CUDA (Triton compiled,
# not interpreted); the step / select / buffer benches (host-to-device copies from pinned memory
# timed); one GRAFT, one P-GRAFT and one DDPO round on digits, with the first PPO ratio; a tiny
# Stable Diffusion trained and sampled by `pgraft sample`; the round bench with CUDA graphs on and
# off. Each step has its own time limit and the script a deadline (DEADLINE_S, 470 s), so the
# command ends inside the device tool's limit whatever hangs; a step past the deadline is skipped
# and recorded. After every step the results so far are packed into $OUT (results.tgz, steps.tsv,
# gpu_check.log): a run cut short still returns what it finished.
set -u
cd "$(dirname "$0")/.."
REHEARSAL=0
[ "${1:-}" = "--cpu-rehearsal" ] && REHEARSAL=1
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PGRAFT_CACHE="${PGRAFT_CACHE:-/tmp/gpu_check_cache}"
unset TRITON_INTERPRET  # conftest sets it only where there is no GPU
RUNS=runs/gpu_check
rm -rf "$RUNS"
mkdir -p "$RUNS"
DEADLINE_S=${DEADLINE_S:-470}
# the rehearsal's bench numbers are a CPU's: written beside the runs, not over the committed results
[ $REHEARSAL = 1 ] && export PGRAFT_BENCH_RESULTS=$RUNS/bench_results
PY=python3
[ $REHEARSAL = 1 ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PATH="$(dirname "$(command -v $PY)"):$PATH"  # pgraft and deepspeed from the same environment
START=$SECONDS
FAILED=0
printf 'step\trc\tseconds\n' >"$OUT/steps.tsv"

pack() {
  tar czf "$OUT/results.tgz" benches/results "$RUNS" 2>/dev/null
}

# step NAME LIMIT_S COMMAND...: run with a time limit, record the exit status, pack the results
step() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  local left=$((DEADLINE_S - (SECONDS - START)))
  if [ "$left" -le 10 ]; then
    echo "=== $name: skipped (deadline)"
    printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"
    FAILED=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$OUT/steps.tsv"
  [ $rc = 0 ] || FAILED=1
  pack
}

# gpu_only NAME LIMIT_S COMMAND...: a step that means nothing without CUDA
gpu_only() {
  if [ $REHEARSAL = 1 ]; then
    echo "=== $1: CUDA only, skipped in the CPU rehearsal"
    printf '%s\trehearsal-skip\t0\n' "$1" >>"$OUT/steps.tsv"
  else
    step "$@"
  fi
}

# --- the machine and the install ------------------------------------------------------------------
gpu_only gpu 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
if [ $REHEARSAL = 1 ]; then
  # what the device call carries: the working tree and .whl, under the tool's 64 MiB
  step wheels 120 bash benches/gpu_wheels.sh
  step carry_size 20 $PY - <<'EOF'
import subprocess
from pathlib import Path
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
tree = sum(Path(f).stat().st_size for f in files.decode().split("\0") if f and Path(f).is_file())
wheels = sum(p.stat().st_size for p in Path(".whl").glob("*.whl"))
print(f"carried: working tree {tree / 2**20:.1f} MiB + .whl {wheels / 2**20:.1f} MiB = {(tree + wheels) / 2**20:.1f} MiB (limit 64)")
raise SystemExit(0 if tree + wheels < 64 * 2**20 else 1)
EOF
else
  step wheels 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
  # pgraft against the image's own torch and triton: its ranges admit them; pgraft._C is built here
  step install 240 $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi
step versions 60 $PY -c "import torch, triton, deepspeed, diffusers, pgraft, pgraft._C; print('torch', torch.__version__, 'triton', triton.__version__, 'deepspeed', deepspeed.__version__, 'diffusers', diffusers.__version__)"
step info 60 $PY -m pgraft.cli info

# --- kernels, buffer and device placement on CUDA ---------------------------------------------------
step tests 150 $PY -m pytest -q -p no:cacheprovider -x tests/test_denoise_step.py tests/test_select_kernel.py \
  tests/test_buffer.py tests/test_device_placement.py
step bench_denoise_step 60 $PY benches/bench_denoise_step.py --quick
step bench_denoise_step_bf16 45 $PY benches/bench_denoise_step.py --quick --dtype bfloat16
step bench_select 45 $PY benches/bench_select.py --quick
step bench_buffer 60 $PY benches/bench_buffer.py --quick --trials 1

# --- one round of each method on digits, where DeepSpeed trains ---------------------------------------
ROUND=(--set method.rounds=1 --set method.samples_per_condition=32 --set method.rollout_batch=160
  --set method.train.steps_per_round=30 --set method.train.batch_size=32 --set eval.samples_per_class=20)
[ $REHEARSAL = 1 ] && ROUND+=(--set method.samples_per_condition=8 --set method.rollout_batch=80
  --set method.train.steps_per_round=5 --set method.train.batch_size=16 --set eval.samples_per_class=4)
step round_graft 90 $PY -m pgraft.cli train --task digits --out $RUNS/graft --set method.n_i=0 "${ROUND[@]}"
step round_pgraft 90 $PY -m pgraft.cli train --task digits --out $RUNS/pgraft --set method.n_i=6 "${ROUND[@]}"
step round_ddpo 120 $PY -m pgraft.cli train --task digits --out $RUNS/ddpo --set method.algorithm=ddpo \
  --set method.n_i=0 --set method.train.lr=3e-4 --set method.pg.clip_range=1e-2 "${ROUND[@]}"
# the DDPO round's first PPO ratio, max |rho - 1| before any update: rounding-level when the rollout
# and the recomputation agree (IEEE fp32 both), about the clip range under TF32
step first_ratio 10 $PY -c "import json; h = json.load(open('$RUNS/ddpo/results.json'))['history']; \
print('first PPO ratio, max |rho - 1| per round:', [r['first_ratio_dev'] for r in h])"

# --- Stable Diffusion: a tiny SD trained by `pgraft train`, sampled by `pgraft sample` ---------------------
step sd_sample 120 $PY -m pytest -q -p no:cacheprovider -x \
  "tests/test_stable_diffusion.py::test_pgraft_train_runs_the_sd2_recipe_on_a_tiny_model"

# --- whole rounds against the naive loop, CUDA graphs off and on (refused, and said so, on a CPU) -----
step bench_round 150 $PY benches/bench_round.py --quick --tasks digits --variants cuda_graphs
# a tiny random-initialised SD of the real architecture at SD 1.x's 64x64 latents, CFG 5 (last: the
# first step the deadline drops)
step bench_round_sd 90 $PY benches/bench_round.py --quick --tasks sd_tiny --sd-latent $([ $REHEARSAL = 1 ] && echo 16 || echo 64) --guidance 5

pack
echo "=== done in $((SECONDS - START)) s; failed steps: $FAILED; results: $OUT/results.tgz, $OUT/steps.tsv"
if [ $REHEARSAL = 1 ]; then
  echo "device command: run(command=\"bash benches/gpu_check.sh\", carry=[\".whl\"], timeout_s=540)"
fi
exit $FAILED
