"""Evaluate: reward on held-out seeds, with a 95% CI, per-class means, accuracy and diversity.

Every model is evaluated on the same held-out seeds (common random numbers), disjoint from all
rollout seeds. Under several ranks each samples and scores its share of the chunks and the rewards
and images are gathered, so every rank returns the same evaluation. Diversity (ours): the mean pairwise
RMS pixel distance between samples of the same class, in image space [0, 1], averaged over classes.
A task may bring its own ``metrics`` of the decoded samples (molecules: validity, uniqueness,
novelty, ...); they join the summary, and a "diversity" among them replaces the pixel one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..config import EvalConfig
from ..models.schedule import Schedule
from ..rewards.base import RewardFn, score
from ..stats import Z95, mean_ci95  # noqa: F401  (part of this module's API)
from .compose import Policy
from .distributed import all_gather_rows
from .rollout import rollout


@dataclass
class Evaluation:
    reward_mean: float
    reward_ci95: tuple[float, float]
    per_class: list[float]
    accuracy: float  # NaN without a classifier
    diversity: float
    samples: int
    wall_s: float
    images: torch.Tensor  # [N, C, H, W] in [0, 1], class-major
    labels: torch.Tensor
    rewards: torch.Tensor  # [N], NaN/Inf included
    extra: dict = field(default_factory=dict)  # the task's own metrics

    def summary(self) -> dict:
        return {
            "reward_mean": self.reward_mean,
            "reward_ci95": list(self.reward_ci95),
            "per_class": self.per_class,
            "accuracy": self.accuracy,
            "diversity": self.diversity,
            **self.extra,
            "eval_samples": self.samples,
            "eval_wall_s": self.wall_s,
        }


def diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    per_class = []
    for c in labels.unique():
        flat = images[labels == c].flatten(1).double()
        n = flat.shape[0]
        if n < 2:
            continue
        d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
        per_class.append(float(d.sum() / (n * (n - 1))))
    return sum(per_class) / len(per_class) if per_class else float("nan")


def evaluate(
    policy: Policy,
    schedule: Schedule,
    reward_fn: RewardFn,
    classify: Callable[[torch.Tensor], torch.Tensor] | None,
    num_classes: int,
    sample_shape: tuple[int, ...],
    decode,
    cfg: EvalConfig,
    *,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
    device: torch.device | str | None = None,
    conditions: torch.Tensor | None = None,
    progress: bool = False,
    desc: str = "evaluate",
    metrics: Callable[[torch.Tensor, torch.Tensor], dict] | None = None,
) -> Evaluation:
    """``conditions``: the condition ids to evaluate (held-out prompts; repeats allowed, per_class
    lists each distinct one once, in first-seen order); default 0..num_classes-1.
    ``metrics(decoded, labels) -> dict``: the task's own metrics of the samples."""
    t0 = time.time()
    conditions = torch.arange(num_classes) if conditions is None else conditions
    labels = conditions.repeat_interleave(cfg.samples_per_class)
    out = rollout(
        policy,
        schedule,
        labels,
        sample_shape,
        (cfg.seed, "eval"),
        guidance_scale=guidance_scale,
        null_label=null_label,
        batch_size=cfg.batch_size,
        shard=True,  # each rank samples and scores its share; the results are then gathered
        device=device,
        progress=progress,
        desc=desc,
    )
    mine = decode(out.x0).cpu()
    rewards = all_gather_rows(score(reward_fn, mine, out.cond).cpu())  # each sample scored once
    images = all_gather_rows(mine)
    finite = torch.isfinite(rewards)
    mean, ci = mean_ci95(rewards[finite])
    per_class = [float(rewards[(labels == c) & finite].mean()) for c in dict.fromkeys(conditions.tolist())]
    acc = float((classify(images) == labels).float().mean()) if classify is not None else float("nan")
    extra = metrics(images, labels) if metrics is not None else {}
    div = extra.pop("diversity") if "diversity" in extra else diversity(images, labels)
    return Evaluation(mean, ci, per_class, acc, div, labels.numel(), time.time() - t0, images, labels, rewards, extra)
