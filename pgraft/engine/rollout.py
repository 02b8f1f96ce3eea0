"""Rollout: M trajectories per condition, batched across conditions; keeps x_{N_I} and x_0.

Every random draw comes from the caller's generator (x_T first, then one noise tensor per step,
chunk after chunk), so a rollout is reproducible on the CPU for a fixed chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..kernels import denoise_step
from ..models.schedule import Schedule
from .compose import Policy


@dataclass
class Rollout:
    x0: torch.Tensor  # [N, ...] final samples (model space)
    x_ni: torch.Tensor  # [N, ...] the states x_{N_I} (x0 itself when n_i == 0)
    cond: torch.Tensor  # [N] condition of each row
    n_i: int


@torch.no_grad()
def run_chain(
    policy: Policy,
    schedule: Schedule,
    x: torch.Tensor,
    cond: torch.Tensor,
    generator: torch.Generator,
    *,
    start_state: int | None = None,
    keep: tuple[int, ...] = (),
    guidance_scale: float = 1.0,
    null_label: int | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Denoise ``x`` (state x_{start_state}, default x_S) down to x_0.

    Returns x_0 and the states x_n for n in ``keep`` (n = start_state keeps the input).
    """
    steps = schedule.steps
    start_state = steps if start_state is None else start_state
    kept = {n: x.clone() for n in keep if n == start_state}
    cfg = guidance_scale != 1.0
    if cfg and null_label is None:
        raise ValueError("guidance_scale != 1 needs the model's null label")
    for step in range(steps - start_state, steps):
        model = policy.model_for_step(step, steps)
        t = schedule.timesteps[step].expand(x.shape[0]).to(x.device)
        if cfg:
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, torch.full_like(cond, null_label)]))
            out, uncond = both.chunk(2)
        else:
            out, uncond = model(x, t, cond), None
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        x = denoise_step(
            x,
            out,
            step,
            schedule,
            noise,
            uncond_output=uncond,
            guidance_scale=guidance_scale,
            return_x0=False,
            inplace=step > steps - start_state,  # never overwrite the caller's starting tensor
        ).prev_sample
        n = steps - step - 1
        if n in keep:
            kept[n] = x.clone()
    return x, kept


@torch.no_grad()
def rollout(
    policy: Policy,
    schedule: Schedule,
    cond: torch.Tensor,
    sample_shape: tuple[int, ...],
    generator: torch.Generator,
    *,
    n_i: int = 0,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
    batch_size: int = 512,
    progress: bool = False,
    desc: str = "rollout",
) -> Rollout:
    """Sample one trajectory per entry of ``cond`` (repeat a condition M times for a group)."""
    x0s, xnis = [], []
    chunks = range(0, cond.shape[0], batch_size)
    for start in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        c = cond[start : start + batch_size]
        x = torch.randn((c.shape[0], *sample_shape), generator=generator)
        x0, kept = run_chain(
            policy,
            schedule,
            x,
            c,
            generator,
            keep=(n_i,) if n_i > 0 else (),
            guidance_scale=guidance_scale,
            null_label=null_label,
        )
        x0s.append(x0)
        xnis.append(kept[n_i] if n_i > 0 else x0)
    return Rollout(torch.cat(x0s), torch.cat(xnis), cond.clone(), n_i)
