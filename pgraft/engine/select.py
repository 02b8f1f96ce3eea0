"""Generalized rejection sampling (GRS): the acceptance rules of docs/method.md §1.

Rewards arrive as a [G, M] table (G condition groups of M samples). Every rule sees the whole
group. Non-finite rewards (NaN/Inf) are never accepted and are counted; a group with fewer valid
samples than K keeps the valid ones it has. Ties break toward the lowest index.

Law of an accepted sample, marginalised over the rest of its group (F = CDF of r under the model):
  top_k      P[Binomial(M-1, 1-F(r)) <= K-1]
  best_of_n  F(r)^(M-1)
  threshold  1{r >= tau}
  classic    exp((r - r_max)/alpha)  ∝ exp(r/alpha)
  dedup      top-K after collapsing duplicates: greedy in reward order, a sample is skipped when it
             duplicates one already kept. With a per-sample duplicate key from the task (molecules:
             the canonical SMILES) duplicates are equal keys, so each distinct key keeps its first
             (best) sample; without keys (images, ours) a duplicate is an RMS pixel distance below
             dedup_eps. The accepted law gains a diversity term (tests/test_select.py computes it
             exactly on a discrete toy law).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SelectConfig
from ..errors import RewardError, ShapeError
from ..kernels.select import group_topk, threshold_mask


@dataclass
class Selection:
    indices: torch.Tensor  # [A] flat indices into the G*M samples, grouped by group, best first
    groups: torch.Tensor  # [A] group of each accepted sample
    invalid: int  # non-finite rewards excluded
    accepted_per_group: torch.Tensor  # [G]

    @property
    def count(self) -> int:
        return int(self.indices.numel())


@dataclass
class Acceptance:
    """What a round's learner keeps (engine/rounds.py): flat sample indices into the G·M table,
    ascending, with per-kept-row extra buffer fields (the policy gradient's advantages)."""

    indices: torch.Tensor
    extra: dict[str, torch.Tensor]
    invalid: int  # non-finite rewards excluded


def _classic_mask(rewards, valid, cfg: SelectConfig, generator) -> torch.Tensor:
    if cfg.r_max is None:  # ours: the group's own best reward stands in for the bound
        r_max = torch.where(valid, rewards, torch.full_like(rewards, -torch.inf)).amax(1, keepdim=True)
    else:
        worst = rewards[valid].max() if bool(valid.any()) else None
        if worst is not None and float(worst) > cfg.r_max + 1e-6:
            raise RewardError(
                f"a reward of {float(worst):.4g} exceeds select.r_max={cfg.r_max}; set r_max to a "
                "bound on the reward, or to null to use each group's maximum"
            )
        r_max = torch.tensor(cfg.r_max, dtype=rewards.dtype, device=rewards.device)
    prob = torch.exp((rewards - r_max) / cfg.alpha).clamp(max=1.0)
    u = torch.rand(rewards.shape, generator=generator, dtype=rewards.dtype).to(rewards.device)
    return valid & (u < torch.nan_to_num(prob, nan=0.0))


def _near_duplicates_mask(rewards, valid, k: int, eps: float, samples: torch.Tensor) -> torch.Tensor:
    """Per group, walk the valid samples best first and keep up to k, skipping one within RMS
    distance ``eps`` of a sample already kept (greedy: closeness is not transitive)."""
    g, m = rewards.shape
    flat = samples.reshape(g, m, -1).float()
    dim = flat.shape[-1]
    order = group_topk(rewards, m, valid)[0]
    mask = torch.zeros_like(valid)
    for gi in range(g):
        dist = torch.cdist(flat[gi], flat[gi]) / dim**0.5  # RMS pixel distance
        kept: list[int] = []
        for j in order[gi].tolist():
            if len(kept) == k or j < 0:
                break
            if kept and bool((dist[j, kept] < eps).any()):
                continue
            kept.append(j)
        mask[gi, kept] = True
    return mask


def _first_of_each_key(rewards, valid, keys: torch.Tensor) -> torch.Tensor:
    """Exact duplicates collapsed: per group, the best valid sample of each distinct key."""
    g, m = rewards.shape
    order = group_topk(rewards, m, valid)[0].tolist()
    table = keys.view(g, m).tolist()
    mask = torch.zeros_like(valid)
    for gi in range(g):
        seen: set[int] = set()
        for j in order[gi]:
            if j < 0:
                break
            if table[gi][j] not in seen:
                seen.add(table[gi][j])
                mask[gi, j] = True
    return mask


def select(
    rewards: torch.Tensor,
    cfg: SelectConfig,
    *,
    generator: torch.Generator | None = None,
    samples: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    backend: str = "auto",
) -> Selection:
    """Apply ``cfg.rule`` to each row of ``rewards`` [G, M].

    The dedup rule needs ``keys`` (int64 [G*M], a duplicate key per sample) or, without keys,
    ``samples`` ([G*M, ...], compared by RMS distance); ``generator`` is for the classic rule.
    Ranking runs through pgraft.kernels.select (Triton on CUDA tensors).
    """
    if rewards.ndim != 2:
        raise ShapeError(f"rewards must be [groups, samples_per_group], got shape {tuple(rewards.shape)}")
    rewards = rewards.float()
    g, m = rewards.shape
    valid = torch.isfinite(rewards)
    if cfg.rule in ("top_k", "dedup") and cfg.k > m:
        raise ShapeError(f"select.k={cfg.k} exceeds the group size M={m}")
    if cfg.rule == "top_k":
        order, counts = group_topk(rewards, cfg.k, valid, backend=backend)
    elif cfg.rule == "best_of_n":
        order, counts = group_topk(rewards, 1, valid, backend=backend)
    else:
        if cfg.rule == "threshold":
            mask = threshold_mask(rewards, cfg.threshold, valid)
        elif cfg.rule == "classic":
            if generator is None:
                raise ValueError("the classic rule draws random numbers: pass a generator")
            mask = _classic_mask(rewards, valid, cfg, generator)
        elif cfg.rule == "dedup":
            if keys is not None:
                if keys.shape != (g * m,) or keys.is_floating_point():
                    raise ShapeError(f"dedup keys must be integers of shape ({g * m},), got {tuple(keys.shape)}")
                mask = _first_of_each_key(rewards, valid, keys)  # then the top K of these, below
            elif samples is not None and samples.shape[0] == g * m:
                mask = _near_duplicates_mask(rewards, valid, cfg.k, cfg.dedup_eps, samples)
            else:
                raise ShapeError(f"the dedup rule needs duplicate keys or samples with {g * m} rows")
        else:  # unreachable: the config's Literal type admits only the rules above
            raise ValueError(f"unknown rule {cfg.rule!r}")
        keep = cfg.k if cfg.rule == "dedup" else m
        order, counts = group_topk(rewards, keep, mask, backend=backend)  # accepted, best first
    rows, pos = (order >= 0).nonzero(as_tuple=True)
    return Selection(
        indices=rows * m + order[rows, pos],
        groups=rows,
        invalid=int((~valid).sum()),
        accepted_per_group=counts,
    )
