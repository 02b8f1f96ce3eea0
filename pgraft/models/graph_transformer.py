"""A permutation-equivariant graph transformer behind the engine's denoiser signature (the
molecules task).

Input and output are the codec's flat vectors [B, SAMPLE_DIM] (pgraft/chem/codec.py): noisy atom
one-hots per slot and noisy bond one-hots per unordered pair. Inside, the pairs become a symmetric
edge tensor [B, n, n, E]; each layer is attention over atoms whose logits carry a per-head bias
from the edge features (as in graph transformers such as DiGress's), followed by an edge update
from the two end atoms. No positional encoding enters, so permuting the atom slots (and the pairs
with them) permutes the output the same way: a test checks it. The edge output is symmetrised
before the upper triangle is read back.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..chem.codec import ATOM_CLASSES, ATOM_DIM, BOND_CLASSES, MAX_ATOMS, PAIRS_I, PAIRS_J
from ..config import GraphModelConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps [B] → [B, dim], as in DDPM's transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GraphLayer(nn.Module):
    def __init__(self, dim: int, edge_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_h = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.edge_bias = nn.Linear(edge_dim, heads)
        self.out = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm_e = nn.LayerNorm(edge_dim)
        self.ends = nn.Linear(dim, 2 * edge_dim)
        self.edge_ff = nn.Sequential(nn.Linear(edge_dim, 2 * edge_dim), nn.GELU(), nn.Linear(2 * edge_dim, edge_dim))

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm_h(h)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.edge_bias(self.norm_e(e)).permute(0, 3, 1, 2)  # [B, H, n, n]
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        h = h + self.out((att @ v).transpose(1, 2).reshape(b, n, d))
        h = h + self.ff(self.norm_ff(h))
        left, right = self.ends(h).chunk(2, dim=-1)  # the edge (i, j) hears both ends, symmetrically
        e = e + self.edge_ff(
            self.norm_e(e) + left[:, :, None] + right[:, None, :] + left[:, None, :] + right[:, :, None]
        )
        return h, e


class GraphDenoiser(nn.Module):
    """forward(x_t [B, SAMPLE_DIM], t [B], cond [B]) → the network output [B, SAMPLE_DIM].

    ``num_classes`` conditions plus the null label ``num_classes`` (classifier-free guidance);
    the molecules task is unconditional: one condition, 0.
    """

    def __init__(self, cfg: GraphModelConfig, num_classes: int, scheduler_config: dict):
        super().__init__()
        self.num_classes = num_classes
        self.prediction_type = cfg.prediction_type
        self.scheduler_config = dict(scheduler_config)
        d, de = cfg.dim, cfg.edge_dim
        self.atom_in = nn.Linear(ATOM_CLASSES, d)
        self.bond_in = nn.Linear(BOND_CLASSES, de)
        self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.cond = nn.Embedding(num_classes + 1, d)
        self.time_edge = nn.Linear(d, de)
        self.layers = nn.ModuleList(GraphLayer(d, de, cfg.heads) for _ in range(cfg.layers))
        self.atom_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, ATOM_CLASSES))
        self.bond_out = nn.Sequential(nn.LayerNorm(de), nn.Linear(de, BOND_CLASSES))
        self.register_buffer("pairs_i", PAIRS_I.clone(), persistent=False)
        self.register_buffer("pairs_j", PAIRS_J.clone(), persistent=False)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = x.to(self.atom_in.weight.dtype)
        atoms = x[:, :ATOM_DIM].reshape(b, MAX_ATOMS, ATOM_CLASSES)
        pairs = x[:, ATOM_DIM:].reshape(b, -1, BOND_CLASSES)
        bonds = x.new_zeros(b, MAX_ATOMS, MAX_ATOMS, BOND_CLASSES)
        bonds[:, self.pairs_i, self.pairs_j] = pairs
        bonds[:, self.pairs_j, self.pairs_i] = pairs
        c = self.time(timestep_embedding(t.to(x.device), self.atom_in.out_features).to(x.dtype))
        c = c + self.cond(cond.to(x.device))
        h = self.atom_in(atoms) + c[:, None]
        e = self.bond_in(bonds) + self.time_edge(c)[:, None, None]
        for layer in self.layers:
            h, e = layer(h, e)
        edge = self.bond_out(e)
        edge = (edge + edge.transpose(1, 2)) / 2
        out = torch.cat([self.atom_out(h).flatten(1), edge[:, self.pairs_i, self.pairs_j].flatten(1)], dim=1)
        return out.float()
