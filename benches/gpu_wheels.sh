#!/usr/bin/env bash
# Fetches, into .whl/ (git-ignored), the wheels that benches/gpu_check.sh needs on the lent GPU
# machine: its image has torch, triton, pyyaml, pytest, hypothesis, pybind11 and nvidia-ml-py
# (/work/.library/device/KINDS.md) but not diffusers or pydantic, and it cannot reach a registry.
# Python there is 3.12. Run here, then pass carry=[".whl"] to the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl \
  diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  importlib-metadata==10.2.0
ls -1 .whl
