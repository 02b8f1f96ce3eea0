"""The denoiser contract: what the engine calls and reads on every model it samples or trains.

The engine only ever calls ``denoiser(x_t, t, cond) -> network output`` and reads
``denoiser.prediction_type`` ("epsilon", "v_prediction" or "flow") and
``denoiser.scheduler_config`` (a diffusers scheduler config: the noise schedule). A model that
supports classifier-free guidance also has ``null_label``, the condition meaning "none".
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    prediction_type: str
    scheduler_config: dict

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor: ...
