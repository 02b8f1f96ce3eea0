"""The P-GRAFT round loop (METHOD.md §1–2): rollout → reward → select → buffer → train.

Round k+1 samples from the composed model of round k (fine-tuned from T to N_I, base below).
N_I = 0 is GRAFT. The fine-tuned network is a full copy of the base or a LoRA adapter over it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..buffer import TrajectoryBuffer
from ..config import PGraftConfig
from ..kernels.select import gather_rows
from ..models.schedule import Schedule
from ..rewards.base import RewardFn, score
from ..seeding import generator
from .compose import AdapterOff, Composed
from .rollout import rollout
from .select import select
from .train import DenoisingTrainer, TrainingData, make_trainable

log = logging.getLogger("pgraft")


@dataclass
class RoundLog:
    round: int
    samples_drawn: int
    rollout_reward_mean: float
    accepted: int
    invalid_rewards: int
    accepted_reward_mean: float
    train_loss: float
    wall_s: float


@dataclass
class PGraftRun:
    policy: Composed
    model: nn.Module  # the fine-tuned network (full copy or PEFT model)
    schedule: Schedule
    n_i: int
    history: list[RoundLog] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def samples_drawn(self) -> int:
        return sum(r.samples_drawn for r in self.history)


def training_data(buffer: TrajectoryBuffer, cfg: PGraftConfig, schedule: Schedule) -> TrainingData:
    """What the accepted rows teach, and at which noise levels (METHOD.md §2)."""
    if cfg.n_i == 0:  # GRAFT: ordinary DSM on accepted x_0 at every timestep
        return TrainingData(buffer=buffer, field="x0")
    s = schedule.state_timestep(cfg.n_i)
    if cfg.train.loss == "dsm_from_xni":
        return TrainingData(buffer=buffer, field="x_ni", level=s, t_min=s + 1)
    return TrainingData(buffer=buffer, field="x0", level=-1, t_min=s + 1)


def run_pgraft(
    base: nn.Module,
    reward_fn: RewardFn,
    decode: Callable[[torch.Tensor], torch.Tensor],
    num_conditions: int,
    sample_shape: tuple[int, ...],
    cfg: PGraftConfig,
    *,
    null_label: int | None = None,
    keep_rounds: int = 1,
    on_round: Callable[[RoundLog], None] | None = None,
    progress: bool = True,
    name: str = "pgraft",
) -> PGraftRun:
    """Run ``cfg.rounds`` rounds of P-GRAFT at ``cfg.n_i`` and return the composed policy."""
    if keep_rounds < 1:
        raise ValueError(f"keep_rounds must be >= 1, got {keep_rounds}")
    t_start = time.time()
    s_cfg = cfg.sampler
    schedule = Schedule.from_scheduler_config(base.scheduler_config, s_cfg.steps, s_cfg.kind, s_cfg.eta)
    model = make_trainable(base, cfg.train)
    base_view = AdapterOff(model, base.prediction_type) if cfg.train.mode == "lora" else base
    policy = Composed(model, base_view, cfg.n_i)
    trainer = DenoisingTrainer(model, schedule.alphas_cumprod, cfg.train, null_label=null_label, seed=cfg.seed)
    # Room for keep_rounds rounds of accepted rows (at most G·M each); older rounds are dropped
    # before each append, so a full buffer would be a bug: refuse rather than evict silently.
    buffer = TrajectoryBuffer(
        {"x_ni": (sample_shape, torch.float32), "x0": (sample_shape, torch.float32), "cond": ((), torch.int64)},
        capacity=keep_rounds * num_conditions * cfg.samples_per_condition,
        full_policy="refuse",
    )
    run = PGraftRun(policy, model, schedule, cfg.n_i)
    conds = torch.arange(num_conditions).repeat_interleave(cfg.samples_per_condition)
    for k in tqdm(range(cfg.rounds), desc=f"{name} rounds", disable=not progress):
        t0 = time.time()
        model.eval()
        # Same rollout seeds whatever N_I: methods compared at one budget see common noise.
        gen = generator(cfg.seed, "rollout", k)
        traj = rollout(
            policy,
            schedule,
            conds,
            sample_shape,
            gen,
            n_i=cfg.n_i,
            guidance_scale=s_cfg.guidance_scale,
            null_label=null_label,
            batch_size=cfg.rollout_batch,
            progress=progress,
            desc=f"{name} r{k} rollout",
        )
        images = decode(traj.x0)
        rewards = score(reward_fn, images, conds)
        sel = select(
            rewards.view(num_conditions, cfg.samples_per_condition),
            cfg.select,
            generator=generator(cfg.seed, "select", k),
            samples=images,
        )
        idx = sel.indices
        if sel.invalid:
            log.warning("%s round %d: %d non-finite rewards excluded", name, k, sel.invalid)
        x_ni, x0 = gather_rows(idx.to(traj.x0.device), traj.x_ni, traj.x0)
        cond, reward = gather_rows(idx, conds, rewards)
        buffer.compact(buffer.meta()["round"] > k - keep_rounds)  # keep the last keep_rounds - 1 rounds
        buffer.append(group=cond, reward=reward, round=k, x_ni=x_ni, x0=x0, cond=cond)
        if len(buffer):
            losses = trainer.train(
                training_data(buffer, cfg, schedule),
                cfg.train.steps_per_round,
                progress=progress,
                desc=f"{name} r{k} train",
            )
        else:
            log.warning("%s round %d: the rule accepted no sample; no training this round", name, k)
            losses = [float("nan")]
        finite = torch.isfinite(rewards)
        entry = RoundLog(
            round=k,
            samples_drawn=conds.numel(),
            rollout_reward_mean=float(rewards[finite].mean()) if bool(finite.any()) else float("nan"),
            accepted=sel.count,
            invalid_rewards=sel.invalid,
            accepted_reward_mean=float(reward.mean()) if sel.count else float("nan"),
            train_loss=sum(losses[-10:]) / len(losses[-10:]),
            wall_s=time.time() - t0,
        )
        run.history.append(entry)
        if on_round is not None:
            on_round(entry)
    model.eval()
    run.wall_s = time.time() - t_start
    return run


def history_dicts(run: PGraftRun) -> list[dict]:
    return [asdict(r) for r in run.history]
