"""A weighted sum of rewards: r = Σ_i w_i · r_i (each term checked against the signature)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import RewardError
from .base import RewardFn, score


class WeightedSum:
    __name__ = "weighted_sum"

    def __init__(self, terms: Sequence[tuple[float, RewardFn]]):
        if not terms:
            raise RewardError("a weighted sum needs at least one (weight, reward) term")
        for w, fn in terms:
            if not callable(fn) or not isinstance(w, (int, float)):
                raise RewardError(f"each term must be (weight: float, reward: callable), got {(w, fn)!r}")
        self.terms = [(float(w), fn) for w, fn in terms]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return sum(w * score(fn, images, conditions) for w, fn in self.terms)
