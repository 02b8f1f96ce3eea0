"""Composed inference (docs/method.md §2): fine-tuned model from T to N_I, base model from N_I to 0.

A policy answers one question: which denoiser takes sampler step i. Step i maps x_{S-i} to
x_{S-i-1}, so the fine-tuned model takes the steps whose *input* state index S-i exceeds N_I,
i.e. whose model timestep lies strictly above s = t_{N_I}. With LoRA the two are one network
whose adapter is switched off at N_I (:class:`AdapterOff`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..models.denoiser import Denoiser


class Policy(Protocol):
    def model_for_step(self, step: int, steps: int) -> Denoiser: ...


class Single:
    """One denoiser for every step (the base model, or GRAFT's fine-tuned one)."""

    def __init__(self, model: Denoiser):
        self.model = model

    def model_for_step(self, step: int, steps: int) -> Denoiser:
        return self.model


class Composed:
    def __init__(self, finetuned: Denoiser, base: Denoiser, n_i: int):
        if n_i < 0:
            raise ValueError(f"n_i must be >= 0, got {n_i}")
        self.finetuned, self.base, self.n_i = finetuned, base, n_i

    def uses_finetuned(self, step: int, steps: int) -> bool:
        return steps - step > self.n_i

    def model_for_step(self, step: int, steps: int) -> Denoiser:
        return self.finetuned if self.uses_finetuned(step, steps) else self.base


class AdapterOff(nn.Module):
    """The base model seen through a PEFT model: the same weights with the adapter disabled."""

    def __init__(self, peft_model: nn.Module, prediction_type: str):
        super().__init__()
        self.peft_model = peft_model
        self.prediction_type = prediction_type

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        with self.peft_model.disable_adapter():
            return self.peft_model(x, t, cond)
