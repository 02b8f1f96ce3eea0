"""The reward signature and the one place its contract is checked."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import RewardError

RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def score(reward_fn: RewardFn, images: torch.Tensor, conditions: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Evaluate ``reward_fn`` in batches and check its output: a float tensor [B].

    NaN/Inf values are returned as they are: selection excludes and counts them
    (non-finite rewards are excluded and counted, never fatal). A wrong shape or type raises
    RewardError naming the reward function.
    """
    name = getattr(reward_fn, "__name__", type(reward_fn).__name__)
    outs = []
    for start in range(0, images.shape[0], batch_size):
        img, cond = images[start : start + batch_size], conditions[start : start + batch_size]
        out = reward_fn(img, cond)
        if not isinstance(out, torch.Tensor):
            raise RewardError(f"reward {name} returned {type(out).__name__}, expected a torch.Tensor")
        if out.shape != (img.shape[0],):
            raise RewardError(
                f"reward {name} returned shape {tuple(out.shape)} for a batch of {img.shape[0]} "
                f"images; expected ({img.shape[0]},)"
            )
        if not out.is_floating_point():
            raise RewardError(f"reward {name} returned dtype {out.dtype}, expected a float dtype")
        outs.append(out.detach().float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)
