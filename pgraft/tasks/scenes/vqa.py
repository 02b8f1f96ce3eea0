"""VQAScore in miniature: a small image–text model that answers "does this image show '{prompt}'?"
with P(yes), trained on real renders. It is the scenes task's reward (the paper optimises VQAScore);
the rule-based evaluator (geneval.py) is never used as a reward.

The model reads the image as 4×4 patch tokens (a small CNN) and the prompt as its frozen MiniLM
token embeddings, and lets a small transformer attend across both (a fusion encoder, as VQA models
do), so it can bind a colour to the right object and compare positions. Training pairs every scene
with one true prompt and one false one; half the false ones are *hard*: one shape, colour, count or
relation of a true prompt changed, or the colours swapped (hard_negatives).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from ...config.schema import _Strict
from .lr_schedule import warmup_cosine
from .prompts import CATEGORIES, ScenePrompt, draw_scene, hard_negatives, holds
from .scene import render


class VQAConfig(_Strict):
    """The reward model, ``task.scenes.vqa`` (ours)."""

    width: int = Field(64, ge=8)
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    scenes: int = Field(40_000, ge=100)  # distinct training renders
    steps: int = Field(12_000, ge=1)  # 4,000 left every category below 0.95 (docs/scenes.md)
    batch: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    hard_fraction: float = Field(0.5, ge=0, le=1)  # of the false prompts, the hard ones
    # the pixel's coordinates as two more input channels (CoordConv, Liu et al. 2018), so a patch
    # token knows where inside its 8×8 patch an object lies (ours; measured at 12,000 steps it left
    # position at 0.917 against 0.915 without: sub-patch location is not what limits relations)
    coords: bool = True
    seed: int = 0


class MiniVQA(nn.Module):
    """P(yes | image, prompt id) over a fixed prompt table (frozen text-encoder token embeddings)."""

    def __init__(self, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, cfg: VQAConfig):
        super().__init__()
        d = cfg.width
        # the prompt table is not saved with the weights: a task builds it in its own condition order
        self.register_buffer("prompt_embeds", prompt_embeds.float(), persistent=False)  # [P, L, D_text]
        self.register_buffer("prompt_mask", prompt_mask.bool(), persistent=False)  # [P, L]
        self.coords = cfg.coords
        self.patches = nn.Sequential(
            nn.Conv2d(5 if cfg.coords else 3, d // 2, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(d // 2, d, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(d, d, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(d, d, 3, stride=2, padding=1),
        )
        self.image_pos = nn.Parameter(torch.zeros(16, d))  # 4×4 patches of 8×8 pixels
        self.text = nn.Linear(prompt_embeds.shape[-1], d)
        self.kind = nn.Parameter(torch.zeros(2, d))  # image / text token type
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))
        nn.init.normal_(self.image_pos, std=0.02)
        nn.init.normal_(self.cls, std=0.02)

    def forward(self, images: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """images [B, 3, 32, 32] in [0, 1], prompt ids [B] → the logit of "yes" [B]."""
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="area")
        x = images * 2 - 1
        if self.coords:
            ramp = torch.linspace(-1, 1, 32, device=x.device, dtype=x.dtype)
            grid = torch.stack(torch.meshgrid(ramp, ramp, indexing="ij")).expand(len(x), -1, -1, -1)
            x = torch.cat([x, grid], 1)
        patches = self.patches(x).flatten(2).transpose(1, 2) + self.image_pos + self.kind[0]
        ids = prompt_ids.to(self.prompt_embeds.device).long()
        words = self.text(self.prompt_embeds[ids]) + self.kind[1]
        tokens = torch.cat([self.cls.expand(len(ids), -1, -1), patches, words], dim=1)
        keep = torch.cat(
            [torch.ones(len(ids), 1 + patches.shape[1], dtype=torch.bool, device=ids.device), self.prompt_mask[ids]], 1
        )
        out = self.fusion(tokens, src_key_padding_mask=~keep)
        return self.head(out[:, 0]).squeeze(-1)


@dataclass(frozen=True)
class Pairs:
    """Renders with one true and one false prompt id each (ids index the task's prompt list)."""

    images: torch.Tensor  # [N, 3, 32, 32] in [0, 1]
    true_ids: torch.Tensor  # [N]
    false_ids: torch.Tensor  # [N]
    drawn_ids: torch.Tensor  # [N] the prompt each scene was drawn for
    hard: torch.Tensor  # [N] bool: the false prompt is a one-edit variant of the drawn one


def make_pairs(
    prompts: list[ScenePrompt], n: int, seed: int, hard_fraction: float = 0.5, progress: bool = False
) -> Pairs:
    """``n`` scenes, each drawn for a prompt of a category chosen uniformly (among those ``prompts``
    has); its true prompt is the
    drawn one or (half the time) any other prompt that holds of it, its false prompt a hard negative
    (``hard_fraction`` of the time) or any prompt that does not hold."""
    rng = np.random.default_rng(seed)
    index = {p: i for i, p in enumerate(prompts)}
    by_category = [[i for i, p in enumerate(prompts) if p.category == c] for c in CATEGORIES]
    by_category = [ids for ids in by_category if ids]
    images, true_ids, false_ids, drawn_ids, hard = [], [], [], [], []
    for _ in tqdm(range(n), desc="render scenes", disable=not progress, leave=False):
        cat = by_category[rng.integers(len(by_category))]
        drawn = cat[rng.integers(len(cat))]
        objects = draw_scene(prompts[drawn], rng)
        images.append(render(objects, rng))
        shown = {o.shape for o in objects}
        true_id = drawn
        if rng.random() < 0.5:
            candidates = [i for i, p in enumerate(prompts) if set(p.shapes) <= shown and holds(p, objects)]
            true_id = candidates[rng.integers(len(candidates))]
        negatives = [index[p] for p in hard_negatives(prompts[drawn], objects) if p in index]
        is_hard = bool(negatives) and rng.random() < hard_fraction
        if is_hard:
            false_id = negatives[rng.integers(len(negatives))]
        else:
            while holds(prompts[false_id := int(rng.integers(len(prompts)))], objects):
                pass
        true_ids.append(true_id)
        false_ids.append(false_id)
        drawn_ids.append(drawn)
        hard.append(is_hard)
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return Pairs(
        torch.from_numpy(np.stack(images)),
        as_long(true_ids),
        as_long(false_ids),
        as_long(drawn_ids),
        torch.tensor(hard),
    )


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What generated images differ by: a little pixel noise and a slight blur, at random."""
    blur = torch.rand(len(x), 1, 1, 1, generator=g) * 0.5
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = x * (1 - blur) + soft * blur
    return (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def train_vqa(net: MiniVQA, pairs: Pairs, cfg: VQAConfig, progress: bool = True) -> MiniVQA:
    """Binary cross-entropy on (image, true prompt) → yes and (image, false prompt) → no; seeded."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, cfg.steps)
    half = cfg.batch // 2
    bar = tqdm(range(cfg.steps), desc="train reward (mini VQAScore)", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, len(pairs.images), (half,), generator=g)
        images = _augment(pairs.images[idx], g).repeat(2, 1, 1, 1)
        ids = torch.cat([pairs.true_ids[idx], pairs.false_ids[idx]])
        target = torch.cat([torch.ones(half), torch.zeros(half)])
        loss = F.binary_cross_entropy_with_logits(net(images, ids), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy_by_category(net: MiniVQA, prompts: list[ScenePrompt], pairs: Pairs, batch: int = 512) -> dict:
    """Held-out accuracy on real renders, per category of the prompt each scene was drawn for:
    the mean of "yes" on its true prompt and "no" on its false one; also on hard false prompts alone."""

    def yes(ids):
        return torch.cat([net(pairs.images[s : s + batch], ids[s : s + batch]) for s in range(0, len(ids), batch)]) > 0

    right_true, right_false = yes(pairs.true_ids), ~yes(pairs.false_ids)
    cats = np.array([prompts[i].category for i in pairs.drawn_ids.tolist()])
    out = {}
    for c in CATEGORIES:
        m = torch.from_numpy(cats == c)
        if not m.any():
            continue
        hard = m & pairs.hard
        out[c] = {
            "accuracy": float((right_true[m].float().mean() + right_false[m].float().mean()) / 2),
            "hard_negative_accuracy": float(right_false[hard].float().mean()) if hard.any() else float("nan"),
            "n": int(m.sum()),
        }
    return {"overall": float(np.mean([v["accuracy"] for v in out.values()])), "categories": out}
