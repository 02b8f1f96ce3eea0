"""A transformer over element slots behind the engine's denoiser signature (the layouts task).

Input and output are the layout codec's flat vectors [B, 125] (pgraft/tasks/layouts.py): per slot
the noisy (present, cx, cy, w, h). The condition is a type-multiset id; the model holds the
multiset table as a buffer and adds a learned embedding of each slot's type (or "absent") to the
slot's features, with the time embedding. No positional encoding enters, so slots of the same type
are exchangeable: permuting them permutes the output the same way (a test checks it).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import GraphModelConfig
from .graph_transformer import timestep_embedding

SLOT = 5  # present, cx, cy, w, h


class LayoutDenoiser(nn.Module):
    """forward(x_t [B, N·5], t [B], cond [B]) → the network output [B, N·5].

    ``type_table`` [C, N] holds each condition's element types (−1: absent slot); the null label
    ``C`` (classifier-free guidance) sees every slot's type as unknown.
    """

    def __init__(self, cfg: GraphModelConfig, type_table: torch.Tensor, num_types: int, scheduler_config: dict):
        super().__init__()
        self.prediction_type = cfg.prediction_type
        self.scheduler_config = dict(scheduler_config)
        self.num_types = num_types
        null = torch.full((1, type_table.shape[1]), num_types + 1, dtype=torch.int64)
        table = torch.where(type_table >= 0, type_table, torch.full_like(type_table, num_types))
        self.register_buffer("type_table", torch.cat([table, null]))  # absent: num_types; unknown: +1
        d = cfg.dim
        self.slot_in = nn.Linear(SLOT, d)
        self.type_embed = nn.Embedding(num_types + 2, d)
        self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, SLOT))

    @property
    def null_label(self) -> int:
        return self.type_table.shape[0] - 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        slots = x.to(self.slot_in.weight.dtype).view(b, -1, SLOT)
        c = self.time(timestep_embedding(t.to(x.device), self.slot_in.out_features).to(slots.dtype))
        h = self.slot_in(slots) + self.type_embed(self.type_table[cond.to(x.device)]) + c[:, None]
        return self.out(self.encoder(h)).flatten(1).float()
