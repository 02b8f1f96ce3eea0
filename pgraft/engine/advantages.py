"""Advantages of the policy-gradient baselines (docs/method.md §4): rewards → per-sample advantages.

- DDPO (kvablack/ddpo-pytorch, ``stat_tracking.py``): a per-condition window of the last
  ``window`` rewards, extended with this round's before use; while a condition's window holds
  fewer than ``min_count`` rewards, the mean and std of the whole round's rewards stand in.
  advantage = (r − mean) / (std + 1e-6). The window persists across rounds (and checkpoints).
- GRPO (yifan123/flow_grpo, ``stat_tracking.py``): each group of M samples of one condition is
  centred on its own mean and scaled by the std of the whole round (``global_std``, Flow-GRPO's
  default) or of the group, + 1e-4. Nothing persists across rounds.

Both see the whole [G, M] table (rewards are all-gathered first), so every rank computes the same
advantages. Non-finite rewards get no advantage (NaN) and take no part in the statistics: those
samples are not trained on.
"""

from __future__ import annotations

from collections import deque

import torch


class PerConditionStats:
    """DDPO's per-prompt statistics tracker over integer conditions."""

    def __init__(self, window: int, min_count: int):
        if window < 1 or min_count < 1:
            raise ValueError(f"window and min_count must be >= 1, got {window} and {min_count}")
        self.window, self.min_count = window, min_count
        self.stats: dict[int, deque] = {}

    def update(self, cond: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Advantages [N] (float64) of ``rewards`` [N] drawn under conditions ``cond`` [N]."""
        r = rewards.double()
        finite = torch.isfinite(r)
        adv = torch.full_like(r, float("nan"))
        if not bool(finite.any()):
            return adv
        batch_mean, batch_std = float(r[finite].mean()), float(r[finite].std(unbiased=False))
        for c in cond[finite].unique().tolist():
            at = (cond == c) & finite
            window = self.stats.setdefault(int(c), deque(maxlen=self.window))
            window.extend(r[at].tolist())
            if len(window) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                values = torch.tensor(list(window), dtype=torch.float64)
                mean, std = float(values.mean()), float(values.std(unbiased=False))
            adv[at] = (r[at] - mean) / (std + 1e-6)
        return adv

    def state_dict(self) -> dict:
        return {str(c): list(w) for c, w in self.stats.items()}

    def load_state_dict(self, state: dict) -> None:
        self.stats = {int(c): deque(v, maxlen=self.window) for c, v in state.items()}


def group_advantages(rewards: torch.Tensor, global_std: bool = True) -> torch.Tensor:
    """GRPO's advantages of a [G, M] reward table (float64, NaN where the reward is not finite)."""
    r = rewards.double()
    finite = torch.isfinite(r)
    zero = torch.zeros_like(r)
    count = finite.sum(1, keepdim=True)
    mean = torch.where(finite, r, zero).sum(1, keepdim=True) / count.clamp(min=1)
    if global_std:
        std = r[finite].std(unbiased=False) if bool(finite.any()) else r.new_tensor(0.0)
    else:
        std = (torch.where(finite, (r - mean) ** 2, zero).sum(1, keepdim=True) / count.clamp(min=1)).sqrt()
    adv = (r - mean) / (std + 1e-4)
    return torch.where(finite, adv, torch.full_like(r, float("nan")))
