#!/usr/bin/env bash
# Everything that needs a GPU, in one call on the lent machine (issue 3, item 6; issue 4's pinned
# arenas; issue 16's whole rounds): the kernel and buffer tests with Triton compiled on CUDA tensors
# (no interpreter), then every bench. Prepare here with benches/gpu_wheels.sh, then run through the device tool:
#     run(command="bash benches/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Results: benches/results/<device>/ there, copied to $OUT/results.tgz with the log $OUT/gpu_check.log;
# unpack the archive here and commit it. Each step runs even if an earlier one failed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
unset TRITON_INTERPRET

step() {  # step NAME COMMAND...: run, time and record the exit status
  local name=$1 t0=$SECONDS
  shift
  echo "=== $name: $*"
  "$@"
  echo "=== $name: rc=$? in $((SECONDS - t0)) s"
}

if [ -d .whl ]; then
  step wheels python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
step gpu nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
step versions python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
# pgraft._C against this machine's torch (the one built here is for another torch and Python).
step extension python3 setup.py -q build_ext --inplace
step tests python3 -m pytest -q -p no:cacheprovider tests/test_denoise_step.py tests/test_select_kernel.py \
  tests/test_buffer.py
step bench_denoise_step python3 benches/bench_denoise_step.py
step bench_denoise_step_bf16 python3 benches/bench_denoise_step.py --quick --dtype bfloat16
step bench_select python3 benches/bench_select.py
step bench_buffer python3 benches/bench_buffer.py
# issue 16: whole rounds against the naive loop, every speed option (CUDA graphs included) one step
# from the defaults, GPU utilisation and memory sampled by nvidia-ml-py during each round
step bench_round python3 benches/bench_round.py --quick --ablate --tasks digits
step bench_round_sd python3 benches/bench_round.py --quick --tasks sd_tiny --sd-latent 64 --guidance 5
tar czf "$OUT/results.tgz" benches/results
echo "=== done: $OUT/results.tgz"
