"""A caption-conditioned diffusers UNet2DConditionModel behind the engine's denoiser signature.

The condition is a prompt id: an index into a table of caption token embeddings held as buffers
(computed once by a frozen text encoder), so the engine, its buffer and its selection groups work
with integer conditions exactly as for class labels. The last row is the empty caption, the null
prompt of classifier-free guidance.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ..config import UNetConfig
from .unet import scheduler_config_for, unet_layout


def build_text_unet(cfg: UNetConfig, image_size: int, cross_attention_dim: int, channels: int = 1):
    levels = len(cfg.block_out_channels)
    # Cross-attention below the top level, where the feature maps are small.
    down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (levels - 1)
    up = ["CrossAttnUpBlock2D"] * (levels - 1) + ["UpBlock2D"]
    return UNet2DConditionModel(
        **unet_layout(cfg, image_size, channels, down, up),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
    )


class TextConditionalUNet(nn.Module):
    """``prompt_mask`` None: the UNet attends to every token (Stable Diffusion's convention)."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor | None,
        prediction_type: str,
        scheduler_config: dict,
    ):
        super().__init__()
        self.unet = unet
        # The prompt table lives where the UNet does, whatever device the embeddings were computed
        # on: a denoiser built around a UNet already on a GPU is whole on that GPU.
        device = next(unet.parameters()).device
        self.register_buffer("prompt_embeds", prompt_embeds.float().to(device))  # [P, L, D]; row P-1: null prompt
        self.prompt_mask: torch.Tensor | None
        mask = None if prompt_mask is None else prompt_mask.bool().to(device)
        self.register_buffer("prompt_mask", mask)  # [P, L]
        self.prediction_type = prediction_type
        self.scheduler_config = dict(scheduler_config)

    @property
    def null_label(self) -> int:
        return self.prompt_embeds.shape[0] - 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = cond.to(self.prompt_embeds.device)
        dtype = self.unet.dtype
        return self.unet(
            x.to(dtype),
            t,
            encoder_hidden_states=self.prompt_embeds[cond].to(dtype),
            encoder_attention_mask=None if self.prompt_mask is None else self.prompt_mask[cond],
        ).sample.float()

    @classmethod
    def from_config(
        cls, cfg: UNetConfig, image_size: int, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor
    ) -> "TextConditionalUNet":
        unet = build_text_unet(cfg, image_size, prompt_embeds.shape[-1])
        return cls(unet, prompt_embeds, prompt_mask, cfg.prediction_type, scheduler_config_for(cfg))
