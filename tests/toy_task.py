"""A whole task in one module, as docs/custom_task.md writes one: `points`.

Points in the plane, one Gaussian cluster per condition; the base is a small MLP denoiser
pretrained on them (through pgraft's own trainer and cache); the reward is closeness to a corner
of each cluster, which the base reaches only in its tail. Importing the module registers it, after
which every config, experiment and CLI parser accepts ``task.name: points``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pgraft.config import TaskConfig
from pgraft.config.registry import TaskDefinition, register_task
from pgraft.report import save_figure
from pgraft.tasks import Task
from pgraft.tasks.pretraining import pretrained_base


class PointsModel(BaseModel):
    """The base MLP and its pretraining budget (the fields pgraft's pretrain() reads)."""

    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(64, ge=8)
    pretrain_steps: int = Field(300, ge=1)
    pretrain_batch: int = Field(256, ge=1)
    pretrain_lr: float = Field(3e-3, gt=0)
    pretrain_lr_schedule: Literal["constant", "linear_decay"] = "linear_decay"
    cond_dropout: float = 0.1
    seed: int = 0


class PointsConfig(BaseModel):
    """The task's section, ``task.points``."""

    model_config = ConfigDict(extra="forbid")
    clusters: int = Field(3, ge=1, le=16)
    points: int = Field(3000, ge=100)  # per cluster, before the train / held-out split
    spread: float = Field(0.3, gt=0)  # the clusters' standard deviation
    model: PointsModel = Field(default_factory=PointsModel)


@dataclass(frozen=True)
class PointsData:
    train_x: torch.Tensor  # [N, 2]
    train_y: torch.Tensor  # [N] cluster ids
    test_x: torch.Tensor
    test_y: torch.Tensor


def centres(k: int) -> torch.Tensor:
    angle = torch.arange(k) * (2 * math.pi / k)
    return 2 * torch.stack([angle.cos(), angle.sin()], dim=1)


def targets(k: int, spread: float) -> torch.Tensor:
    """The rewarded point of each cluster: two standard deviations off its centre, diagonally."""
    return centres(k) + 2 * spread / math.sqrt(2)


def load(cfg: TaskConfig) -> PointsData:
    p = cfg.points
    g = torch.Generator().manual_seed(cfg.split_seed)
    y = torch.arange(p.clusters).repeat_interleave(p.points)
    x = centres(p.clusters)[y] + p.spread * torch.randn(y.numel(), 2, generator=g)
    order = torch.randperm(y.numel(), generator=g)
    n_test = round(cfg.test_fraction * y.numel())
    test, train = order[:n_test], order[n_test:]
    return PointsData(x[train], y[train], x[test], y[test])


class PointsDenoiser(nn.Module):
    """Predicts the noise of (x_t, t, cluster id); id ``clusters`` is the null condition."""

    prediction_type = "epsilon"
    # a diffusers scheduler config; clip_sample off: the points lie outside the images' [-1, 1]
    scheduler_config = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "clip_sample": False}

    def __init__(self, clusters: int, hidden: int):
        super().__init__()
        self.null_label = clusters
        self.embed = nn.Embedding(clusters + 1, hidden)
        self.net = nn.Sequential(nn.Linear(2 + hidden + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))  # fmt: skip

    def forward(self, x, t, cond):
        phase = t.float()[:, None] / 1000 * math.pi
        return self.net(torch.cat([x, self.embed(cond), phase.sin(), phase.cos()], dim=1))


class CornerReward:
    """−distance to the cluster's target point."""

    def __init__(self, target: torch.Tensor):
        self.target = target

    def __call__(self, points: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return -(points - self.target[conditions.cpu()]).norm(dim=1)


class PointsMetrics:
    """A SampleMetrics: how far samples sit from their cluster's centre, and their diversity."""

    COLUMNS = ("spread", "diversity")

    def __init__(self, data: PointsData, clusters: int):
        self.data, self.centres = data, centres(clusters)

    def __call__(self, points: torch.Tensor, labels: torch.Tensor) -> dict:
        spread = (points - self.centres[labels]).norm(dim=1).mean()
        diversity = torch.stack([torch.pdist(points[labels == c]).mean() for c in labels.unique()]).mean()
        return {"spread": float(spread), "diversity": float(diversity)}

    def real_samples(self, n: int):
        return self.data.test_x[:n], self.data.test_y[:n]


def render(points: torch.Tensor, labels: torch.Tensor, path, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(points[:, 0], points[:, 1], c=labels, s=4, cmap="tab10")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def payloads(cfg: TaskConfig) -> dict[str, dict]:
    """What keys the cached base: the data and the model config."""
    return {"base": {"task": "points", "split_seed": cfg.split_seed, "test_fraction": cfg.test_fraction,
                     **cfg.points.model_dump(mode="json")}}  # fmt: skip


def prepare(cfg: TaskConfig, *, force: bool = False, progress: bool = True) -> Task:
    t0 = time.time()
    p = cfg.points
    data = load(cfg)
    build = lambda: PointsDenoiser(p.clusters, p.model.hidden)  # noqa: E731
    base, path = pretrained_base(cfg, build, data, p.model, "task.points.model", force, progress)
    reward = CornerReward(targets(p.clusters, p.spread))
    return Task(
        name="points",
        data=data,
        base=base,
        reward=reward,
        decode=lambda x: x.float(),
        num_conditions=p.clusters,
        sample_shape=(2,),
        class_names=[f"cluster {c}" for c in range(p.clusters)],
        metrics=PointsMetrics(data, p.clusters),
        render=render,
        real_reward_mean=float(reward(data.test_x, data.test_y).mean()),
        paths={"base": str(path)},
        pretrain_s=time.time() - t0,
    )


DEFINITION = register_task(
    TaskDefinition(
        "points",
        prepare,
        payloads,
        label="points (toy)",
        diversity_label="diversity (mean pairwise distance)",
        section=PointsConfig,
        defaults={
            "method": {
                "samples_per_condition": 16,
                "rounds": 2,
                "select": {"k": 4},
                "sampler": {"steps": 8},
                "train": {"lr": 1e-3, "batch_size": 32, "steps_per_round": 60},
                "speed": {"sample_precision": "fp32"},
            },
            "eval": {"samples_per_class": 128},
        },  # fmt: skip
        demo_runs=(
            {"name": "graft", "kind": "graft"},
            {"name": "pgraft", "kind": "pgraft"},
            {"name": "ddpo", "kind": "ddpo"},
        ),
        demo_n_i=2,
        tuned_baselines={"ddpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}}},
    )
)
