"""A class-conditional diffusers UNet2DModel behind the engine's denoiser signature.

It meets the engine's denoiser contract (pgraft/models/denoiser.py); class labels play the role
of prompts.
Label ``num_classes`` is the null label used for classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DModel
from torch import nn

from ..config import UNetConfig


def unet_layout(cfg: UNetConfig, image_size: int, channels: int, down: list[str], up: list[str]) -> dict:
    """The constructor arguments every task UNet shares (diffusers UNet2DModel / UNet2DConditionModel)."""
    return {
        "sample_size": image_size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": tuple(cfg.block_out_channels),
        "layers_per_block": cfg.layers_per_block,
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "norm_num_groups": math.gcd(8, *cfg.block_out_channels),  # GroupNorm needs groups | channels
    }


def build_class_unet(cfg: UNetConfig, image_size: int, num_classes: int, channels: int = 1) -> UNet2DModel:
    levels = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:  # attention only at the coarsest level, where it is cheap
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(**unet_layout(cfg, image_size, channels, down, up), num_class_embeds=num_classes + 1)


class ClassConditionalUNet(nn.Module):
    """Wraps a UNet2DModel so that forward(x, t, cond) returns a plain tensor."""

    def __init__(self, unet: UNet2DModel, num_classes: int, prediction_type: str, scheduler_config: dict):
        super().__init__()
        self.unet = unet
        self.num_classes = num_classes
        self.prediction_type = prediction_type
        self.scheduler_config = dict(scheduler_config)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # bf16/fp16 weights (a DeepSpeed mixed-precision engine) take and give float32 at the edge.
        return self.unet(x.to(self.unet.dtype), t, class_labels=cond).sample.float()

    @classmethod
    def from_config(cls, cfg: UNetConfig, image_size: int, num_classes: int) -> "ClassConditionalUNet":
        return cls(
            build_class_unet(cfg, image_size, num_classes),
            num_classes,
            cfg.prediction_type,
            scheduler_config_for(cfg),
        )

    @classmethod
    def flow(cls, cfg: UNetConfig, image_size: int, num_classes: int) -> "ClassConditionalUNet":
        """A class-conditional rectified-flow model (velocity v = ε − x_0, timestep σ·1000; see
        pgraft/models/flow.py): the conditional flow base of the policy-gradient baselines."""
        from .flow import SCHEDULER_CONFIG

        return cls(build_class_unet(cfg, image_size, num_classes), num_classes, "flow", SCHEDULER_CONFIG)


def scheduler_config_for(cfg: UNetConfig) -> dict:
    """The diffusers scheduler config a base model was trained with (stored with its weights)."""
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_schedule": cfg.beta_schedule,
        "prediction_type": cfg.prediction_type,
        "clip_sample": True,
        "clip_sample_range": 1.0,
    }
