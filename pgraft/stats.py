"""The statistics every part of pgraft shares: normal confidence intervals, pooling seeds' summaries,
intervals over seeds, the paired difference of two evaluations on common noise, and the Fréchet
distance of feature sets."""

from __future__ import annotations

import math

import torch

Z95 = 1.959964  # the normal distribution's two-sided 95% quantile


def mean_ci95(values: torch.Tensor) -> tuple[float, tuple[float, float]]:
    """Mean and normal-approximation 95% confidence interval (n ≥ 30 in every use here)."""
    v = values.double()
    mean = float(v.mean())
    half = Z95 * float(v.std(unbiased=True)) / math.sqrt(v.numel()) if v.numel() > 1 else float("nan")
    return mean, (mean - half, mean + half)


def pool(stats: list[tuple[int, float, float]]) -> tuple[float, tuple[float, float]]:
    """Mean and 95% CI of several seeds' held-out rewards pooled, from each seed's (n, mean, std):
    exactly what :func:`mean_ci95` gives on the concatenated rewards."""
    n = sum(k for k, _, _ in stats)
    mean = sum(k * m for k, m, _ in stats) / n
    ss = sum((k - 1) * s**2 + k * (m - mean) ** 2 for k, m, s in stats)
    half = Z95 * math.sqrt(ss / (n - 1) / n)
    return mean, (mean - half, mean + half)


def seed_ci95(values: list[float]) -> tuple[float, list[float] | None]:
    """Mean of per-seed values (final rewards, or two methods' per-seed differences) and the 95%
    Student-t interval over seeds (None with one seed). Seeds, not samples, are the replicates of
    a training run: this is the interval a claim across seeds rests on, wider than the pooled
    sample CI wherever runs differ more than their evaluations' noise."""
    from scipy import stats

    v = torch.tensor(values, dtype=torch.float64)
    mean = float(v.mean())
    if v.numel() < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, v.numel() - 1)) * float(v.std(unbiased=True)) / math.sqrt(v.numel())
    return mean, [mean - half, mean + half]


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, int]:
    """Mean and 95% half-width of the per-sample difference a − b over samples finite in both, and n.

    For two evaluations on the same held-out noise (every model is evaluated on common seeds), this
    is the right interval for "A beats B", and it is narrower than two separate CIs wherever the
    samples are correlated."""
    d = a.double() - b.double()
    d = d[torch.isfinite(d)]
    half = Z95 * float(d.std(unbiased=True)) / math.sqrt(d.numel()) if d.numel() > 1 else float("nan")
    return float(d.mean()), half, d.numel()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID's Fréchet distance between Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = _cov(a), _cov(b)
    root = linalg.sqrtm(cov_a @ cov_b)
    root = (root[0] if isinstance(root, tuple) else root).real
    value = float(((mu_a - mu_b) ** 2).sum() + (cov_a + cov_b - 2 * root).trace())
    return max(value, 0.0) if math.isfinite(value) else float("nan")


def _cov(x):
    import numpy as np

    return np.cov(x, rowvar=False)
