"""Rollout: M trajectories per condition, batched across conditions; keeps x_{N_I} and x_0.

The batch is cut into chunks of ``batch_size`` trajectories; chunk c draws x_T and then one noise
tensor per step from its own generator, seeded by (seed parts..., c). A chunk's samples therefore
depend only on the seed and the chunk, not on which rank runs it: with ``shard=True`` each rank runs
a contiguous range of chunks (:func:`~pgraft.engine.distributed.shard_range`) and the ranks together
produce exactly what one process would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..kernels import denoise_step
from ..models.schedule import Schedule
from ..seeding import generator
from .compose import Policy
from .distributed import all_gather_rows, shard_range
from .phases import phase


@dataclass
class Rollout:
    x0: torch.Tensor  # [N, ...] final samples (model space)
    x_ni: torch.Tensor  # [N, ...] the states x_{N_I} (x0 itself when n_i == 0)
    cond: torch.Tensor  # [N] condition of each row
    n_i: int
    start: int = 0  # global index of the first row (a rank's shard starts there)
    # with record=True (the policy-gradient baselines): the whole chain and its log-probabilities
    states: torch.Tensor | None = None  # [N, S + 1, ...]: states[:, i] is the input of sampler step i
    log_prob: torch.Tensor | None = None  # [N, S] float32: log p(states[:, i+1] | states[:, i])

    def gathered(self) -> "Rollout":
        """Every rank's rows, in global order (identity in a single process)."""
        return Rollout(all_gather_rows(self.x0), all_gather_rows(self.x_ni), all_gather_rows(self.cond), self.n_i)


def network_outputs(model, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance_scale: float, null_label):
    """The network's output for (x, t, cond) and, under classifier-free guidance, the
    unconditional one (``null_label``) from the same batched forward; None without guidance."""
    if guidance_scale == 1.0:
        return model(x, t, cond), None
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, torch.full_like(cond, null_label)]))
    return both.chunk(2)


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
    log_probs: list[torch.Tensor] | None = None,
    chain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Denoise ``x`` (state x_{start_state}, default x_S) down to x_0.

    Returns x_0 and the states x_n for n in ``keep`` (n = start_state keeps the input). A list
    passed as ``log_probs`` receives each step's log p(x_prev | x_t) [B] (of the guided output
    under CFG), from the fused step; a tensor ``chain`` [B, S + 1, ...] receives every state of
    a whole chain (``chain[:, i]`` the input of step i, ``chain[:, S]`` x_0).
    """
    steps = schedule.steps
    start_state = steps if start_state is None else start_state
    kept = {n: x.clone() for n in keep if n == start_state}
    if guidance_scale != 1.0 and null_label is None:
        raise ValueError("guidance_scale != 1 needs the model's null label")
    if chain is not None and start_state != steps:
        raise ValueError("chain records whole chains: start_state must be the sampler's first state")
    if generator.device.type != x.device.type:
        raise ValueError(f"the noise generator is on {generator.device} and the chain on {x.device}: "
                         "draw the noise where the chain runs (pgraft.seeding.generator(..., device=))")  # fmt: skip
    # Everything a step reads lives on the chain's device: no host-to-device copy inside the loop
    # (each would block the CPU until the GPU caught up, and break CUDA graph capture).
    timesteps, step_ids = schedule.timesteps_on(x.device), schedule.step_ids(x.device)
    for step in range(steps - start_state, steps):
        model = policy.model_for_step(step, steps)
        t = timesteps[step].expand(x.shape[0])
        if chain is not None:
            chain[:, step].copy_(x)
        with phase("sample.forward"):
            out, uncond = network_outputs(model, x, t, cond, guidance_scale, null_label)
        with phase("sample.step"):
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device).to(x.dtype)
            stepped = denoise_step(
                x,
                out,
                step_ids[step],
                schedule,
                noise,
                uncond_output=uncond,
                guidance_scale=guidance_scale,
                return_x0=False,
                return_log_prob=log_probs is not None,
                inplace=step > steps - start_state,  # never overwrite the caller's starting tensor
            )
        x = stepped.prev_sample
        if log_probs is not None:
            log_probs.append(stepped.log_prob)
        n = steps - step - 1
        if n in keep:
            kept[n] = x.clone()
    if chain is not None:
        chain[:, steps].copy_(x)
    return x, kept


@torch.no_grad()
def rollout(
    policy: Policy,
    schedule: Schedule,
    cond: torch.Tensor,
    sample_shape: tuple[int, ...],
    seed: tuple,
    *,
    n_i: int = 0,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
    batch_size: int = 512,
    shard: bool = False,
    device: torch.device | str | None = None,
    on_chunk: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    progress: bool = False,
    desc: str = "rollout",
    record: bool = False,
) -> Rollout:
    """Sample one trajectory per entry of ``cond`` (repeat a condition M times for a group).

    ``seed`` is a tuple of seed parts (:func:`pgraft.seeding.derive_seed`); with ``shard`` this
    rank samples only its share of the chunks, and the result's ``start`` says where it begins.
    Sampling runs on ``device`` (default: the CPU) and draws its noise there, from a generator per
    chunk on that device: a CPU run is reproducible on any CPU, a CUDA run on any GPU (CUDA's
    stream is not the CPU's). x_0 and x_{N_I} come back on that device. ``on_chunk(x0, cond)`` is called as each
    chunk finishes (the reward pipeline scores it while the next chunk samples). ``record`` keeps
    every state of the chain and every step's log-probability (policy-gradient training).
    """
    start, stop = shard_range(cond.shape[0], batch_size) if shard else (0, cond.shape[0])
    x0s, xnis = [], []
    steps = schedule.steps
    states = torch.empty((stop - start, steps + 1, *sample_shape), device=device) if record else None
    log_prob = torch.empty((stop - start, steps), device=device) if record else None
    chunks = range(start, stop, batch_size)
    for lo in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        gen = generator(*seed, "chunk", lo // batch_size, device=device)
        c = cond[lo : min(lo + batch_size, stop)]
        x = torch.randn((c.shape[0], *sample_shape), generator=gen, device=device)
        log_probs = [] if record else None
        rows = slice(lo - start, lo - start + c.shape[0])
        x0, kept = run_chain(
            policy,
            schedule,
            x,
            c.to(x.device),
            gen,
            keep=(n_i,) if n_i > 0 else (),
            guidance_scale=guidance_scale,
            null_label=null_label,
            log_probs=log_probs,
            chain=states[rows] if record else None,  # written in place: one copy of each state
        )
        x0s.append(x0)
        xnis.append(kept[n_i] if n_i > 0 else x0)
        if record:
            log_prob[rows] = torch.stack(log_probs, 1)
        if on_chunk is not None:
            on_chunk(x0, c)
    empty = torch.empty((0, *sample_shape), device=device)
    x0 = torch.cat(x0s) if x0s else empty
    x_ni = torch.cat(xnis) if xnis else empty
    return Rollout(x0, x_ni, cond[start:stop].clone(), n_i, start, states, log_prob)
