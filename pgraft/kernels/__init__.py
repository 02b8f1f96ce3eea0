"""Batched numerical kernels. Each has a plain-torch reference; the dispatcher chooses the path."""

from .denoise_step import StepOutput, denoise_step

__all__ = ["StepOutput", "denoise_step"]
