"""Noise schedules and sampler timetables, taken from diffusers' scheduler configs.

A `Schedule` holds, for each sampler step i (0-based, high noise first), the model timestep t_i and
one row of combined update coefficients, built once from the scheduler config so that a step
needs no per-step host arithmetic. Every supported sampler is affine in (x_t, o, z), with o the
network output (after classifier-free guidance) and z the supplied noise:

    x̂_0  = a0·x_t + b0·o                (clamped to ±clip_sample_range when the config clips)
    x_prev = c0·x̂_0 + cx·x_t + co·o + sigma·z
    log p(x_prev | x_t) = −Σ z²/2 − D·log(sigma) − (D/2)·log(2π)      (sigma > 0)

DDIM (any η) and DDPM follow diffusers' DDIMScheduler/DDPMScheduler.step (docs/method.md §4 writes the
DDIM step); flow-matching Euler follows FlowMatchEulerDiscreteScheduler.step (ODE, or its
``stochastic_sampling`` variant), and ``flow_sde`` is Flow-GRPO's SDE step (arXiv 2505.05470).

State indexing follows docs/method.md: x_S is the initial noise, step i maps x_{S-i} → x_{S-i-1},
and x_n (n ≥ 1) sits at training timestep ``timesteps[S - n]``; x_0 is the clean sample.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from ..errors import ConfigError

SamplerKind = Literal["ddim", "ddpm", "flow", "flow_sde"]
COEFFICIENTS = ("a0", "b0", "c0", "cx", "co", "sigma", "log_sigma")
_SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "flow": FlowMatchEulerDiscreteScheduler}
# Options that change the update in ways the affine table cannot express: refused, never ignored.
_REFUSED = {
    "thresholding": "dynamic thresholding is not supported; use clip_sample",
    "use_dynamic_shifting": "resolution-dependent shifting needs a per-image mu; precompute the shift instead",
    "invert_sigmas": "inverted sigmas are not supported",
}


@dataclass(frozen=True)
class Schedule:
    kind: SamplerKind
    eta: float  # DDIM η, or the noise level a of flow_sde
    prediction_type: str  # "epsilon", "v_prediction" or "flow" (velocity)
    clip_sample_range: float | None  # None: no clipping of x̂_0
    timesteps: torch.Tensor  # [S] model timesteps, descending (int64; float for flow)
    coefficients: torch.Tensor  # [S, len(COEFFICIENTS)] float64
    alphas_cumprod: torch.Tensor | None  # [T] float64 (DDPM family), None for flow
    _tables: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def steps(self) -> int:
        return int(self.timesteps.numel())

    @property
    def stochastic(self) -> bool:
        return bool((self.coefficients[:, COEFFICIENTS.index("sigma")] > 0).any())

    def table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The coefficient table as float32 on ``device`` (built once per device)."""
        key = str(torch.device(device))
        if key not in self._tables:
            self._tables[key] = self.coefficients.to(device=device, dtype=torch.float32).contiguous()
        return self._tables[key]

    def timesteps_on(self, device: torch.device | str) -> torch.Tensor:
        """The model timesteps on ``device`` (copied once per device, not once per step)."""
        key = ("timesteps", str(torch.device(device)))
        if key not in self._tables:
            self._tables[key] = self.timesteps.to(device)
        return self._tables[key]

    def step_ids(self, device: torch.device | str) -> torch.Tensor:
        """0..S-1 as int64 on ``device``: a step's index as a device tensor, for the fused step."""
        key = ("step_ids", str(torch.device(device)))
        if key not in self._tables:
            self._tables[key] = torch.arange(self.steps, device=device)
        return self._tables[key]

    def state_timestep(self, n: int) -> int:
        """Training timestep of state x_n (n in [1, S]); the level s of P-GRAFT for n = N_I."""
        if not 1 <= n <= self.steps:
            raise ValueError(f"state index n={n} outside [1, {self.steps}]")
        return int(self.timesteps[self.steps - n])

    def state_alpha(self, n: int) -> float:
        """ᾱ of state x_n; 1.0 for the clean sample x_0 (DDPM-family schedules)."""
        if self.alphas_cumprod is None:
            raise ConfigError("flow schedules have no ᾱ: P-GRAFT's DSM losses need a DDPM-family schedule")
        return 1.0 if n == 0 else float(self.alphas_cumprod[self.state_timestep(n)])

    @classmethod
    def from_scheduler_config(
        cls, config: dict, steps: int, kind: SamplerKind = "ddim", eta: float = 1.0
    ) -> "Schedule":
        """Build from a diffusers scheduler config (as saved in a pipeline's scheduler folder).

        Timestep spacing, steps_offset, beta schedules, zero-SNR rescaling and sigma shifts are
        honoured by letting diffusers compute the timetable; options the table cannot express
        raise ConfigError.
        """
        config = dict(config)
        for key, why in _REFUSED.items():
            if config.get(key):
                raise ConfigError(f"scheduler option {key}=True: {why}")
        if kind not in ("ddim", "ddpm", "flow", "flow_sde"):
            raise ConfigError(f"unknown sampler kind {kind!r} (allowed: ddim, ddpm, flow, flow_sde)")
        family = "flow" if kind.startswith("flow") else kind
        if family != "flow" and config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"scheduler prediction_type={config['prediction_type']!r} is not supported "
                "(allowed: 'epsilon', 'v_prediction')"
            )
        if kind == "ddpm" and config.get("variance_type", "fixed_small") != "fixed_small":
            raise ConfigError("the ddpm sampler supports variance_type='fixed_small' only")
        if kind == "flow_sde" and config.get("stochastic_sampling"):
            raise ConfigError("flow_sde is its own stochastic sampler: set stochastic_sampling=False")
        scheduler_cls = _SCHEDULERS[family]
        known = set(inspect.signature(scheduler_cls.__init__).parameters)
        sched = scheduler_cls(**{k: v for k, v in config.items() if k in known})
        if not 1 <= steps <= sched.config.num_train_timesteps:
            raise ConfigError(
                f"sampler.steps={steps} must lie in [1, {sched.config.num_train_timesteps}] "
                "(the schedule's training timesteps)"
            )
        sched.set_timesteps(steps)
        if family == "flow":
            return cls._flow(sched, kind, eta)
        return cls._ddpm_family(sched, kind, eta)

    @classmethod
    def flow_uniform(cls, steps: int, num_train_timesteps: int = 1000) -> "Schedule":
        """Euler on the uniform grid σ_i = 1 − i/K (i = 0..K), timestep σ·T: ODE only.

        diffusers' FlowMatchEuler timetable spaces σ from 1 to 1/T and then jumps to 0, which
        wastes a step at K ≤ 4 (its first step goes from σ = 1 to σ ≈ 1/T); few-step samplers such
        as inverse noise correction's corrector need the uniform grid.
        """
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        sig = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        s, dt = sig[:-1], sig[1:] - sig[:-1]
        one, zero = torch.ones_like(s), torch.zeros_like(s)
        coef = _stack(one, -s, zero, one, dt, zero)
        return cls("flow", 0.0, "flow", None, s * num_train_timesteps, coef, None)

    @classmethod
    def _ddpm_family(cls, sched, kind: str, eta: float) -> "Schedule":
        ac = sched.alphas_cumprod.to(torch.float64)
        ts = sched.timesteps.to(torch.int64)
        if kind == "ddim":  # diffusers' DDIM steps back by T // S whatever the spacing
            prev = ts - sched.config.num_train_timesteps // ts.numel()
            final = 1.0 if sched.config.set_alpha_to_one else float(ac[0])
        else:  # diffusers' DDPM steps to the next timestep of its list
            prev = torch.cat([ts[1:], ts.new_tensor([-1])])
            final = 1.0
        a = ac[ts]
        ap = torch.where(prev >= 0, ac[prev.clamp(min=0)], torch.full_like(a, final))
        if sched.config.prediction_type == "epsilon":
            a0, b0 = 1 / a.sqrt(), -(1 - a).sqrt() / a.sqrt()
            a1, b1 = torch.zeros_like(a), torch.ones_like(a)  # ε̂ = o
        else:  # v-prediction: x̂_0 = √ᾱ·x − √(1−ᾱ)·v, ε̂ = √(1−ᾱ)·x + √ᾱ·v
            a0, b0 = a.sqrt(), -(1 - a).sqrt()
            a1, b1 = (1 - a).sqrt(), a.sqrt()
        beta = 1 - a / ap  # β' = 1 − ᾱ_t/ᾱ_prev
        var = (1 - ap) / (1 - a) * beta
        if kind == "ddim":
            sigma = eta * var.clamp(min=0).sqrt()
            c0, c1, c2 = ap.sqrt(), (1 - ap - sigma**2).clamp(min=0).sqrt(), torch.zeros_like(a)
        else:
            sigma = torch.where(ts > 0, var.clamp(min=1e-20).sqrt(), torch.zeros_like(a))
            c0, c1, c2 = ap.sqrt() * beta / (1 - a), torch.zeros_like(a), (1 - beta).sqrt() * (1 - ap) / (1 - a)
        clip = float(sched.config.clip_sample_range) if sched.config.clip_sample else None
        coef = _stack(a0, b0, c0, c2 + c1 * a1, c1 * b1, sigma)
        return cls(kind, float(eta) if kind == "ddim" else 1.0, sched.config.prediction_type, clip, ts, coef, ac)

    @classmethod
    def _flow(cls, sched, kind: str, eta: float) -> "Schedule":
        sig = sched.sigmas.to(torch.float64)
        s, sn = sig[:-1], sig[1:]
        dt = sn - s
        one, zero = torch.ones_like(s), torch.zeros_like(s)
        a0, b0 = one, -s  # x̂_0 = x − σ·v
        if kind == "flow_sde":  # Flow-GRPO: std = a·√(σ/(1−σ)), σ = 1 replaced by sigmas[1]
            s_safe = torch.where(s == 1, sig[1].expand_as(s), s)
            std = eta * (s / (1 - s_safe)).sqrt()
            cx = 1 + std**2 / (2 * s) * dt
            co = (1 + std**2 * (1 - s) / (2 * s)) * dt
            coef = _stack(a0, b0, zero, cx, co, std * (-dt).sqrt())
        elif sched.config.stochastic_sampling:  # diffusers: x_prev = (1 − σ_next)·x̂_0 + σ_next·z
            coef = _stack(a0, b0, 1 - sn, zero, zero, sn)
        else:  # Euler ODE: x_prev = x + (σ_next − σ)·v
            coef = _stack(a0, b0, zero, one, dt, zero)
        return cls(kind, float(eta), "flow", None, sched.timesteps.to(torch.float64), coef, None)


def _stack(a0, b0, c0, cx, co, sigma) -> torch.Tensor:
    log_sigma = torch.where(sigma > 0, sigma.clamp(min=1e-300).log(), torch.zeros_like(sigma))
    return torch.stack([a0, b0, c0, cx, co, sigma, log_sigma], dim=1).to(torch.float64)


HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
