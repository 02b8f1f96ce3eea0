"""The layouts corpus: auto-labelled layouts of TeX Live manuals (tools/build_layout_corpus.py).

The corpus ships inside the package as ``pgraft/tasks/data/layouts_texdocs.npz`` (float16 boxes
[P, 25, 5]: type, cx, cy, w, h per element in reading order, zero-padded; int16 element counts
[P]; the type names) beside a manifest of its source documents and their Debian package versions.
:func:`load_layouts` validates it and returns the layouts in the decoded form the layout rewards
take (present, cx, cy, w, h) with the element types.

The codec for the diffusion model: a layout is generated *given its element types* (LayoutDM's
type → position and size task), so the
condition is the multiset of types. :func:`type_multisets` numbers the distinct multisets;
:func:`encode` orders each layout's elements canonically (by type, then reading order) and maps
(present, cx, cy, w, h) to {−1, +1} × [−1, 1]⁴ per slot: a flat vector of 125 numbers.
:func:`decode` inverts it: present where the first number is positive, boxes clamped to the page
(kept for absent slots too: the task's reward reads presence from the condition).
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field

from ..config import GraphModelConfig, LayoutFidConfig, TaskConfig
from ..config.registry import TaskDefinition, register_task
from ..config.schema import _Strict
from ..engine.distributed import rank
from ..errors import CheckpointError, ConfigError, ShapeError
from .pretraining import pretrained, pretrained_base
from .task import Task

CORPUS = Path(__file__).with_name("data") / "layouts_texdocs.npz"
TYPES = ("text", "title", "list", "table", "figure")
MAX_ELEMENTS = 25


LayoutTerm = Literal["alignment", "overlap", "out_of_page", "shrinkage"]


class LayoutRewardTerm(_Strict):
    name: LayoutTerm
    weight: float = 1.0


def _default_layout_reward() -> list[LayoutRewardTerm]:
    # −(400·alignment + 50·overlap + 25·shrinkage) (ours, docs/layouts.md): alignment and overlap
    # in units of their mean over real pages (0.0024, 0.019). shrinkage is the realism term, added
    # because fine-tuning won overlap by flattening boxes; at 3.5 (its real-page unit) GRAFT still
    # did (area −56%, FID 1.3 → 50), at 25 such layouts score below the base.
    return [
        LayoutRewardTerm(name="alignment", weight=400.0),
        LayoutRewardTerm(name="overlap", weight=50.0),
        LayoutRewardTerm(name="shrinkage", weight=25.0),
    ]


class LayoutsConfig(_Strict):
    """The layouts task's section, ``task.layouts``: auto-labelled layouts of TeX manuals, a
    type-conditioned slot transformer, geometric rewards (docs/layouts.md)."""

    model: GraphModelConfig = Field(default_factory=lambda: GraphModelConfig(dim=96, layers=3, pretrain_steps=6000))
    reward: list[LayoutRewardTerm] = Field(default_factory=_default_layout_reward, min_length=1)
    held_out: int = Field(2000, ge=10)  # held-out pages: the evaluation's conditions and FID reference
    # the rounds' conditions: the n most frequent type multisets of the training pages (ids
    # 0..n-1); None: every multiset the training pages use (883). Fine-tuning on a few frequent
    # ones alone lifted them and degraded the rest of the held-out pages (docs/layouts.md).
    conditions: Optional[int] = Field(None, ge=1)
    fid: LayoutFidConfig = Field(default_factory=LayoutFidConfig)


# Tasks whose base has no variants (the variants are the image tasks' caption noise), and how


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
    return torch.cat([present, ((v[..., 1:] + 1) / 2).clamp(0, 1)], dim=-1)


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


# -- the task: a split of the corpus, its conditions, the base ----------------------------------

COLOURS = {"text": "#4C72B0", "title": "#DD8452", "list": "#55A868", "table": "#C44E52", "figure": "#8172B3"}


@dataclass(frozen=True)
class LayoutData:
    """The corpus split by page (seeded), each distinct layout once (3.7% of the corpus's pages
    repeat another exactly: title pages, slides; a repeat must not sit on both sides): training
    pages, the held-out pages whose type multisets
    are the evaluation's conditions (``test_*``), and other held-out pages (``reference``) that
    FID and maximum IoU compare against. Condition ids index ``type_table``, ordered by how often
    the training pages use each multiset (ties: the multiset's order), so ids 0..k−1 are the k
    most frequent: the rounds' conditions."""

    train_x: torch.Tensor  # [P, SAMPLE_DIM] model space
    train_y: torch.Tensor  # [P] condition ids
    test_x: torch.Tensor
    test_y: torch.Tensor
    reference_x: torch.Tensor
    reference_y: torch.Tensor
    type_table: torch.Tensor  # [C, MAX_ELEMENTS] element types per condition (canonical order), −1 absent

    def types(self, conditions: torch.Tensor) -> torch.Tensor:
        return self.type_table[conditions.long().cpu()]


def first_of_each(x: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of each distinct row of ``x``, ascending."""
    _, inverse = torch.unique(x, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), x.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(x.shape[0]), reduce="amin")
    return first.sort().values


def split_layouts(cfg: TaskConfig, corpus: Layouts | None = None) -> LayoutData:
    corpus = load_layouts() if corpus is None else corpus
    held = cfg.layouts.held_out
    table, ids = type_multisets(corpus.types)
    x = encode(corpus.boxes, corpus.types)
    distinct = first_of_each(x)
    if 2 * held >= distinct.numel():
        raise ValueError(f"task.layouts.held_out={held}: twice it must leave training pages of {distinct.numel()}")
    order = distinct[torch.randperm(distinct.numel(), generator=torch.Generator().manual_seed(cfg.split_seed))]
    test, reference, train = order[:held], order[held : 2 * held], order[2 * held :]
    counts = torch.bincount(ids[train], minlength=table.shape[0])
    rank_of = torch.empty_like(counts)
    by_frequency = torch.sort(-counts, stable=True).indices  # most used first; ties keep unique's order
    rank_of[by_frequency] = torch.arange(table.shape[0])
    y = rank_of[ids]
    return LayoutData(x[train], y[train], x[test], y[test], x[reference], y[reference], table[by_frequency])


def type_areas(data: LayoutData) -> torch.Tensor:
    """Each element type's mean box area over the training pages [len(TYPES)] (the shrinkage term's scale)."""
    boxes, types = decode(data.train_x), data.types(data.train_y)
    area = boxes[..., 3] * boxes[..., 4]
    return torch.stack([area[types == i].mean() for i in range(len(TYPES))])


def condition_names(table: torch.Tensor, count: int) -> list[str]:
    """Readable names of the first ``count`` conditions ("3 text + 1 title")."""
    names = []
    for row in table[:count]:
        parts = [f"{int((row == i).sum())} {t}" for i, t in enumerate(TYPES) if (row == i).any()]
        names.append(" + ".join(parts))
    return names


def build_base(cfg: TaskConfig, type_table: torch.Tensor):
    from ..models.layout_transformer import LayoutDenoiser
    from ..models.unet import scheduler_config_for

    m = cfg.layouts.model
    return LayoutDenoiser(m, type_table, len(TYPES), scheduler_config_for(m))


def payloads(cfg: TaskConfig) -> dict[str, dict]:
    """What keys the task's cached models: the corpus file's checksum, the split, the configs."""
    import hashlib

    data = {
        "task": "layouts",
        "corpus": hashlib.blake2b(CORPUS.read_bytes(), digest_size=8).hexdigest(),
        "held_out": cfg.layouts.held_out,
        "split": "distinct-pages",
        "split_seed": cfg.split_seed,
    }
    return {
        "base": {**data, **cfg.layouts.model.model_dump(mode="json")},
        "fid": {**data, **cfg.layouts.fid.model_dump(mode="json")},
    }


def render(decoded: torch.Tensor, labels: torch.Tensor, path, title: str, *, type_table: torch.Tensor,
           per_row: int = 8, rows: int = 3) -> Path:  # fmt: skip
    """A titled grid of the first samples as pages with coloured boxes, one colour per element type."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from ..report import save_figure

    n = min(decoded.shape[0], per_row * rows)
    rows = max(1, -(-n // per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(1.3 * per_row, 1.75 * rows + 0.6), squeeze=False)
    types = type_table[labels[:n].long().cpu()]
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.set_xlim(0, 1), ax.set_ylim(1, 0)
        for (_, cx, cy, w, h), t in zip(decoded[i].tolist(), types[i].tolist()):
            if t >= 0:
                colour = COLOURS[TYPES[t]]
                ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, facecolor=colour, alpha=0.45, edgecolor=colour))
    handles = [Patch(facecolor=c, alpha=0.6, label=t) for t, c in COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(COLOURS), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, path)


def prepare(cfg: TaskConfig, *, force: bool = False, progress: bool = True) -> Task:
    from ..models.layout_fid import LayoutFeatureNet, train_layout_fid
    from ..rewards.layouts import LayoutReward
    from .layout_metrics import LayoutMetrics

    t0 = time.time()
    lc = cfg.layouts
    data = split_layouts(cfg)
    used = int((torch.bincount(data.train_y, minlength=data.type_table.shape[0]) > 0).sum())  # ids 0..used-1
    conditions = used if lc.conditions is None else lc.conditions
    if conditions > data.type_table.shape[0]:
        raise ConfigError(f"task.layouts.conditions={conditions} exceeds the {data.type_table.shape[0]} type multisets")
    progress = progress and rank() == 0

    def train_fid():
        return train_layout_fid(decode(data.train_x), data.types(data.train_y), len(TYPES), lc.fid, progress)

    build = lambda: build_base(cfg, data.type_table)  # noqa: E731
    base, base_path = pretrained_base(cfg, build, data, lc.model, "task.layouts.model", force, progress)
    if not torch.equal(base.type_table, build().type_table):  # the weights carry the conditions' table
        raise CheckpointError(f"{base_path}: its type-multiset table is not the corpus split's (a stale cache?)")
    fid_net, fid_path = pretrained(cfg, "fid", train_fid, lambda: LayoutFeatureNet(lc.fid, len(TYPES)),
                                   force=force, collective=False)  # fmt: skip
    reward = LayoutReward([(t.name, t.weight) for t in lc.reward], data.type_table, type_areas(data))
    return Task(
        name="layouts",
        data=data,
        base=base,
        reward=reward,
        real_reward_mean=float(reward(decode(data.test_x), data.test_y).mean()),
        num_conditions=conditions,
        class_names=condition_names(data.type_table, conditions),
        sample_shape=(SAMPLE_DIM,),
        decode=decode,
        paths={"base": str(base_path), "fid": str(fid_path)},
        pretrain_s=time.time() - t0,
        eval_conditions=data.test_y,
        metrics=LayoutMetrics(data, fid_net),
        render=partial(render, type_table=data.type_table),
    )


register_task(
    TaskDefinition(
        "layouts",
        prepare,
        payloads,
        label="layouts (TeX manuals)",
        diversity_label="diversity (same-types RMS box dist.)",
        section=LayoutsConfig,
        # every training type multiset (883) × M = 8, K = 1 (12.5%, as 8 of 64) a round; evaluation:
        # one layout per held-out page (task.layouts.held_out = 2,000 conditions), LayoutDM's protocol.
        # lr 3e-4: GRAFT's and P-GRAFT's best of {1e-4, 3e-4} on a search seed, as DDPO's of
        # {1e-4, 3e-4, 1e-3} (docs/results/tune_layouts{,_ours}.json)
        defaults={
            "method": {"samples_per_condition": 8, "rollout_batch": 2048, "select": {"k": 1}, "train": {"lr": 3e-4}},
            "eval": {"samples_per_class": 1, "batch_size": 2000},
        },
        demo_runs=(
            {"name": "graft", "kind": "graft"},
            {"name": "pgraft", "kind": "pgraft"},
            {"name": "ddpo", "kind": "ddpo"},
        ),
        # DDPO only: docs/results/tune_layouts.json (lr 1e-4, 3e-4, 1e-3 at clip 1e-2)
        tuned_baselines={"ddpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}}},
    )
)
