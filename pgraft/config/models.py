"""The networks' configs: the image tasks' UNet and judge, the graph and layout transformers,
the layout FID's feature network, the flow models of inverse noise correction."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .schema import _Strict


class UNetConfig(_Strict):
    """The base denoiser of an embedded task and its DDPM pretraining budget."""

    block_out_channels: tuple[int, ...] = (24, 48, 48)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = True
    num_train_timesteps: int = Field(1000, ge=10, le=10000)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # The pretraining budget and the caption noise come from the task's base variant
    # (TaskConfig.base, config/tasks.py's BASE_VARIANTS) unless set here.
    pretrain_steps: int = Field(150, ge=1)
    pretrain_batch: int = Field(128, ge=1)
    pretrain_lr: float = Field(2e-3, gt=0)
    # constant, or linear decay to 0 over pretrain_steps (converged bases, ours)
    pretrain_lr_schedule: Literal["constant", "linear_decay"] = "constant"
    # The fraction rho of training conditions replaced by another class's (uniformly among the
    # others): web-caption-like noise that makes a base draw well but follow its prompt poorly.
    caption_noise: float = Field(0.0, ge=0, lt=1)
    cond_dropout: float = Field(0.1, ge=0, lt=1)  # label dropout, so the model can do CFG
    seed: int = 0


class JudgeConfig(_Strict):
    """The classifier whose probability of the prompted class is the reward."""

    steps: int = Field(800, ge=1)
    batch: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0


class GraphModelConfig(_Strict):
    """The molecules task's base: a graph transformer (pgraft/models/graph_transformer.py) and its
    DDPM pretraining budget on QM9 (docs/molecules.md)."""

    dim: int = Field(128, ge=8, le=1024)  # atom features
    edge_dim: int = Field(32, ge=4, le=512)  # bond features
    heads: int = Field(4, ge=1, le=32)
    layers: int = Field(4, ge=1, le=16)
    num_train_timesteps: int = Field(1000, ge=10, le=10000)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    pretrain_steps: int = Field(24000, ge=1)  # ~60 epochs of QM9, ~50 min on 2 cores (docs/molecules.md: the curve)
    pretrain_batch: int = Field(256, ge=1)
    pretrain_lr: float = Field(1e-3, gt=0)
    pretrain_lr_schedule: Literal["constant", "linear_decay"] = "linear_decay"
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        return self


class LayoutFidConfig(_Strict):
    """The layout feature network of the FID metric (pgraft/models/layout_fid.py), trained once on
    the training pages to tell real layouts from perturbed ones and to reconstruct them."""

    dim: int = Field(64, ge=8, le=512)
    heads: int = Field(4, ge=1, le=16)
    layers: int = Field(2, ge=1, le=8)
    steps: int = Field(3000, ge=1)
    batch: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


class FlowModelConfig(_Strict):
    """A flow-matching UNet and its training budget (inverse noise correction, docs/method.md §3)."""

    block_out_channels: tuple[int, ...] = (24, 48, 48)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = True
    train_steps: int = Field(300, ge=1)
    batch: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0

    def unet(self) -> UNetConfig:
        return UNetConfig(
            block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block, attention=self.attention
        )
