"""Metrics of generated layouts (docs/layouts.md): FID in a layout network's feature space,
alignment, overlap, maximum IoU against real pages, diversity, and whether the elements asked for
are present.

Every metric reads the element types from the sample's condition (the type multiset), as the
reward does. Within a type a generator's slots are exchangeable: maximum IoU matches them
(Hungarian, as LayoutGAN++), diversity compares them in reading order within each type (by
centre y, then x).
"""

from __future__ import annotations

import itertools
from math import nan

import torch

from ..rewards.layouts import alignment, overlap, with_condition_presence
from ..stats import frechet_distance
from .layouts import TYPES, LayoutData, decode


def reading_order(layouts: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(layouts, types) with each layout's elements sorted by type, then centre y, then centre x."""
    t = torch.where(types >= 0, types, torch.full_like(types, len(TYPES))).double()
    key = t * 4 + layouts[..., 2].double().clamp(0, 1) * 2 + layouts[..., 1].double().clamp(0, 1) * 1e-3
    order = key.argsort(dim=-1, stable=True)
    return layouts.gather(1, order[..., None].expand(-1, -1, layouts.shape[-1])), types.gather(1, order)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes (…, 4) as (cx, cy, w, h), broadcast."""
    a0, a1 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b0, b1 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp_min(0).prod(-1)
    union = a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter
    return inter / union.clamp_min(1e-12)


# Above this many elements of one type, the optimal matching within a pair of layouts is solved
# pair by pair by scipy; up to it, by trying every permutation at once (6! = 720 at most).
_ENUMERATED_MATCHING = 6


def matched_iou_sum(iou: torch.Tensor) -> torch.Tensor:
    """The largest total IoU of a one-to-one matching of two layouts' c elements of one type, for
    every pair of layouts at once: ``iou`` [..., c, c] (row: the first layout's element) → [...]."""
    c = iou.shape[-1]
    if c == 1:
        return iou[..., 0, 0]
    if c <= _ENUMERATED_MATCHING:
        perms = torch.tensor(list(itertools.permutations(range(c))), device=iou.device)  # [c!, c]
        picked = iou[..., torch.arange(c, device=iou.device), perms]  # [..., c!, c]
        return picked.sum(-1).amax(-1)
    from scipy.optimize import linear_sum_assignment

    flat = iou.reshape(-1, c, c).cpu().numpy()
    best = [m[linear_sum_assignment(m, maximize=True)].sum() for m in flat]
    return torch.tensor(best, dtype=iou.dtype).reshape(iou.shape[:-2])


def pair_scores(gen: torch.Tensor, real: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """LayoutGAN++'s score of every (generated, real) pair of layouts of one type multiset: within
    each type, the elements matched one-to-one to maximise their summed IoU (Hungarian); the sum
    over types divided by the element count. ``gen`` [G, n, 4], ``real`` [R, n, 4] boxes
    (cx, cy, w, h); ``types`` [n] their types (the same for every layout) → [G, R]."""
    total = torch.zeros(gen.shape[0], real.shape[0], dtype=torch.float64)
    for t in types.unique().tolist():
        sel = types == t
        iou = box_iou(gen[:, None, sel, None].double(), real[None, :, None, sel].double())  # [G, R, c, c]
        total += matched_iou_sum(iou)
    return total / types.numel()


def maximum_iou(gen: torch.Tensor, gen_cond: torch.Tensor, real: torch.Tensor, real_cond: torch.Tensor,
                type_table: torch.Tensor) -> float:  # fmt: skip
    """LayoutGAN++'s maximum IoU, as its released code computes it (ktrk115/const_layout,
    metric.py ``compute_maximum_iou``): within each type multiset, generated layouts are matched
    one-to-one to real layouts of the same multiset (Hungarian, maximising the summed score),
    where a pair's score is :func:`pair_scores` (elements matched by type, Hungarian again); the
    mean score over all matched pairs. Generated layouts whose multiset has no real layout are
    left out. (A zero-area box's IoU with a zero-area box is 0 here; NaN in the released code.)"""
    from scipy.optimize import linear_sum_assignment

    scores = []
    for c in gen_cond.unique().tolist():
        r = real[real_cond == c]
        if r.shape[0] == 0:
            continue
        slots = type_table[c] >= 0  # the slots the multiset fills
        pair = pair_scores(gen[gen_cond == c][:, slots, 1:], r[:, slots, 1:], type_table[c][slots])
        rows, cols = linear_sum_assignment(pair.numpy(), maximize=True)
        scores.append(pair[rows, cols])
    return float(torch.cat(scores).mean()) if scores else float("nan")


def layout_diversity(layouts: torch.Tensor, conditions: torch.Tensor, type_table: torch.Tensor) -> float:
    """Mean pairwise RMS distance between the boxes (reading order) of layouts that share a
    condition, averaged over the conditions with at least two layouts (ours)."""
    boxes, _ = reading_order(layouts, type_table[conditions])
    per_condition = []
    for c in conditions.unique().tolist():
        sel = conditions == c
        if int(sel.sum()) < 2:
            continue
        n = int((type_table[c] >= 0).sum())
        flat = boxes[sel][:, :n, 1:].flatten(1).double()
        d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
        per_condition.append(float(d.sum() / (flat.shape[0] * (flat.shape[0] - 1))))
    return sum(per_condition) / len(per_condition) if per_condition else float("nan")


class LayoutMetrics:
    """The layouts task's metrics of decoded samples and their conditions: ``fid`` against the
    reference pages in the feature network's space, ``alignment`` and ``overlap`` (LayoutGAN++'s,
    lower is better), ``max_iou`` against the reference pages, ``diversity``, ``area``: the mean
    area of an element (share of the page; shrinking boxes to nothing games overlap and alignment,
    and shows here), and ``presence``: the share of samples whose present flags are the ones the
    condition asks for. :meth:`real_samples`
    are the held-out pages whose multisets are the evaluation's conditions: the real row, at the
    same conditions and sample size."""

    COLUMNS = ("fid", "alignment", "overlap", "max_iou", "diversity", "area", "presence")

    def __init__(self, data: LayoutData, feature_net):
        self.data, self.net = data, feature_net
        self.reference = decode(data.reference_x)
        self.reference_features = self.features(self.reference, data.reference_y)

    @torch.no_grad()
    def features(self, layouts: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        types = self.data.types(conditions)
        return torch.cat([self.net.features(layouts[i : i + 1000], types[i : i + 1000])
                          for i in range(0, layouts.shape[0], 1000)])  # fmt: skip

    def real_samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return decode(self.data.test_x[:n]), self.data.test_y[:n]

    def __call__(self, layouts: torch.Tensor, conditions: torch.Tensor) -> dict:
        types = self.data.types(conditions)
        asked = with_condition_presence(layouts, types)
        table = self.data.type_table
        fid = frechet_distance(self.features(asked, conditions), self.reference_features) if len(asked) > 1 else nan
        return {
            "fid": fid,
            "alignment": float(alignment(asked).mean()),
            "overlap": float(overlap(asked).mean()),
            "max_iou": maximum_iou(asked, conditions.cpu(), self.reference, self.data.reference_y, table),
            "diversity": layout_diversity(asked, conditions.cpu(), table),
            "area": float((asked[..., 3] * asked[..., 4])[types >= 0].mean()),
            "presence": float((layouts[..., 0] == asked[..., 0]).all(-1).float().mean()),
        }
