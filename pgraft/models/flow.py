"""An unconditional rectified-flow (flow-matching) model: a diffusers UNet2DModel predicting the
velocity v = ε − x_0 of the path x_σ = (1 − σ)·x_0 + σ·ε (σ = 1 noise, σ = 0 data), the
convention of diffusers' FlowMatchEulerDiscreteScheduler. The timestep is σ·1000."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from ..config import UNetConfig
from .unet import unet_layout

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULER_CONFIG = {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "shift": 1.0}


class FlowUNet(nn.Module):
    prediction_type = "flow"

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet
        self.scheduler_config = dict(SCHEDULER_CONFIG)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = t.to(x.device, torch.float32).expand(x.shape[0])
        return self.unet(x.to(self.unet.dtype), t).sample.float()

    @classmethod
    def from_config(cls, cfg: UNetConfig, image_size: int, channels: int = 1) -> "FlowUNet":
        levels = len(cfg.block_out_channels)
        down, up = ["DownBlock2D"] * levels, ["UpBlock2D"] * levels
        if cfg.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        return cls(UNet2DModel(**unet_layout(cfg, image_size, channels, down, up)))
