"""Prompt-alignment reward from a classifier: r(x, c) = p_judge(class = c | x)."""

from __future__ import annotations

import torch
from torch import nn


class JudgeReward:
    __name__ = "judge_reward"

    def __init__(self, judge: nn.Module):
        self.judge = judge.eval().requires_grad_(False)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's logits, computed where the judge lives, returned where the images were."""
        device = next(self.judge.parameters()).device
        return self.judge(images.to(device)).to(images.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        probs = self._logits(images).softmax(dim=1)
        return probs.gather(1, conditions.to(images.device).long().view(-1, 1)).squeeze(1)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self._logits(images).argmax(dim=1)
