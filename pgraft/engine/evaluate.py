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

import torch

from ..config import EvalConfig
from ..models.schedule import Schedule
from ..rewards.base import score
from ..stats import Z95, mean_ci95  # noqa: F401  (part of this module's API)
from .compose import Policy
from .distributed import all_gather_rows
from .problem import Problem, problem_from_legacy
from .rollout import rollout

# the positional arguments evaluate took before the Problem (deprecated)
_LEGACY_EVALUATE = ("reward", "classify", "num_conditions", "sample_shape", "decode")


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
    problem: Problem,
    cfg: EvalConfig,
    *legacy,
    guidance_scale: float = 1.0,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "evaluate",
    **legacy_keywords,
) -> Evaluation:
    """``policy`` sampled on ``problem``'s held-out conditions (``eval_conditions``; repeats allowed,
    per_class lists each distinct one once, in first-seen order; default 0..num_conditions-1),
    scored by its reward, its ``classify`` (accuracy) and its ``metrics`` (the task's own).
    The positional form of earlier versions, ``(policy, schedule, reward_fn, classify, num_classes,
    sample_shape, decode, cfg, null_label=..., conditions=..., metrics=...)``, still works with a warning."""
    if not isinstance(problem, Problem):
        legacy_keywords.setdefault("base", None)  # sampling goes through the policy
        problem, (cfg, *legacy) = problem_from_legacy(
            "evaluate", _LEGACY_EVALUATE, (problem, cfg, *legacy), legacy_keywords
        )
    if legacy or legacy_keywords:
        raise TypeError(f"evaluate(policy, schedule, problem, cfg, ...) got unexpected arguments ({len(legacy)} "
                        f"positional, keywords {sorted(legacy_keywords)})")  # fmt: skip
    t0 = time.time()
    p = problem
    conditions = torch.arange(p.num_conditions) if p.eval_conditions is None else p.eval_conditions
    labels = conditions.repeat_interleave(cfg.samples_per_class)
    out = rollout(
        policy,
        schedule,
        labels,
        p.sample_shape,
        (cfg.seed, "eval"),
        guidance_scale=guidance_scale,
        null_label=p.null_label,
        batch_size=cfg.batch_size,
        shard=True,  # each rank samples and scores its share; the results are then gathered
        device=device,
        progress=progress,
        desc=desc,
    )
    mine = p.decode(out.x0).cpu()
    rewards = all_gather_rows(score(p.reward, mine, out.cond).cpu())  # each sample scored once
    images = all_gather_rows(mine)
    finite = torch.isfinite(rewards)
    mean, ci = mean_ci95(rewards[finite])
    per_class = [float(rewards[(labels == c) & finite].mean()) for c in dict.fromkeys(conditions.tolist())]
    acc = float((p.classify(images) == labels).float().mean()) if p.classify is not None else float("nan")
    extra = p.metrics(images, labels) if p.metrics is not None else {}
    div = extra.pop("diversity") if "diversity" in extra else diversity(images, labels)
    return Evaluation(mean, ci, per_class, acc, div, labels.numel(), time.time() - t0, images, labels, rewards, extra)
