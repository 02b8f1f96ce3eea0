"""What the embedded image tasks share: a labelled image set, a judge classifier whose
probability of the prompted class is the reward, a UNet base pretrained on captions corrupted at
the base variant's rate, and :func:`image_task`, which turns a task's few specifics into its
:class:`~pgraft.config.registry.TaskDefinition`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import TaskConfig
from ..config.registry import TaskDefinition
from ..engine.distributed import rank
from ..models.unet import ClassConditionalUNet
from ..rewards.judge import JudgeReward
from ..seeding import derive_seed
from .judge import JudgeNet, accuracy, train_judge
from .pretraining import corrupt_labels, pretrain, pretrained
from .task import Task


@dataclass(frozen=True)
class ImageData:
    """A labelled image data set split into train and held-out test."""

    train_x: torch.Tensor  # [N, 1, S, S] in [-1, 1]
    train_y: torch.Tensor  # [N] int64
    test_x: torch.Tensor
    test_y: torch.Tensor


def decode(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] → image space [0, 1] (what rewards take)."""
    return ((x.float() + 1) / 2).clamp(0, 1)


@dataclass(frozen=True)
class ImageTask:
    """What differs between the image tasks; :meth:`definition` makes the rest."""

    name: str
    class_names: list[str]
    load: Callable[[TaskConfig], ImageData]
    build_base: Callable[[TaskConfig], nn.Module]  # untrained, the right architecture
    # the conditions the base is pretrained on, given the (possibly corrupted) class labels
    pretraining_conditions: Callable[[TaskConfig, torch.Tensor], torch.Tensor] = lambda cfg, y: y
    base_key: Callable[[TaskConfig], dict] = lambda cfg: {}  # what besides the UNet config defines the base

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def payloads(self, cfg: TaskConfig) -> dict[str, dict]:
        """What keys the cached judge and base: the data split and their configs."""
        key = {"task": cfg.name, "image_size": cfg.image_size, "test_fraction": cfg.test_fraction,
               "split_seed": cfg.split_seed}  # fmt: skip
        return {
            "judge": {**key, **cfg.judge.model_dump()},
            "base": {**key, **cfg.unet.model_dump(mode="json"), **self.base_key(cfg)},
        }

    def pretrain_base(self, cfg: TaskConfig, data: ImageData, progress: bool = True) -> nn.Module:
        """DDPM pretraining on the real training images (captions corrupted at the variant's rate)."""
        u = cfg.unet
        torch.manual_seed(u.seed)
        model = self.build_base(cfg)
        labels = corrupt_labels(data.train_y, self.num_classes, u.caption_noise, derive_seed(u.seed, "caption-noise"))
        return pretrain(model, data.train_x, self.pretraining_conditions(cfg, labels), u, "task.unet", progress)

    def prepare(self, cfg: TaskConfig, *, force: bool = False, progress: bool = True) -> Task:
        t0 = time.time()
        data = self.load(cfg)
        progress = progress and rank() == 0
        judge, judge_path = pretrained(
            cfg, "judge", lambda: train_judge(decode(data.train_x), data.train_y, cfg.judge, progress),
            lambda: JudgeNet(self.num_classes, 1), force=force, collective=False,
        )  # fmt: skip
        judge_acc = accuracy(judge, decode(data.test_x), data.test_y)
        base, base_path = pretrained(
            cfg, "base", lambda: self.pretrain_base(cfg, data, progress), lambda: self.build_base(cfg),
            force=force, collective=True,
        )  # fmt: skip
        reward = JudgeReward(judge)
        return Task(
            name=cfg.name,
            data=data,
            base=base,
            reward=reward,
            classify=reward.classify,
            judge_accuracy=judge_acc,
            real_reward_mean=float(reward(decode(data.test_x), data.test_y).mean()),
            num_conditions=self.num_classes,
            class_names=self.class_names,
            sample_shape=(1, cfg.image_size, cfg.image_size),
            decode=decode,
            paths={"judge": str(judge_path), "base": str(base_path)},
            pretrain_s=time.time() - t0,
        )

    def definition(self, **presets) -> TaskDefinition:
        """The registered form: this task's prepare and payloads, base variants on, ``presets``."""
        return TaskDefinition(self.name, self.prepare, self.payloads, base_variants=True, **presets)


def class_conditional_base(cfg: TaskConfig, num_classes: int) -> ClassConditionalUNet:
    return ClassConditionalUNet.from_config(cfg.unet, cfg.image_size, num_classes)
