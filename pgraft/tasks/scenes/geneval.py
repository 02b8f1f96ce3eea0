"""GenEval in miniature: a rule-based scene parser and GenEval's scoring, never used as a reward.

The parser reads an RGB image the way GenEval's detector + colour classifier read a photograph:
  1. chroma (max − min channel) separates objects from the grey ground; a pixel's hue names its
     palette colour, and chroma over the palette colour's own chroma is its coverage;
  2. each colour's covered pixels (coverage ≥ ½: the true edge of an anti-aliased shape) split into
     8-connected components; components under ``MIN_AREA`` pixels are specks and ignored;
  3. a component's shape comes from how much of its bounding box it fills (square ≈ 1, circle ≈ π/4,
     triangle ≈ ½), its aspect and where its mass sits (a triangle's lies low); a component that fits
     no shape (two objects merged, a smear) is *malformed*.
Detections are ranked by area, largest first (GenEval ranks by detector confidence). Scoring is
GenEval's: an image is correct when :func:`~pgraft.tasks.scenes.prompts.holds` says so, a
category's score is the fraction of its images that are correct, the overall score the mean of
the six category scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .prompts import CATEGORIES, ScenePrompt, holds
from .scene import COLORS, PALETTE

MIN_AREA = 6  # pixels at 32×32 (the smallest object covers about 30)
SOLIDITY = 0.5
MIN_CHROMA = 0.12  # below: ground (its chroma is 0) or an edge pixel too faint to name a colour


@dataclass(frozen=True)
class Detection:
    shape: str  # a shape name, or "malformed"
    color: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (exclusive ends), as the scene's
    area: int


def _hue(image: np.ndarray) -> np.ndarray:
    r, g, b = image
    return np.arctan2(np.sqrt(3) / 2 * (g - b), (2 * r - g - b) / 2)


_RGB = np.array(list(PALETTE.values())).T  # [3, colours]
_HUES = _hue(_RGB)
_CHROMA = _RGB.max(axis=0) - _RGB.min(axis=0)


def _classify(weights: np.ndarray, solidity: float) -> str:
    """A shape from a component's coverage (soft, so a shape's anti-aliased edge counts as the
    fraction it covers): its area over the product of its widest row and tallest column is 1 for a
    square, π/4 for a circle, ½ for a triangle. ``solidity``: the part of the component a 3×3
    opening keeps; a ragged blob's thin parts are lost to it."""
    rows, cols = weights.sum(axis=1), weights.sum(axis=0)
    width, height = rows.max(), cols.max()
    if solidity < SOLIDITY:
        return "malformed"
    fill = weights.sum() / (width * height)
    # vertical skewness of the mass: 0 for a square or a circle, about −0.57 for a triangle whose
    # rows widen downwards (its long tail points up to the apex)
    y = np.arange(len(rows), dtype=np.float64)
    mean = (rows * y).sum() / rows.sum()
    var = (rows * (y - mean) ** 2).sum() / rows.sum()
    skew = (rows * (y - mean) ** 3).sum() / rows.sum() / var**1.5
    if not 0.7 <= width / height <= 1.45:
        return "malformed"
    if fill >= 0.9 and abs(skew) < 0.25:
        return "square"
    if 0.7 <= fill < 0.9 and abs(skew) < 0.25:
        return "circle"
    if 0.4 <= fill < 0.78 and skew < -0.3:
        return "triangle"
    return "malformed"


def parse(image: np.ndarray) -> list[Detection]:
    """The objects in one RGB image [3, H, W] in [0, 1] (any size; areas are judged at 32×32)."""
    image = np.asarray(image, dtype=np.float64)
    size = image.shape[-1]
    chroma = image.max(axis=0) - image.min(axis=0)
    diff = np.angle(np.exp(1j * (_hue(image)[..., None] - _HUES)))  # [H, W, colours], wrapped
    label = np.abs(diff).argmin(axis=-1)
    coverage = np.where(chroma >= MIN_CHROMA, np.clip(chroma / _CHROMA[label], 0, 1), 0.0)
    min_area = MIN_AREA * (size / 32) ** 2
    found = []
    for c, color in enumerate(COLORS):
        ours = np.where(label == c, coverage, 0.0)
        components, _ = ndimage.label(ours >= 0.5, structure=np.ones((3, 3)))
        for k, region in enumerate(ndimage.find_objects(components), 1):
            core = components == k
            area = int(core.sum())
            if area < min_area:
                continue
            # the component's own partial edge: its colour's coverage within one pixel of its core
            weights = np.where(ndimage.binary_dilation(core, np.ones((3, 3))), ours, 0.0)
            ys, xs = region
            box = tuple(v * 32 / size for v in (xs.start, ys.start, xs.stop, ys.stop))
            found.append(
                Detection(
                    _classify(weights[_grow(region, size)], _solidity(core[_grow(region, size)])), color, box, area
                )
            )
    return sorted(found, key=lambda d: -d.area)


def _solidity(core: np.ndarray) -> float:
    return float(ndimage.binary_opening(core, np.ones((3, 3))).sum() / core.sum())


def _grow(region: tuple[slice, slice], size: int) -> tuple[slice, slice]:
    return tuple(slice(max(r.start - 1, 0), min(r.stop + 1, size)) for r in region)


def well_formed(detections: list[Detection]) -> bool:
    """At least one object, and every object a shape (nothing merged or smeared)."""
    return bool(detections) and all(d.shape != "malformed" for d in detections)


def correct(prompt: ScenePrompt, image: np.ndarray) -> bool:
    return holds(prompt, [d for d in parse(image) if d.shape != "malformed"])


def score(prompts: list[ScenePrompt], images: np.ndarray) -> dict:
    """GenEval's report for ``images[i]`` drawn for ``prompts[i]``: each category's fraction correct,
    their mean (``overall``), and the fraction of images that are well formed."""
    parsed = [parse(im) for im in images]
    right = np.array([holds(p, [d for d in ds if d.shape != "malformed"]) for p, ds in zip(prompts, parsed)])
    cats = np.array([p.category for p in prompts])
    per = {c: float(right[cats == c].mean()) for c in CATEGORIES if (cats == c).any()}
    return {
        "overall": float(np.mean(list(per.values()))),
        "categories": per,
        "well_formed": float(np.mean([well_formed(ds) for ds in parsed])),
        "n": len(prompts),
    }
