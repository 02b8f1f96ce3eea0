"""The scenes task's world: flat objects (a shape, a colour, a size, a position) on a lightly
textured grey ground, and a rasteriser that draws them as small RGB images.

Drawing is exact geometry, supersampled and area-averaged, so edges are anti-aliased the way a
photograph's are, and a scene drawn twice with the same seed is the same image to the bit. The
palette's hues are spread around the colour wheel and the ground is grey (no chroma), so colour
alone separates every object from the ground (what the rule-based evaluator relies on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("square", "circle", "triangle")
# RGB in [0, 1]; saturated, hues roughly 0°, 30°, 57°, 130°, 225°, 280° (ours)
PALETTE = {
    "red": (0.86, 0.14, 0.14),
    "orange": (0.96, 0.55, 0.08),
    "yellow": (0.93, 0.88, 0.14),
    "green": (0.14, 0.70, 0.24),
    "blue": (0.14, 0.34, 0.92),
    "purple": (0.62, 0.20, 0.84),
}
COLORS = tuple(PALETTE)
GROUND = 0.5  # the ground's grey level
GROUND_TEXTURE = 0.04  # amplitude of its smooth grey texture
SIZES = {"small": 4.0, "large": 6.0}  # half-extent in pixels at 32×32, scaled with the image
SIZE_JITTER = 0.4  # ± pixels at 32×32
SUPERSAMPLE = 4
GAP = 2.0  # the least empty space between two objects' boxes, in pixels at 32×32


@dataclass(frozen=True)
class SceneObject:
    """``cx, cy, r`` in pixels of a 32×32 image (scaled to the drawn size); ``r`` is the half-extent:
    half the side of a square, the radius of a circle, half the base and height of a triangle
    (pointing up)."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)


def _inside(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    dx, dy = x - obj.cx, y - obj.cy
    if obj.shape == "square":
        return (np.abs(dx) <= obj.r) & (np.abs(dy) <= obj.r)
    if obj.shape == "circle":
        return dx * dx + dy * dy <= obj.r * obj.r
    if obj.shape == "triangle":  # apex at the top centre, base along the bottom of the box
        depth = (dy + obj.r) / (2 * obj.r)  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= obj.r * depth)
    raise ValueError(f"unknown shape {obj.shape!r}; the shapes are {', '.join(SHAPES)}")


def ground(size: int, rng: np.random.Generator) -> np.ndarray:
    """A grey ground with a smooth texture: low-frequency noise, bilinearly upsampled. [H, W]."""
    coarse = rng.uniform(-1, 1, (5, 5))
    t = np.linspace(0, 4, size)
    i = np.minimum(t.astype(int), 3)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    smooth = rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]
    return GROUND + GROUND_TEXTURE * smooth


def render(objects: list[SceneObject], rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """The scene as float32 RGB [3, size, size] in [0, 1]; later objects are drawn over earlier ones."""
    scale = size / 32
    fine = size * SUPERSAMPLE
    coords = (np.arange(fine) + 0.5) / SUPERSAMPLE / scale  # pixel centres in 32×32 units
    x, y = np.meshgrid(coords, coords)
    image = np.repeat(ground(fine, rng)[None], 3, axis=0)
    for obj in objects:
        mask = _inside(obj, x, y)
        for c, value in enumerate(PALETTE[obj.color]):
            image[c][mask] = value
    image = image.reshape(3, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))
    return image.astype(np.float32)


def _separated(a: SceneObject, b: SceneObject) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0


def relation_components(a: tuple, b: tuple, threshold: float = 0.1) -> dict[str, float]:
    """Each direction's component of box ``a``'s place relative to box ``b`` (x0, y0, x1, y1; y
    grows downwards), as GenEval computes it: the centre offset, shrunk on each axis by
    ``threshold`` × the two boxes' summed extents, then normalised. All 0 when the shrunk offset
    vanishes."""
    a, b = np.asarray(a, float).reshape(2, 2), np.asarray(b, float).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    extents = (a[1] - a[0]) + (b[1] - b[0])
    revised = np.maximum(np.abs(offset) - threshold * extents, 0) * np.sign(offset)
    dx, dy = (0.0, 0.0) if np.all(np.abs(revised) < 1e-3) else revised / np.linalg.norm(offset)
    return {"left of": -dx, "right of": dx, "above": -dy, "below": dy}


def relations(a: tuple, b: tuple, threshold: float = 0.1) -> set[str]:
    """Where box ``a`` lies relative to box ``b``, as GenEval decides it: a direction holds when its
    component (relation_components) exceeds 0.5."""
    return {r for r, c in relation_components(a, b, threshold).items() if c > 0.5}


def place(
    specs: list[tuple[str, str]],
    rng: np.random.Generator,
    accept=lambda objects: True,
    tries: int = 500,
) -> list[SceneObject]:
    """Objects for ``specs`` ((shape, colour) pairs) at random sizes and positions, inside the image,
    apart from each other, and such that ``accept(objects)`` holds (a relation a prompt asks for).
    Objects are placed one at a time, each retried where it collides; a crowded draw starts over."""
    for _ in range(tries):
        objects: list[SceneObject] = []
        for shape, color in specs:
            for _ in range(50):
                r = SIZES[rng.choice(list(SIZES))] + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
                lo, hi = r + 1.0, 31.0 - r
                obj = SceneObject(shape, color, rng.uniform(lo, hi), rng.uniform(lo, hi), r)
                if all(_separated(obj, other) for other in objects):
                    objects.append(obj)
                    break
            else:
                break
        if len(objects) == len(specs) and accept(objects):
            return objects
    raise RuntimeError(f"no placement of {specs} found in {tries} tries")
