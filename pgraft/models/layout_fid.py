"""The layout feature network of the layouts task's FID (after LayoutGAN++'s LayoutNet).

LayoutGAN++ (Kikuchi et al., ACM MM 2021) and LayoutDM (Inoue et al., CVPR 2023) measure FID in the
feature space of a small transformer trained on the data set: an encoder over the elements (a
type embedding plus a linear map of the box), whose summary token is the feature, with a head
that tells real layouts from fakes and a decoder that rebuilds each element's box from the
feature. We train the same kind of network on the corpus's training pages, with fakes made by
perturbing real pages (jittered boxes, boxes exchanged between elements, boxes redrawn at random:
our choice of perturbations, docs/layouts.md), so its features respond to misplaced, misaligned
and overlapping elements. It is trained once per config and cached (tasks.layouts).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..config import LayoutFidConfig


class LayoutFeatureNet(nn.Module):
    """features(layouts [B, N, 5], types [B, N]) → [B, dim]; ``types`` −1 marks absent slots."""

    def __init__(self, cfg: LayoutFidConfig, num_types: int):
        super().__init__()
        d = cfg.dim
        self.type_embed = nn.Embedding(num_types, d)
        self.box_in = nn.Linear(4, d)
        self.token = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.disc = nn.Linear(d, 1)
        self.rebuild = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, 4))

    def features(self, layouts: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        absent = types < 0
        h = self.box_in(layouts[..., 1:].float()) + self.type_embed(types.clamp_min(0))
        h = torch.cat([self.token.expand(h.shape[0], -1, -1), h], dim=1)
        mask = torch.cat([torch.zeros_like(absent[:, :1]), absent], dim=1)
        return self.norm(self.encoder(h, src_key_padding_mask=mask)[:, 0])

    def forward(self, layouts: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real-vs-fake logit [B], each element's box rebuilt from the feature alone [B, N, 4])."""
        f = self.features(layouts, types)
        per_element = torch.cat([f[:, None].expand(-1, types.shape[1], -1), self.type_embed(types.clamp_min(0))], -1)
        return self.disc(f).squeeze(-1), torch.sigmoid(self.rebuild(per_element))


def perturb(layouts: torch.Tensor, types: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Fake layouts from real ones: per layout one of jitter (σ ∈ [0.01, 0.1]), exchanging the
    boxes of its elements, or redrawing a random half of its boxes uniformly."""
    b, n, _ = layouts.shape
    present = (types >= 0)[..., None].float()
    kind = torch.randint(0, 3, (b,), generator=g)
    sigma = torch.empty(b, 1, 1).uniform_(0.01, 0.1, generator=g)
    jitter = layouts[..., 1:] + sigma * torch.randn(b, n, 4, generator=g)
    keys = torch.rand(b, n, generator=g) + (types < 0).float() * 2  # absent slots stay last
    exchanged = layouts[..., 1:].gather(1, keys.argsort(-1)[..., None].expand(-1, -1, 4))
    redraw = torch.rand(b, n, 1, generator=g) < 0.5
    random_boxes = torch.rand(b, n, 4, generator=g) * torch.tensor([1.0, 1.0, 0.5, 0.3])
    redrawn = torch.where(redraw, random_boxes, layouts[..., 1:])
    boxes = torch.where(kind[:, None, None] == 0, jitter, torch.where(kind[:, None, None] == 1, exchanged, redrawn))
    return torch.cat([layouts[..., :1], boxes.clamp(0, 1) * present], dim=-1)


def train_layout_fid(
    layouts: torch.Tensor, types: torch.Tensor, num_types: int, cfg: LayoutFidConfig, progress: bool = True
) -> LayoutFeatureNet:
    """Train the feature network on real pages: BCE of real against perturbed, plus the L1 error
    of the boxes rebuilt from the feature of each real page."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    net = LayoutFeatureNet(cfg, num_types)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / cfg.steps)
    half = cfg.batch // 2
    for _ in tqdm(range(cfg.steps), desc="train layout FID net", disable=not progress, mininterval=2):
        idx = torch.randint(0, layouts.shape[0], (half,), generator=g)
        real, t = layouts[idx], types[idx]
        fake = perturb(real, t, g)
        logits, rebuilt = net(torch.cat([real, fake]), torch.cat([t, t]))
        target = torch.cat([torch.ones(half), torch.zeros(half)])
        present = t >= 0
        loss = F.binary_cross_entropy_with_logits(logits, target)
        loss = loss + (rebuilt[:half] - real[..., 1:]).abs()[present].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)
