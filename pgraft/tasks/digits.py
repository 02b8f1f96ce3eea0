"""The embedded default task's data: scikit-learn's 1797 real 8×8 handwritten digits.

Images are upsampled to ``image_size`` (bilinear), scaled to [-1, 1] for the diffusion model, and
split into train / held-out test with a fixed seed, stratified by class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NUM_CLASSES = 10
CLASS_NAMES = [str(i) for i in range(NUM_CLASSES)]


@dataclass(frozen=True)
class ImageData:
    """A labelled image data set split into train and held-out test."""

    train_x: torch.Tensor  # [N, 1, S, S] in [-1, 1]
    train_y: torch.Tensor  # [N] int64
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(image_size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1) * 2 - 1
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx = torch.arange(len(y)).numpy()
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y.numpy())
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    return ImageData(x[tr], y[tr], x[te], y[te])


def decode(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] → image space [0, 1] (what rewards take)."""
    return ((x.float() + 1) / 2).clamp(0, 1)
