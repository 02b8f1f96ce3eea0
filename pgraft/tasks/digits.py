"""The embedded default task, `digits`: scikit-learn's 1797 real 8×8 handwritten digits, a
class-conditional UNet2DModel base, a judge classifier's probability of the prompted digit as reward.

Images are upsampled to ``image_size`` (bilinear), scaled to [-1, 1] for the diffusion model, and
split into train / held-out test with a fixed seed, stratified by class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..config.registry import register_task
from .images import ImageData, ImageTask, class_conditional_base, decode  # noqa: F401  (decode: the task's)

NUM_CLASSES = 10
CLASS_NAMES = [str(i) for i in range(NUM_CLASSES)]


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


TASK = ImageTask(
    "digits",
    CLASS_NAMES,
    lambda cfg: load_digits_split(cfg.image_size, cfg.test_fraction, cfg.split_seed),
    lambda cfg: class_conditional_base(cfg, NUM_CLASSES),
)
register_task(
    TASK.definition(
        # the best of `pgraft compare --tune` (one seed, its own held-out seeds; docs/results/tune_digits.json)
        tuned_baselines={
            "ddpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}},
            "grpo": {"train": {"lr": 1e-3}, "pg": {"clip_range": 1e-2}},
        },
    )
)
