"""Inverse noise correction for flow models (docs/method.md §3): learn the law of the base sampler's
inverse noises and sample ε → corrector → base, without touching the base model.

Φ is the base model's K-step Euler sampler (the fused step kernel's flow mode). Real data are
inverted through the same discrete map: each Euler step x_{i+1} = x_i + h_i·v(x_i, t_i) is undone
by the fixed-point iteration y ← x_{i+1} − h_i·v(y, t_i), with v queried at the same t_i as the
forward step (it converges when |h_i|·Lip(v) < 1). A smaller flow model, the corrector, is trained
from N(0, I) to the bank of inverse noises; one corrector per K.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..kernels import denoise_step
from ..models.flow import NUM_TRAIN_TIMESTEPS
from ..models.schedule import COEFFICIENTS, Schedule
from ..stats import frechet_distance  # noqa: F401  (part of this module's API)

log = logging.getLogger("pgraft")


def flow_schedule(steps: int) -> Schedule:
    """K Euler steps on the uniform grid σ = 1, 1 − 1/K, ..., 0 (noise → data)."""
    return Schedule.flow_uniform(steps, NUM_TRAIN_TIMESTEPS)


def _step_sizes(schedule: Schedule) -> torch.Tensor:
    return schedule.coefficients[:, COEFFICIENTS.index("co")].float()  # h_i = σ_{i+1} − σ_i (< 0)


@torch.no_grad()
def euler(model: nn.Module, schedule: Schedule, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Φ(z): the K-step Euler sampler, batched."""
    outs = []
    for x in z.split(batch_size):
        x = x.clone()
        for i in range(schedule.steps):
            t = schedule.timesteps[i].float().expand(x.shape[0])
            x = denoise_step(x, model(x, t), i, schedule, return_x0=False, inplace=True).prev_sample
        outs.append(x)
    return torch.cat(outs) if outs else z.clone()


@dataclass
class InversionReport:
    recon_err_max: float  # max |Φ(Φ⁻¹(x)) − x| over every pixel of every sample
    recon_err_mean: float  # mean |Φ(Φ⁻¹(x)) − x|
    iterations_mean: float  # fixed-point iterations per step, averaged over steps and batches
    iterations_max: int
    unconverged_steps: int  # (batch, step) pairs whose update still exceeded tol at max_iters
    total_steps: int

    @property
    def converged(self) -> bool:
        return self.unconverged_steps == 0

    def summary(self) -> dict:
        return {**asdict(self), "converged": self.converged}


@torch.no_grad()
def invert(
    model: nn.Module,
    schedule: Schedule,
    x: torch.Tensor,
    *,
    max_iters: int = 50,
    tol: float = 1e-4,
    batch_size: int = 1000,
    progress: bool = False,
) -> tuple[torch.Tensor, InversionReport]:
    """Φ⁻¹(x) by backward Euler through the same steps; reports (never hides) non-convergence."""
    h = _step_sizes(schedule)
    zs, iters, unconverged, total = [], [], 0, 0
    for xb in tqdm(x.split(batch_size), desc="invert", disable=not progress, leave=False):
        y = xb.clone()
        for i in reversed(range(schedule.steps)):
            target, t = y, schedule.timesteps[i].float().expand(y.shape[0])
            guess = target.clone()
            for n in range(1, max_iters + 1):
                new = target - h[i] * model(guess, t)
                delta = float((new - guess).abs().max())
                guess = new
                if delta < tol:
                    break
            else:
                unconverged += 1
            iters.append(n)
            total += 1
            y = guess
        zs.append(y)
    z = torch.cat(zs)
    err = (euler(model, schedule, z, batch_size) - x).abs()
    report = InversionReport(
        float(err.max()), float(err.mean()), sum(iters) / len(iters), max(iters), unconverged, total
    )
    if not report.converged:
        log.warning(
            "inversion did not converge in %d of %d steps (max_iters=%d, tol=%g); reconstruction error max %.3g",
            unconverged, total, max_iters, tol, report.recon_err_max,
        )  # fmt: skip
    return z, report


def flow_matching_loss(
    model: nn.Module, x0: torch.Tensor, generator: torch.Generator, cond: torch.Tensor | None = None
) -> torch.Tensor:
    """Rectified-flow regression: x_σ = (1 − σ)·x_0 + σ·ε, target v = ε − x_0, σ ~ U(0, 1)."""
    sigma = torch.rand(x0.shape[0], generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    x_t = (1 - s) * x0 + s * eps
    t = sigma * NUM_TRAIN_TIMESTEPS
    out = model(x_t, t) if cond is None else model(x_t, t, cond)
    return ((out - (eps - x0)) ** 2).mean()


def train_flow(
    model: nn.Module,
    data: torch.Tensor,
    steps: int,
    *,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = True,
    desc: str = "train flow",
    labels: torch.Tensor | None = None,
    null_label: int | None = None,
    cond_dropout: float = 0.1,
) -> list[float]:
    """AdamW on the flow-matching loss, minibatches drawn with replacement; seeded.

    With ``labels`` the model is class-conditional (``model(x, t, cond)``); a ``cond_dropout``
    share of each batch sees ``null_label`` instead, so the model can sample with CFG.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=g)
        cond = None
        if labels is not None:
            drop = torch.rand(batch_size, generator=g) < cond_dropout
            cond = torch.where(drop, torch.full_like(labels[idx], null_label), labels[idx])
        loss = flow_matching_loss(model, data[idx], g, cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def corrected_sample(
    corrector: nn.Module,
    corrector_schedule: Schedule,
    base: nn.Module,
    base_schedule: Schedule,
    n: int,
    sample_shape: tuple[int, ...],
    generator: torch.Generator,
    batch_size: int = 1000,
) -> torch.Tensor:
    """ε ~ N(0, I) → corrector's Euler sampler → ẑ → the base's Euler sampler Φ."""
    eps = torch.randn((n, *sample_shape), generator=generator)
    return euler(base, base_schedule, euler(corrector, corrector_schedule, eps, batch_size), batch_size)


def flops_per_forward(model: nn.Module, sample_shape: tuple[int, ...]) -> float:
    """FLOPs of one forward at batch 1, counted by torch's FlopCounterMode on the real network
    (matmuls and convolutions; elementwise ops are not counted)."""
    x = torch.zeros((1, *sample_shape))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([NUM_TRAIN_TIMESTEPS / 2]))
    return float(counter.get_total_flops())
