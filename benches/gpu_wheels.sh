#!/usr/bin/env bash
# Puts into .whl/ (git-ignored) the wheels benches/gpu_check.sh installs on the GPU machine, whose
# image has Python 3.12, torch 2.11, triton 3.6, transformers, accelerate, peft, safetensors,
# scikit-learn, matplotlib, tensorboard, pybind11, ninja, nvidia-ml-py, py-cpuinfo, msgpack, einops,
# psutil and pytest, but not diffusers, deepspeed, hjson or pydantic, and cannot reach a registry
# (docs/gpu.md). DeepSpeed is an sdist: pip builds its py3-none-any wheel here, against this
# machine's torch (its setup only probes torch; its ops compile just in time where they run).
# About 11 MB; pass carry=[".whl"] to the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl \
  diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  importlib-metadata==10.2.0 hjson==3.1.0
ls .whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1 || "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
du -ch .whl/*.whl | tail -1
