"""The learning-rate schedule of the scenes task's own trainings (autoencoder, reward model)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` of the steps (at least one), then cosine decay to 0; any
    number of steps, even one."""
    w = max(1, round(warmup * steps))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / w) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
