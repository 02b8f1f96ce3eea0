"""A prepared task: the :class:`~pgraft.engine.problem.Problem` the engine solves (frozen base,
reward, decoder, conditions, metrics), plus its data and what the experiments report of it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..engine.problem import Problem
from ..models.schedule import Schedule
from ..report import save_grid


@dataclass(kw_only=True)
class Task(Problem):
    name: str
    # the task's data set (tasks.images.ImageData, molecules.MoleculeData, layouts.LayoutData: each
    # has train_x / train_y / test_x / test_y); None for models brought by the user (Stable Diffusion)
    data: Any
    class_names: list[str]
    paths: dict[str, str] = field(default_factory=dict)  # the pretrained models' files, by kind
    pretrain_s: float = 0.0  # time spent preparing (loading, or training what the cache lacked)
    judge_accuracy: float = math.nan  # held-out accuracy of the judge on real test images (judged tasks)
    real_reward_mean: float = math.nan  # mean reward of real held-out data (the ceiling to compare with)
    render: Callable[..., Path] | None = None  # (decoded, labels, path, title): a picture of samples
    info: dict[str, Any] = field(default_factory=dict)  # the task's own facts, which experiments report

    @property
    def num_classes(self) -> int:
        """The number of conditions (the name the experiments' tables use)."""
        return self.num_conditions

    def save_samples(self, decoded: torch.Tensor, labels: torch.Tensor, path: Path, title: str) -> Path:
        """A labelled picture of decoded samples: the task's own renderer, else an image grid."""
        if self.render is not None:
            return self.render(decoded, labels, path, title)
        return save_grid(decoded, labels, path, class_names=self.class_names, title=title)

    def schedule(self, steps: int, kind: str = "ddim", eta: float = 1.0) -> Schedule:
        return Schedule.from_scheduler_config(self.base.scheduler_config, steps, kind, eta)
