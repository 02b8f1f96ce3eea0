"""The layouts corpus: auto-labelled layouts of TeX Live manuals (tools/build_layout_corpus.py).

The corpus ships inside the package as ``pgraft/tasks/data/layouts_texdocs.npz`` (float16 boxes
[P, 25, 5]: type, cx, cy, w, h per element in reading order, zero-padded; int16 element counts
[P]; the type names) beside a manifest of its source documents and their Debian package versions.
:func:`load_layouts` validates it and returns the layouts in the decoded form the layout rewards
take (present, cx, cy, w, h) with the element types.

The codec for the diffusion model (the model, demo and metrics are not built yet, issue 15): a
layout is generated *given its element types* (LayoutDM's type → position and size task), so the
condition is the multiset of types. :func:`type_multisets` numbers the distinct multisets;
:func:`encode` orders each layout's elements canonically (by type, then reading order) and maps
(present, cx, cy, w, h) to {−1, +1} × [−1, 1]⁴ per slot: a flat vector of 125 numbers.
:func:`decode` inverts it: present where the first number is positive, boxes clamped to the page.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, ShapeError

CORPUS = Path(__file__).with_name("data") / "layouts_texdocs.npz"
TYPES = ("text", "title", "list", "table", "figure")
MAX_ELEMENTS = 25


@dataclass(frozen=True)
class Layouts:
    boxes: torch.Tensor  # [P, MAX_ELEMENTS, 5] float32: present, cx, cy, w, h (page-normalised)
    types: torch.Tensor  # [P, MAX_ELEMENTS] int64: index into TYPES, -1 where absent
    counts: torch.Tensor  # [P] int64: elements per page

    def __len__(self) -> int:
        return int(self.counts.numel())


def load_layouts(path: str | Path = CORPUS) -> Layouts:
    """Load and validate the corpus; a missing, truncated or inconsistent file raises
    CheckpointError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"layouts corpus {path} does not exist (rebuild: tools/build_layout_corpus.py)")
    try:
        with np.load(path, allow_pickle=False) as f:
            boxes, counts, names = f["boxes"], f["counts"], tuple(str(t) for t in f["types"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"layouts corpus {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    problem = None
    if names != TYPES:
        problem = f"its element types are {names}, expected {TYPES}"
    elif boxes.ndim != 3 or boxes.shape[1:] != (MAX_ELEMENTS, 5) or counts.shape != boxes.shape[:1]:
        problem = f"boxes {boxes.shape} and counts {counts.shape} do not describe [P, {MAX_ELEMENTS}, 5] layouts"
    elif counts.size and (counts.min() < 2 or counts.max() > MAX_ELEMENTS):
        problem = f"element counts lie in [{counts.min()}, {counts.max()}], outside [2, {MAX_ELEMENTS}]"
    else:
        b = boxes.astype(np.float32)
        present = np.arange(MAX_ELEMENTS)[None] < counts[:, None]
        geometry = b[..., 1:][present]
        if not np.isfinite(b).all() or (geometry < -1e-3).any() or (geometry > 1 + 1e-3).any():
            problem = "a box lies outside the page [0, 1] or is not finite"
        elif (b[..., 0][present] < 0).any() or (b[..., 0][present] >= len(TYPES)).any():
            problem = "an element type is out of range"
        elif np.abs(b[~present]).max(initial=0) > 0:
            problem = "padding rows are not zero"
    if problem:
        raise CheckpointError(f"layouts corpus {path} is inconsistent: {problem}")
    b = torch.from_numpy(boxes.astype(np.float32))
    n = torch.from_numpy(counts.astype(np.int64))
    present = torch.arange(MAX_ELEMENTS)[None] < n[:, None]
    types = torch.where(present, b[..., 0].round().long(), torch.full_like(n[:, None].expand_as(present), -1))
    decoded = torch.cat([present.float()[..., None], b[..., 1:]], dim=-1)
    return Layouts(decoded, types, n)


SAMPLE_DIM = MAX_ELEMENTS * 5


def canonical_order(types: torch.Tensor) -> torch.Tensor:
    """Per layout, the slot permutation that sorts elements by type, then reading order, absent last."""
    key = torch.where(types >= 0, types, torch.full_like(types, len(TYPES))) * MAX_ELEMENTS
    key = key + torch.arange(MAX_ELEMENTS)
    return key.argsort(dim=-1)


def type_multisets(types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(table [C, MAX_ELEMENTS] of the distinct sorted type multisets, −1 padded; the id of each
    layout's multiset [P]): the layouts task's conditions."""
    order = canonical_order(types)
    table, ids = torch.unique(types.gather(1, order), dim=0, return_inverse=True)
    return table, ids


def encode(boxes: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """Decoded layouts [P, MAX_ELEMENTS, 5] and their types → model space [P, SAMPLE_DIM], elements
    in canonical order."""
    order = canonical_order(types)
    ordered = boxes.gather(1, order[..., None].expand(-1, -1, 5))
    return (ordered * 2 - 1).flatten(1)


def decode(x: torch.Tensor) -> torch.Tensor:
    """Model space [B, SAMPLE_DIM] → decoded layouts [B, MAX_ELEMENTS, 5] (the rewards' input)."""
    if x.ndim != 2 or x.shape[1] != SAMPLE_DIM:
        raise ShapeError(f"layout samples must be [B, {SAMPLE_DIM}], got {tuple(x.shape)}")
    v = x.float().view(-1, MAX_ELEMENTS, 5)
    present = (v[..., :1] > 0).float()
    return torch.cat([present, ((v[..., 1:] + 1) / 2).clamp(0, 1) * present], dim=-1)


def corpus_stats(corpus: Layouts) -> dict:
    """The corpus's statistics (docs/layouts.md quotes them; a test recomputes them from the file)."""
    counts = corpus.counts.double()
    present = corpus.types >= 0
    types = corpus.types[present]
    area = (corpus.boxes[..., 3] * corpus.boxes[..., 4])[present].double()
    return {
        "pages": len(corpus),
        "elements": int(present.sum()),
        "elements_per_page": {
            "mean": round(float(counts.mean()), 2),
            "median": float(counts.median()),
            "p10": float(counts.quantile(0.1)),
            "p90": float(counts.quantile(0.9)),
        },
        "type_frequency": {name: round(float((types == i).double().mean()), 4) for i, name in enumerate(TYPES)},
        "pages_with_type": {name: int(((corpus.types == i).any(-1)).sum()) for i, name in enumerate(TYPES)},
        "mean_box_area": round(float(area.mean()), 4),
    }
