"""Batched kernels, each a triad: Triton kernel, plain-torch reference (plus a fused C++ CPU loop
where it pays), one dispatcher. See pgraft/kernels/_backend.py for how the path is chosen."""

from .denoise_step import StepOutput, denoise_step

__all__ = ["StepOutput", "denoise_step"]
