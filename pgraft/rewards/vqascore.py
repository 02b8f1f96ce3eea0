"""VQAScore (Lin et al., 2024), the paper's reward, through the optional `t2v_metrics` package.

t2v_metrics scores image files against texts; images are written as PNGs to a temporary folder
and each is scored against its own prompt.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..errors import RewardError


class VQAScore:
    __name__ = "vqascore"

    def __init__(self, prompts: Sequence[str], model: str = "clip-flant5-xxl", device: str | None = None):
        try:
            import t2v_metrics
        except ImportError:
            raise RewardError(
                "the VQAScore reward needs the optional extra: pip install 'pgraft[vqascore]' (package t2v_metrics)"
            ) from None
        kwargs = {"device": device} if device else {}
        self.scorer = t2v_metrics.VQAScore(model=model, **kwargs)
        self.prompts = list(prompts)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        out = torch.empty(len(pixels))
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i, img in enumerate(pixels.numpy()):
                paths.append(str(Path(tmp) / f"{i}.png"))
                Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(paths[-1])
            for p in conditions.unique().tolist():  # one text per call: scores are [images, 1]
                rows = (conditions == p).nonzero().flatten().tolist()
                scores = self.scorer(images=[paths[i] for i in rows], texts=[self.prompts[p]])
                out[rows] = torch.as_tensor(scores, dtype=torch.float32).view(-1).cpu()
        return out
