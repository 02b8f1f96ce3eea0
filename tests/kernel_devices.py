"""Where each kernel backend runs in the tests.

On a machine with a GPU, Triton runs compiled on CUDA tensors (conftest leaves TRITON_INTERPRET
unset there); elsewhere it runs on CPU tensors under TRITON_INTERPRET=1. The torch reference and
the C++ loops run on CPU tensors. Tests build their inputs on the CPU (seeded CPU generators),
move them with :func:`to` and compare on the CPU after :func:`host`.
"""

from __future__ import annotations

import torch

from pgraft.kernels import _backend

GPU = torch.cuda.is_available()
BACKENDS = ["torch", "triton"] + (["cpp"] if _backend.HAVE_CPP else [])


def device(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "triton" and GPU else "cpu")


def to(backend: str, *tensors):
    """The tensors (None kept) on the backend's device."""
    dev = device(backend)
    return [t.to(dev) if isinstance(t, torch.Tensor) else t for t in tensors]


def host(obj):
    """A tensor, a NamedTuple or tuple/list of them, back on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(host(v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(host(v) for v in obj)
    return obj
