"""VQAScore's form from a local model: r(x, c) = P("yes" | image x, prompt c), for any network that
maps (images in [0, 1], prompt ids) to the logit of "yes" (the scenes task's mini VQA model is one)."""

from __future__ import annotations

import torch
from torch import nn


class YesProbability:
    __name__ = "yes_probability"

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Computed where the model lives, returned where the images were."""
        device = next(self.model.parameters()).device
        logits = self.model(images.to(device).float(), conditions.to(device).long())
        return torch.sigmoid(logits).to(images.device)
