"""Backend choice for every kernel: Triton on CUDA tensors, the CPU/torch paths elsewhere.

``backend="auto"`` picks Triton for CUDA tensors and, on the CPU, the fused C++ loop of the
compiled extension (``pgraft._C``) when it is built, else the plain-torch reference. ``"torch"``,
``"cpp"`` and ``"triton"`` force one; forcing Triton on CPU tensors works only under
TRITON_INTERPRET=1 (the tests), and forcing ``cpp`` needs the extension.
"""

from __future__ import annotations

import contextlib
import os
from typing import Literal

import torch

Backend = Literal["auto", "torch", "cpp", "triton"]
BACKENDS = ("auto", "torch", "cpp", "triton")

try:
    from .. import _C  # noqa: F401

    HAVE_CPP = True
except ImportError:  # a source tree that was not built: the torch reference serves the CPU
    _C = None
    HAVE_CPP = False


def launch_device(t: torch.Tensor):
    """The context a Triton launch runs in: the tensor's own GPU made current.

    Triton launches on the *current* CUDA device, so tensors on cuda:1 while cuda:0 is current
    would be read through the wrong context; a kernel launches where its inputs live.
    """
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "triton"
        return "cpp" if HAVE_CPP and device.type == "cpu" else "torch"
    if backend == "cpp" and not HAVE_CPP:
        raise RuntimeError("backend='cpp' needs the compiled extension pgraft._C (pip install -e . builds it)")
    if backend == "cpp" and device.type != "cpu":
        raise ValueError("backend='cpp' runs on CPU tensors only")
    if backend == "triton" and device.type != "cuda" and not interpreting():
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for testing)")
    return backend
