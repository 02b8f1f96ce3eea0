"""JPEG compressibility and incompressibility, as DDPO (Black et al., 2023) defines them: the size
in kilobytes of the image saved as JPEG at quality 95, negated for compressibility."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Sizes [B] (kB, 1 kB = 1000 bytes) of ``images`` [B, C, H, W] in [0, 1] as JPEG."""
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()  # NHWC
    sizes = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img.squeeze(-1) if img.shape[-1] == 1 else img)).save(
            buf, format="JPEG", quality=quality
        )
        sizes.append(buf.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


def jpeg_compressibility(images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """Reward small files: −(JPEG size in kB)."""
    return -jpeg_size_kb(images)


def jpeg_incompressibility(images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """Reward large files: JPEG size in kB."""
    return jpeg_size_kb(images)
