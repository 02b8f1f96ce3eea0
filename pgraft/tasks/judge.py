"""The judge: a small CNN trained on the real digits; p_judge(class = c | x) is the reward.

It plays the role of VQAScore in the paper's text-to-image experiments (prompt alignment). It is
trained with small random shifts and pixel noise so that it judges generated digits by shape,
not by artefacts of the real data's upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import JudgeConfig


class JudgeNet(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 128),
            nn.SiLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images in [0, 1] → class logits."""
        return self.net(images * 2 - 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (128-d): the feature space of "FID (judge features)"."""
        return self.net[:-1](images * 2 - 1)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    shifts = torch.randint(-1, 2, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def train_judge(train_images, train_y, cfg: JudgeConfig, progress: bool = True) -> JudgeNet:
    """Train on images in [0, 1]; deterministic given ``cfg.seed``."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = JudgeNet(int(train_y.max()) + 1, train_images.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    for _ in tqdm(range(cfg.steps), desc="train judge", disable=not progress, leave=False):
        idx = torch.randint(0, len(train_y), (cfg.batch,), generator=g)
        loss = F.cross_entropy(net(_augment(train_images[idx], g)), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(net: JudgeNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((net(images).argmax(1) == labels).float().mean())
