"""Geometric layout rewards (the layouts task): alignment, overlap, out-of-page, and a weighted sum.

A decoded layout batch is a float tensor [B, N, 5]: per element slot (present, cx, cy, w, h), the
box normalised to the page (centre x, centre y, width, height in [0, 1]) and present ∈ {0, 1}.
Absent slots are ignored. The metrics are written from the formulas of LayoutGAN++ (Kikuchi et
al., "Constrained Graphic Layout Generation via Latent Optimization", ACM MM 2021, §5.1, as in its
released metric code) and LayoutDM (Inoue et al., CVPR 2023), which use the same two:

- alignment: for each element, the smallest distance, over the other elements and the six
  alignment lines (left, centre-x, right, top, centre-y, bottom), between its line and theirs;
  d ↦ −log(1 − d), averaged over the elements (an element alone on its page scores 0);
- overlap: the sum over ordered pairs i ≠ j of area(i ∩ j) / area(i), divided by the number of
  elements (two identical boxes: 1; disjoint boxes: 0).

Lower is better for both, so the rewards are their negatives.
"""

from __future__ import annotations

import torch

from ..errors import ShapeError

FIELDS = 5  # present, cx, cy, w, h


def check_layouts(layouts: torch.Tensor, what: str = "a layout reward") -> None:
    if not isinstance(layouts, torch.Tensor) or layouts.ndim != 3 or layouts.shape[-1] != FIELDS:
        shape = tuple(layouts.shape) if isinstance(layouts, torch.Tensor) else type(layouts).__name__
        raise ShapeError(f"{what} takes decoded layouts [B, N, {FIELDS}] (present, cx, cy, w, h), got {shape}")
    if not layouts.is_floating_point():
        raise ShapeError(f"{what} takes float layouts, got {layouts.dtype}")


def _edges(layouts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    cx, cy, w, h = layouts[..., 1:].double().unbind(-1)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx, cy


def alignment(layouts: torch.Tensor) -> torch.Tensor:
    """LayoutGAN++'s alignment per layout [B] (≥ 0, lower is better)."""
    check_layouts(layouts, "alignment")
    b, n, _ = layouts.shape
    mask = layouts[..., 0] > 0.5
    left, top, right, bottom, cx, cy = _edges(layouts)
    lines = torch.stack([left, cx, right, top, cy, bottom], dim=1)  # [B, 6, N]
    diff = (lines.unsqueeze(-1) - lines.unsqueeze(-2)).abs()  # [B, 6, N, N]
    others = mask[:, None, None, :] & ~torch.eye(n, dtype=torch.bool)[None, None]
    diff = diff.masked_fill(~others, 1.0)
    nearest = diff.amin(dim=(1, 3)).clamp(0, 1)  # [B, N]: over the six lines and the other elements
    nearest = nearest.masked_fill(nearest >= 1.0, 0.0)  # no partner (or ≥ a page away): 0, as LayoutGAN++
    score = -torch.log1p(-nearest.clamp(max=1 - 1e-12))
    score = torch.where(mask, score, torch.zeros_like(score))
    return (score.sum(-1) / mask.sum(-1).clamp_min(1)).float()


def overlap(layouts: torch.Tensor) -> torch.Tensor:
    """LayoutGAN++'s overlap per layout [B] (≥ 0, lower is better)."""
    check_layouts(layouts, "overlap")
    n = layouts.shape[1]
    mask = layouts[..., 0] > 0.5
    left, top, right, bottom, _, _ = _edges(layouts)
    area = ((right - left) * (bottom - top)).clamp_min(0)
    wi = (torch.minimum(right[:, :, None], right[:, None]) - torch.maximum(left[:, :, None], left[:, None])).clamp_min(
        0
    )
    hi = (torch.minimum(bottom[:, :, None], bottom[:, None]) - torch.maximum(top[:, :, None], top[:, None])).clamp_min(
        0
    )
    pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(n, dtype=torch.bool)[None]
    ratio = torch.where(pair & (area[:, :, None] > 0), wi * hi / area[:, :, None].clamp_min(1e-12), 0.0)
    return (ratio.sum(dim=(1, 2)) / mask.sum(-1).clamp_min(1)).float()


def out_of_page(layouts: torch.Tensor) -> torch.Tensor:
    """The mean share of each present box's area that lies outside the page [B] (0: all inside)."""
    check_layouts(layouts, "out_of_page")
    mask = layouts[..., 0] > 0.5
    left, top, right, bottom, _, _ = _edges(layouts)
    area = ((right - left) * (bottom - top)).clamp_min(1e-12)
    inside = (right.clamp(0, 1) - left.clamp(0, 1)).clamp_min(0) * (bottom.clamp(0, 1) - top.clamp(0, 1)).clamp_min(0)
    share = torch.where(mask, 1 - inside / area, torch.zeros_like(area)).clamp(0, 1)
    return (share.sum(-1) / mask.sum(-1).clamp_min(1)).float()


def shrinkage(layouts: torch.Tensor, expected_area: torch.Tensor) -> torch.Tensor:
    """How much less of the page a layout covers than real layouts with its elements would [B]:
    max(0, log(Σ expected area / Σ area)), where ``expected_area`` [B, N] is each requested
    element's mean area in real pages of its type (0 for absent slots). 0 for a layout at least as
    large as expected; log 2 for one at half the expected size (ours: the realism term that stops
    a layout from escaping overlap by shrinking its boxes, docs/layouts.md)."""
    check_layouts(layouts, "shrinkage")
    mask = layouts[..., 0] > 0.5
    area = (layouts[..., 3] * layouts[..., 4]).double() * mask
    expected = (expected_area.double() * mask).sum(-1)
    ratio = expected / area.sum(-1).clamp_min(1e-8)
    return torch.where(expected > 0, ratio.log().clamp_min(0), torch.zeros_like(ratio)).float()


TERMS = {"alignment": alignment, "overlap": overlap, "out_of_page": out_of_page}
NEEDS_TYPES = {"shrinkage"}  # terms that read each element's type from the condition


def with_condition_presence(layouts: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """``layouts`` whose present flags are those the condition asks for (``types`` [B, N], −1:
    absent): every requested element is scored where the model put its box, whatever its own flag
    says, so a layout cannot gain by leaving elements out."""
    check_layouts(layouts)
    if types.shape != layouts.shape[:2]:
        raise ShapeError(f"element types {tuple(types.shape)} do not match layouts {tuple(layouts.shape)}")
    return torch.cat([(types >= 0).to(layouts.dtype)[..., None], layouts[..., 1:]], dim=-1)


class LayoutReward:
    """−Σ weight_i · term_i(layout): every term is a penalty (lower is better).

    ``type_table`` [C, N] (a condition id's element types, −1: absent): when given, the present
    flags come from the condition (:func:`with_condition_presence`), not from the sample.
    ``type_area`` [T]: each type's mean box area in real pages, which ``shrinkage`` needs (with
    the table).
    """

    def __init__(
        self,
        terms: list[tuple[str, float]],
        type_table: torch.Tensor | None = None,
        type_area: torch.Tensor | None = None,
    ):
        names = [n for n, _ in terms]
        if not terms or any(n not in TERMS and n not in NEEDS_TYPES for n in names):
            raise ValueError(f"layout reward terms must be among {sorted([*TERMS, *NEEDS_TYPES])}, got {names}")
        if NEEDS_TYPES & set(names) and (type_table is None or type_area is None):
            raise ValueError(
                f"the layout reward terms {sorted(NEEDS_TYPES & set(names))} need type_table and type_area"
            )
        self.terms = [(name, float(w)) for name, w in terms]
        self.type_table, self.type_area = type_table, type_area
        self.__name__ = "-(" + " + ".join(f"{w:g}·{name}" for name, w in self.terms) + ")"

    def __call__(self, layouts: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return -sum(w * value for (_, w), value in zip(self.terms, self.term_values(layouts, conditions)))

    def term_values(self, layouts: torch.Tensor, conditions: torch.Tensor) -> list[torch.Tensor]:
        """Each term's value per layout [B], in the order of ``terms`` (unweighted penalties)."""
        types = None
        if self.type_table is not None:
            types = self.type_table[conditions.long().cpu()]
            layouts = with_condition_presence(layouts, types)
        values = []
        for name, _ in self.terms:
            if name == "shrinkage":
                values.append(shrinkage(layouts, torch.where(types >= 0, self.type_area[types.clamp_min(0)], 0.0)))
            else:
                values.append(TERMS[name](layouts))
        return values
