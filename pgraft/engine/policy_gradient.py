"""The policy-gradient baselines, DDPO and GRPO (docs/method.md §4), as a learner of the round loop.

The sampler's chain is an MDP whose every stochastic step is Gaussian,
x_prev ~ N(μ_θ(x_t), σ_t² I), with μ and σ the affine step of pgraft/models/schedule.py (DDIM
η > 0, DDPM, or Flow-GRPO's ``flow_sde``). A round:

- rollout records every state and the fused step's log p(x_prev | x_t) (of the guided output
  under CFG) — :func:`pgraft.engine.rollout.rollout` with ``record=True``;
- reward, then advantages (:mod:`.advantages`: DDPO's per-condition window, GRPO's group
  normalisation); every sample with a finite reward goes to the C++ buffer with its chain,
  log-probabilities and advantage;
- train: for ``pg.inner_epochs`` epochs of minibatches of trajectories, each trajectory trains
  a random ``timestep_fraction`` of its stochastic steps (a fresh permutation per trajectory, as
  ddpo-pytorch draws them), one backward pass per step, one optimizer step per minibatch. The loss
  is PPO's clipped surrogate on ratio = exp(log p_θ − log p_old), plus ``kl_coef`` times the
  closed-form per-step KL to the base model (two Gaussians of one σ: ‖μ_θ − μ_base‖²/(2σ²)).

Steps with σ = 0 (a deterministic last DDIM step) have a log-probability that does not depend on
θ; they are never drawn for training (ours: ddpo-pytorch's SD config has no such step).
Log-probabilities are averaged over the D dimensions (``log_prob_reduction: mean``), as both
reference codes do; ``sum`` gives the exact density.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PGraftConfig
from ..models.schedule import COEFFICIENTS, HALF_LOG_2PI, Schedule
from .advantages import PerConditionStats, group_advantages
from .distributed import comm_device, world_size
from .rollout import Rollout, network_outputs
from .select import Acceptance
from .train import TrainingData

_COEF = {name: i for i, name in enumerate(COEFFICIENTS)}


def guided_output(model: nn.Module, x, t, cond, guidance_scale: float, null_label: int | None):
    """The network output the sampler steps with (after classifier-free guidance, as the fused
    step combines it), from the rollout's own batched forward; differentiable."""
    out, uncond = network_outputs(model, x, t, cond, guidance_scale, null_label)
    return out if uncond is None else uncond + guidance_scale * (out - uncond)


def _coef(table: torch.Tensor, steps: torch.Tensor, name: str, ndim: int) -> torch.Tensor:
    return table[steps, _COEF[name]].view(-1, *([1] * (ndim - 1)))


def transition_mean(
    x: torch.Tensor, out: torch.Tensor, steps: torch.Tensor, table: torch.Tensor, clip: float | None
) -> torch.Tensor:
    """μ(x_t): the step's deterministic part for the (guided) network output ``out``; differentiable."""
    c = {name: _coef(table, steps, name, x.ndim) for name in ("a0", "b0", "c0", "cx", "co")}
    xhat = c["a0"] * x + c["b0"] * out
    if clip is not None:
        xhat = xhat.clamp(-clip, clip)
    return c["c0"] * xhat + c["cx"] * x + c["co"] * out


def transition_log_prob(
    x_prev: torch.Tensor, mean: torch.Tensor, steps: torch.Tensor, table: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """log N(x_prev; mean, σ²I) per row [B] (0 where σ = 0, as the fused step reports it).

    ``reduction="mean"`` divides by the dimension D (the reference codes' convention).
    """
    sigma = _coef(table, steps, "sigma", x_prev.ndim)
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    z = (x_prev.float() - mean) / safe
    d = x_prev[0].numel()
    lp = -0.5 * z.flatten(1).square().sum(1) - d * (table[steps, _COEF["log_sigma"]] + HALF_LOG_2PI)
    lp = torch.where(table[steps, _COEF["sigma"]] > 0, lp, torch.zeros_like(lp))
    return lp / d if reduction == "mean" else lp


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, steps, table, reduction: str = "sum") -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(ref_mean, σ²)) per row [B]: ‖mean − ref‖²/(2σ²) (Flow-GRPO's KL term)."""
    sigma = table[steps, _COEF["sigma"]]
    kl = (mean - ref_mean).flatten(1).square().sum(1) / (2 * sigma.clamp(min=1e-12) ** 2)
    return kl / mean[0].numel() if reduction == "mean" else kl


def ppo_clip_loss(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped surrogate, mean over rows: max(−A·ρ, −A·clip(ρ, 1 ± ε)) (ddpo-pytorch)."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean()


def trainable_steps(schedule: Schedule) -> torch.Tensor:
    """Sampler steps whose transition is stochastic (σ > 0): the ones with a policy gradient."""
    return torch.nonzero(schedule.coefficients[:, _COEF["sigma"]] > 0).flatten()


def ppo_passes(schedule: Schedule, cfg: PGraftConfig) -> int:
    """Trained sampler steps per trajectory: ddpo-pytorch's int(num_steps · timestep_fraction),
    at least one (ours); one backward pass each."""
    candidates = trainable_steps(schedule)
    if candidates.numel() == 0:
        raise ValueError("the sampler has no stochastic step: policy gradients need η > 0")
    return max(1, int(candidates.numel() * cfg.pg.timestep_fraction))


def _global_max(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


class PPOObjective:
    """The PPO loss of a minibatch of stored trajectories: one pass per trained sampler step."""

    def __init__(
        self,
        schedule: Schedule,
        cfg: PGraftConfig,
        null_label: int | None,
        reference: nn.Module | None,
        device: torch.device,
    ):
        self.cfg, self.pg, self.null_label, self.reference = cfg, cfg.pg, null_label, reference
        self.schedule, self.device = schedule, device
        self.passes = ppo_passes(schedule, cfg)
        self.candidates = trainable_steps(schedule)
        self.table = schedule.table(device)
        self.timesteps = schedule.timesteps.to(device)
        # max |ρ − 1| over the global batch in a round's first pass, before any update: the rollout's
        # and the recomputation's log-probabilities agree to rounding, so ρ is 1 up to it (TF32 or
        # bf16 in either makes it drift by about the clip range: the PPO ratio's health check)
        self.first_ratio_dev: float | None = None

    def forward_rows(self, n: int) -> int:
        """Network row-forwards per pass (CFG doubles them; the KL term adds the reference's)."""
        cfg_mult = 1 if self.cfg.sampler.guidance_scale == 1.0 else 2
        return n * cfg_mult * (2 if self.pg.kl_coef > 0 else 1), n * cfg_mult

    def losses(self, engine, batch, n, lo, hi, generator):
        # a permutation of the candidate steps per trajectory of the global batch; keep the first
        order = torch.argsort(torch.rand((n, self.candidates.numel()), generator=generator), dim=1)
        chosen = self.candidates[order[lo:hi, : self.passes]].to(self.device)  # [b, passes]
        states = batch["states"].to(self.device, non_blocking=True)
        old = batch["log_prob"].to(self.device, non_blocking=True)
        adv = batch["advantage"].to(self.device).float().clamp(-self.pg.adv_clip_max, self.pg.adv_clip_max)
        cond = batch["cond"].to(self.device)
        rows = torch.arange(states.shape[0], device=self.device)
        d = states[0, 0].numel()
        fwd, bwd = self.forward_rows(n)
        guidance, clip, reduction = (
            self.cfg.sampler.guidance_scale,
            self.schedule.clip_sample_range,
            self.pg.log_prob_reduction,
        )
        for j in range(self.passes):
            step = chosen[:, j]
            x_t, x_prev = states[rows, step], states[rows, step + 1]
            t = self.timesteps[step]
            mean = transition_mean(
                x_t, guided_output(engine, x_t, t, cond, guidance, self.null_label), step, self.table, clip
            )
            log_prob = transition_log_prob(x_prev, mean, step, self.table, reduction)
            old_lp = old[rows, step] / (d if reduction == "mean" else 1)
            ratio = torch.exp(log_prob - old_lp)
            if self.first_ratio_dev is None:
                self.first_ratio_dev = _global_max(float((ratio.detach() - 1).abs().max()))
            loss = ppo_clip_loss(ratio, adv, self.pg.clip_range)
            if self.pg.kl_coef > 0:
                with torch.no_grad():
                    ref_out = guided_output(self.reference, x_t, t, cond, guidance, self.null_label)
                    ref_mean = transition_mean(x_t, ref_out, step, self.table, clip)
                loss = loss + self.pg.kl_coef * gaussian_kl(mean, ref_mean, step, self.table, reduction).mean()
            yield loss, fwd, bwd


class PolicyGradient:
    """DDPO (``algorithm: ddpo``) or GRPO (``grpo``): a :class:`~.learner.Learner` of :class:`~.rounds.PGraftLoop`."""

    record = True  # the rollout keeps whole chains and their log-probabilities
    needs_samples = False

    @staticmethod
    def passes_for(cfg: PGraftConfig, schedule: Schedule) -> int:
        return ppo_passes(schedule, cfg)

    def __init__(self, cfg: PGraftConfig, schedule: Schedule, null_label: int | None, reference, device):
        self.cfg = cfg
        self.objective = PPOObjective(schedule, cfg, null_label, reference, device)
        self.tracker = PerConditionStats(cfg.pg.stat_window, cfg.pg.stat_min_count) if cfg.algorithm == "ddpo" else None

    def fields(self, sample_shape: tuple[int, ...], steps: int) -> dict:
        return {
            "states": ((steps + 1, *sample_shape), torch.float32),
            "log_prob": ((steps,), torch.float32),
            "advantage": ((), torch.float32),
            "cond": ((), torch.int64),
        }

    def row_fields(self, traj: Rollout) -> dict[str, torch.Tensor]:
        return {"states": traj.states, "log_prob": traj.log_prob}

    def accept(self, rewards: torch.Tensor, groups: int, round_: int, samples=None, keys=None) -> Acceptance:
        """Every sample with a finite reward, with its advantage (``rewards``: the flat [G·M] table)."""
        m = rewards.numel() // groups
        if self.tracker is not None:
            adv = self.tracker.update(torch.arange(groups).repeat_interleave(m), rewards)
        else:
            adv = group_advantages(rewards.view(groups, m), self.cfg.pg.global_std).flatten()
        keep = torch.nonzero(torch.isfinite(adv)).flatten()
        invalid = int((~torch.isfinite(rewards)).sum())
        return Acceptance(keep, {"advantage": adv[keep].float()}, invalid)

    def training_data(self, buffer, schedule: Schedule) -> TrainingData:
        self.objective.first_ratio_dev = None  # a new round's (or a resumed round's) first pass
        return TrainingData(buffer=buffer, field="states", objective=self.objective)

    def diagnostics(self) -> dict:
        """What a round's log records of the learner: the first PPO ratio's deviation from 1."""
        dev = self.objective.first_ratio_dev
        return {} if dev is None else {"first_ratio_dev": dev}

    def steps_per_round(self, rows: int, global_batch: int) -> int:
        """Optimizer steps that make ``inner_epochs`` passes over ``rows`` trajectories."""
        per_epoch = max(1, rows // global_batch)  # the buffer's epochs drop a ragged last batch
        return max(1, self.cfg.pg.inner_epochs * per_epoch // self.cfg.train.grad_accum)

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict()} if self.tracker is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.tracker is not None:
            self.tracker.load_state_dict(state.get("tracker", {}))
