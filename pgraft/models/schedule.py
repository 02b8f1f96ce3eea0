"""Noise schedules and sampler timetables, taken from diffusers' scheduler configs.

A `Schedule` holds, for each sampler step i (0-based, high noise first), the model timestep t_i,
the cumulative alphas ᾱ(t_i) and ᾱ(prev), so the update needs no per-step host arithmetic.
State indexing follows METHOD.md: x_S is the initial noise, step i maps x_{S-i} → x_{S-i-1},
and x_n (n ≥ 1) sits at training timestep ``timesteps[S - n]``; x_0 is the clean sample.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ..errors import ConfigError

SamplerKind = Literal["ddim", "ddpm"]


@dataclass(frozen=True)
class Schedule:
    kind: SamplerKind
    eta: float
    prediction_type: str
    clip_sample_range: float | None  # None: no clipping of x̂_0
    alphas_cumprod: torch.Tensor  # [T] float64, training schedule
    timesteps: torch.Tensor  # [S] int64, descending
    alpha_t: torch.Tensor  # [S] float64, ᾱ at the step's timestep
    alpha_prev: torch.Tensor  # [S] float64, ᾱ at the next state (1 for the clean sample)

    @property
    def steps(self) -> int:
        return int(self.timesteps.numel())

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def state_timestep(self, n: int) -> int:
        """Training timestep of state x_n (n in [1, S]); the level s of P-GRAFT for n = N_I."""
        if not 1 <= n <= self.steps:
            raise ValueError(f"state index n={n} outside [1, {self.steps}]")
        return int(self.timesteps[self.steps - n])

    def state_alpha(self, n: int) -> float:
        """ᾱ of state x_n; 1.0 for the clean sample x_0."""
        return 1.0 if n == 0 else float(self.alphas_cumprod[self.state_timestep(n)])

    @classmethod
    def from_scheduler_config(
        cls, config: dict, steps: int, kind: SamplerKind = "ddim", eta: float = 1.0
    ) -> "Schedule":
        """Build from a diffusers scheduler config (as saved in a pipeline's scheduler folder)."""
        config = dict(config)
        if config.get("thresholding"):
            raise ConfigError("scheduler option thresholding=True is not supported by pgraft's sampler")
        if config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"scheduler prediction_type={config['prediction_type']!r} is not supported "
                "(allowed: 'epsilon', 'v_prediction')"
            )
        if kind == "ddpm" and config.get("variance_type", "fixed_small") != "fixed_small":
            raise ConfigError("the ddpm sampler supports variance_type='fixed_small' only")
        scheduler_cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
        known = set(inspect.signature(scheduler_cls.__init__).parameters)
        sched = scheduler_cls(**{k: v for k, v in config.items() if k in known})
        if steps > sched.config.num_train_timesteps:
            raise ConfigError(
                f"sampler.steps={steps} exceeds the schedule's {sched.config.num_train_timesteps} training timesteps"
            )
        sched.set_timesteps(steps)
        ac = sched.alphas_cumprod.to(torch.float64)
        ts = sched.timesteps.to(torch.int64)
        if kind == "ddim":  # diffusers' DDIM steps back by T // S whatever the spacing
            prev = ts - sched.config.num_train_timesteps // steps
        else:  # diffusers' DDPM steps to the next timestep of its list
            prev = torch.cat([ts[1:], ts.new_tensor([-1])])
        if kind == "ddim":
            final = 1.0 if sched.config.set_alpha_to_one else float(ac[0])
        else:
            final = 1.0
        alpha_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], torch.full_like(ac[:1], final))
        clip = float(sched.config.clip_sample_range) if sched.config.clip_sample else None
        return cls(
            kind=kind,
            eta=float(eta) if kind == "ddim" else 1.0,
            prediction_type=sched.config.prediction_type,
            clip_sample_range=clip,
            alphas_cumprod=ac,
            timesteps=ts,
            alpha_t=ac[ts],
            alpha_prev=alpha_prev,
        )
