"""One denoising step for the whole batch (DDIM with any η, DDPM posterior), CFG included.

This is the plain-torch reference path; every row may sit at its own sampler step. Formulas
follow diffusers' DDIMScheduler.step / DDPMScheduler.step (METHOD.md §4 writes the DDIM step):
  x̂_0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t                       (ε-prediction)
  x̂_0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂,  ε̂ = √ᾱ_t·v̂ + √(1−ᾱ_t)·x_t   (v-prediction)
  DDIM: σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev),
        x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z
  DDPM: β' = 1−ᾱ_t/ᾱ_prev, x_prev = √ᾱ_prev·β'/(1−ᾱ_t)·x̂_0 + √(1−β')·(1−ᾱ_prev)/(1−ᾱ_t)·x_t + σ·z,
        σ² = (1−ᾱ_prev)/(1−ᾱ_t)·β'
Arithmetic is float32 whatever the storage dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import ShapeError
from ..models.schedule import Schedule


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


def _per_row(values: torch.Tensor, step: int | torch.Tensor, batch: int, ndim: int, device):
    idx = torch.as_tensor(step, device=values.device).reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(batch)
    if idx.numel() != batch:
        raise ShapeError(f"step has {idx.numel()} entries for a batch of {batch}")
    return values[idx].to(device=device, dtype=torch.float32).view(batch, *([1] * (ndim - 1)))


def denoise_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    step: int | torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    uncond_output: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> StepOutput:
    """Advance ``sample`` (x at sampler step ``step``) by one step of ``schedule``.

    ``step`` is an int or a LongTensor [B] of sampler-step indices. ``noise`` (same shape as
    ``sample``) is required when the step is stochastic. With ``uncond_output``, the network
    output is uncond + w·(cond − uncond) (classifier-free guidance).
    """
    if model_output.shape != sample.shape:
        raise ShapeError(f"model_output shape {tuple(model_output.shape)} != sample {tuple(sample.shape)}")
    b, nd, dev = sample.shape[0], sample.ndim, sample.device
    x = sample.float()
    out = model_output.float()
    if uncond_output is not None:
        out = uncond_output.float() + guidance_scale * (out - uncond_output.float())
    a_t = _per_row(schedule.alpha_t, step, b, nd, dev)
    a_prev = _per_row(schedule.alpha_prev, step, b, nd, dev)
    sqrt_a, sqrt_1ma = a_t.sqrt(), (1 - a_t).sqrt()
    if schedule.prediction_type == "epsilon":
        eps = out
        x0 = (x - sqrt_1ma * eps) / sqrt_a
    else:  # v_prediction
        x0 = sqrt_a * x - sqrt_1ma * out
        eps = sqrt_a * out + sqrt_1ma * x
    if schedule.clip_sample_range is not None:
        x0 = x0.clamp(-schedule.clip_sample_range, schedule.clip_sample_range)
    beta_ratio = 1 - a_t / a_prev  # β' = 1 − ᾱ_t/ᾱ_prev
    var = (1 - a_prev) / (1 - a_t) * beta_ratio
    if schedule.kind == "ddim":
        sigma = schedule.eta * var.clamp(min=0).sqrt()
        prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    else:
        sigma = var.clamp(min=1e-20).sqrt() * (a_prev < 1).float()  # no noise onto x_0
        prev = (a_prev.sqrt() * beta_ratio / (1 - a_t)) * x0 + ((1 - beta_ratio).sqrt() * (1 - a_prev) / (1 - a_t)) * x
    if bool((sigma > 0).any()):
        if noise is None:
            raise ShapeError("this step is stochastic: pass a noise tensor")
        prev = prev + sigma * noise.float()
    return StepOutput(prev.to(sample.dtype), x0.to(sample.dtype))
