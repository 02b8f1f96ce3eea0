"""The round loop (docs/method.md §1–2, §4): rollout → reward → select → buffer → train.

Round k+1 samples from the composed model of round k (fine-tuned from T to N_I, base below).
N_I = 0 is GRAFT. The fine-tuned network is a full copy of the base or a LoRA adapter over it.
What a round keeps and learns is its *learner*, chosen once by ``method.algorithm``:
:class:`RejectionSampling` (GRS acceptance, denoising loss: GRAFT / P-GRAFT) or
:class:`~.policy_gradient.PolicyGradient` (advantages, PPO loss: DDPO / GRPO). Both share the
rollout, the reward pipeline, the C++ buffer, the DeepSpeed engine and the checkpoints.

Across ranks (docs/distributed.md): each rank samples a contiguous share of the round's rollout
chunks (seeds per chunk, so the samples do not depend on the world size) and scores its own
samples; the rewards are all-gathered so every rank applies the rule to the whole [G, M] table;
the accepted rows are all-gathered into every rank's buffer; the DeepSpeed engine trains data-
parallel, each rank on its slice of every global batch. The loop's whole state is checkpointed at
round boundaries and every ``checkpoint_every`` optimizer steps (:mod:`.checkpoint`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..buffer import TrajectoryBuffer
from ..config import PGraftConfig, to_yaml
from ..errors import ConfigError
from ..kernels.select import gather_rows
from ..models.schedule import Schedule
from ..seeding import generator
from .checkpoint import Checkpointer, checkpoint_name, restore_rng, rng_state
from .compose import AdapterOff, Composed
from .distributed import all_gather_rows, rank, world_size
from .learner import Learner
from .phases import phase
from .policy_gradient import PolicyGradient
from .problem import Problem, problem_from_legacy
from .rollout import Rollout, rollout
from .scoring import OverlappedScorer
from .select import Acceptance, select
from .speed import FastPolicies, apply_float32_math, apply_threads
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
    wall_s: float  # rollout_wall_s + train_wall_s
    # network passes spent, counted in rows (one sample through the network once; CFG counts 2)
    rollout_forward: int = 0
    train_forward: int = 0
    train_backward: int = 0
    # policy-gradient learners: max |ρ − 1| in the round's first PPO pass (rounding-level when healthy)
    first_ratio_dev: float | None = None
    rollout_wall_s: float = 0.0  # rollout → reward → select → buffer
    train_wall_s: float = 0.0


@dataclass
class PGraftRun:
    policy: Composed
    model: nn.Module  # the fine-tuned network (full copy or PEFT model)
    schedule: Schedule
    n_i: int
    history: list[RoundLog] = field(default_factory=list)
    wall_s: float = 0.0
    device: torch.device = torch.device("cpu")  # where the policy samples

    @property
    def samples_drawn(self) -> int:
        return sum(r.samples_drawn for r in self.history)


def training_data(buffer: TrajectoryBuffer, cfg: PGraftConfig, schedule: Schedule) -> TrainingData:
    """What the accepted rows teach, and at which noise levels (docs/method.md §2)."""
    if cfg.n_i == 0:  # GRAFT: ordinary DSM on accepted x_0 at every timestep
        return TrainingData(buffer=buffer, field="x0")
    s = schedule.state_timestep(cfg.n_i)
    if cfg.train.loss == "dsm_from_xni":
        return TrainingData(buffer=buffer, field="x_ni", level=s, t_min=s + 1)
    return TrainingData(buffer=buffer, field="x0", level=-1, t_min=s + 1)


class RejectionSampling:
    """GRAFT / P-GRAFT (``algorithm: pgraft``): accept by a GRS rule, train the denoising loss
    (a :class:`~.learner.Learner`)."""

    record = False

    @staticmethod
    def passes_for(cfg: PGraftConfig, schedule: Schedule) -> int:
        """Backward passes per minibatch (the DeepSpeed engine is built for them before the learner)."""
        return 1

    def __init__(self, cfg: PGraftConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.needs_samples = cfg.select.rule == "dedup"

    def fields(self, sample_shape: tuple[int, ...], steps: int) -> dict:
        return {"x_ni": (sample_shape, torch.float32), "x0": (sample_shape, torch.float32), "cond": ((), torch.int64)}

    def row_fields(self, traj: Rollout) -> dict[str, torch.Tensor]:
        return {"x_ni": traj.x_ni, "x0": traj.x0}

    def accept(self, rewards: torch.Tensor, groups: int, round_: int, samples=None, keys=None) -> Acceptance:
        table = rewards.view(groups, -1)
        gen = generator(self.seed, "select", round_)
        sel = select(table, self.cfg.select, generator=gen, samples=samples, keys=keys)
        return Acceptance(sel.indices.sort().values, {}, sel.invalid)

    def training_data(self, buffer: TrajectoryBuffer, schedule: Schedule) -> TrainingData:
        return training_data(buffer, self.cfg, schedule)

    def steps_per_round(self, rows: int, global_batch: int) -> int:
        return self.cfg.train.steps_per_round

    def diagnostics(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class LoopState:
    """Where a run stands: everything a resumed run needs besides the engine, RNGs and buffer."""

    round: int = 0  # the round in progress, or the next to start
    in_round: bool = False  # this round's rollout is selected and its rows are in the buffer
    step: int = 0  # optimizer steps done in this round
    losses: list[float] = field(default_factory=list)  # this round's losses so far
    partial: dict | None = None  # this round's RoundLog fields known before training
    stream: dict | None = None  # the batch stream's position
    history: list[dict] = field(default_factory=list)  # RoundLogs of finished rounds
    wall_s: float = 0.0  # time spent before the last checkpoint (a resumed run adds to it)
    learner: dict = field(default_factory=dict)  # the learner's state (DDPO's reward windows)
    passes: list[int] = field(default_factory=lambda: [0, 0])  # this round's training rows forward, backward


# the positional arguments PGraftLoop took before the Problem (deprecated)
_LEGACY_LOOP = ("base", "reward", "decode", "num_conditions", "sample_shape")


class PGraftLoop:
    """``cfg.rounds`` rounds of ``cfg.algorithm`` (P-GRAFT at ``cfg.n_i``, DDPO or GRPO); resumable."""

    def __init__(
        self,
        problem: Problem,
        cfg: PGraftConfig,
        *legacy,
        keep_rounds: int = 1,
        on_round: Callable[[RoundLog], None] | None = None,
        progress: bool = True,
        name: str = "pgraft",
        checkpointer: Checkpointer | None = None,
        checkpoint_every: int = 0,
        run_config: str | None = None,
        timeout_s: float | None = None,
        **legacy_keywords,
    ):
        """``problem``: the base, reward, decoder and conditions (a Problem or a prepared Task).
        The positional form of earlier versions, ``(base, reward_fn, decode, num_conditions,
        sample_shape, cfg, null_label=..., duplicate_key=...)``, still works with a warning."""
        if not isinstance(problem, Problem):
            problem, (cfg, *legacy) = problem_from_legacy(
                "PGraftLoop", _LEGACY_LOOP, (problem, cfg, *legacy), legacy_keywords
            )
        if legacy or legacy_keywords:
            raise TypeError(f"PGraftLoop(problem, cfg, ...) got unexpected arguments ({len(legacy)} positional, "
                            f"keywords {sorted(legacy_keywords)})")  # fmt: skip
        if keep_rounds < 1:
            raise ValueError(f"keep_rounds must be >= 1, got {keep_rounds}")
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
        base, null_label = problem.base, problem.null_label
        self.problem = problem
        self.base, self.reward_fn, self.decode = base, problem.reward, problem.decode
        self.num_conditions, self.sample_shape, self.cfg = problem.num_conditions, problem.sample_shape, cfg
        self.null_label, self.keep_rounds, self.on_round, self.name = null_label, keep_rounds, on_round, name
        self.checkpointer, self.checkpoint_every = checkpointer, checkpoint_every
        self.duplicate_key = problem.duplicate_key  # the dedup rule's key per decoded sample (a task's)
        self.run_config = run_config if run_config is not None else to_yaml(cfg)
        s = cfg.sampler
        self.schedule = Schedule.from_scheduler_config(base.scheduler_config, s.steps, s.kind, s.eta)
        if cfg.algorithm == "pgraft" and self.schedule.alphas_cumprod is None:
            raise ConfigError(
                f"algorithm=pgraft trains a denoising loss: the {s.kind} sampler has no ᾱ (use grpo/ddpo)"
            )
        if cfg.algorithm != "pgraft" and cfg.n_i != 0:  # a config copied without validation
            raise ConfigError(f"n_i={cfg.n_i} applies to algorithm=pgraft; {cfg.algorithm} trains the whole chain")
        if cfg.algorithm != "pgraft" and keep_rounds != 1:
            raise ValueError(f"{cfg.algorithm} is on-policy: it trains on its own round only (keep_rounds=1)")
        self._adapter_off: AdapterOff | None = None  # LoRA: the base seen through the trained model
        self.model = make_trainable(base, cfg.train, cfg.seed)
        learner = RejectionSampling if cfg.algorithm == "pgraft" else PolicyGradient
        self.trainer = DenoisingTrainer(
            self.model, self.schedule.alphas_cumprod, cfg.train, null_label=null_label, seed=cfg.seed,
            timeout_s=timeout_s, passes=learner.passes_for(cfg, self.schedule), speed=cfg.speed,
        )  # fmt: skip
        # One device, decided by the engine that trains (DeepSpeed moved the network there): every
        # table, minibatch and frozen network the rounds touch is placed from it, never from where
        # a module happened to be before the engine existed.
        self.device = self.trainer.device
        self.base = base.to(self.device)  # the frozen base samples below N_I beside the trained network
        self.learner: Learner
        if cfg.algorithm == "pgraft":
            self.learner = RejectionSampling(cfg, cfg.seed)
        else:
            reference = self._base_view(self.model) if cfg.pg.kl_coef > 0 else None
            self.learner = PolicyGradient(cfg, self.schedule, null_label, reference, self.device)
        apply_threads(cfg.speed)
        apply_float32_math(cfg.speed)
        # the rollout runs the policy as method.speed asks; evaluation (self.policy()) runs it plain
        self.fast = FastPolicies(cfg.speed, self.device, scores_only=not self.learner.record)
        self.progress = progress and rank() == 0
        # Room for keep_rounds rounds of accepted rows (at most G·M each); older rounds are dropped
        # before each append, so a full buffer would be a bug: refuse rather than evict silently.
        self.buffer = TrajectoryBuffer(
            self.learner.fields(self.sample_shape, self.schedule.steps),
            capacity=keep_rounds * self.num_conditions * cfg.samples_per_condition,
            full_policy="refuse",
        )
        self.state = LoopState()

    # -- resume ------------------------------------------------------------------------------
    def resume(self, root: Path) -> Path | None:
        """Restore the newest complete checkpoint under ``root``, if any; returns its folder."""
        checkpoints = Checkpointer(root)
        path = checkpoints.find()
        if path is None:
            return None
        state, rng, self.buffer = checkpoints.load(path, self.trainer.engine)
        state.pop("world_size")
        self.state = LoopState(**state)
        self.learner.load_state_dict(self.state.learner)
        restore_rng(rng, self.trainer.generator)
        log.info("%s: resumed from %s (round %d, step %d)", self.name, path.name, self.state.round, self.state.step)
        return path

    def _checkpoint(self) -> None:
        st = self.state
        now = time.time()
        st.wall_s += now - self._segment_start  # time up to this checkpoint, counted once
        self._segment_start = now
        if st.in_round:
            st.stream = self.trainer.stream.state_dict()
        st.learner = self.learner.state_dict()
        self.checkpointer.save(
            checkpoint_name(st.round, st.step),
            engine=self.trainer.engine,
            state=asdict(st),
            buffer=self.buffer,
            rng=rng_state(self.trainer.generator),
            config_yaml=self.run_config,
        )

    # -- the loop ----------------------------------------------------------------------------
    def _base_view(self, model: nn.Module) -> nn.Module:
        """The frozen base: the base module, or the LoRA model with its adapter off (one view per
        model, so the rollout's fast wrapper of it is built, and compiled, once)."""
        if self.cfg.train.mode != "lora":
            return self.base
        if self._adapter_off is None or self._adapter_off.peft_model is not model:
            self._adapter_off = AdapterOff(model, self.base.prediction_type)
        return self._adapter_off

    def policy(self) -> Composed:
        """The composed sampler of the current weights (whole, under every ZeRO stage)."""
        model = self.trainer.sampling_model().eval()
        return Composed(model, self._base_view(model), self.cfg.n_i)

    def run(self) -> PGraftRun:
        self._segment_start = time.time()
        cfg, st = self.cfg, self.state
        for k in tqdm(range(st.round, cfg.rounds), desc=f"{self.name} rounds", disable=not self.progress):
            if st.in_round:  # resumed mid-round: the buffer already holds this round's rows
                self.trainer.attach(self._training_data(), st.stream)
            else:
                st.partial = self._collect(k)
                st.in_round, st.step, st.losses = True, 0, []
                if len(self.buffer):
                    self.trainer.attach(self._training_data())
            train_start = time.time()
            steps = self._steps_this_round()
            if len(self.buffer):
                self.trainer.train(
                    None,
                    steps - st.step,
                    progress=self.progress,
                    desc=f"{self.name} r{k} train",
                    on_step=lambda _, loss: self._after_step(loss),
                )
            else:
                log.warning("%s round %d: the rule accepted no sample; no training this round", self.name, k)
            losses = st.losses[-10:] or [float("nan")]
            fields = dict(st.partial)
            # the rollout's time comes from the round's log (a resumed round's rollout ran before)
            rollout_s, train_s = fields.pop("rollout_s"), time.time() - train_start
            entry = RoundLog(
                round=k, **fields, train_loss=sum(losses) / len(losses), wall_s=rollout_s + train_s,
                rollout_wall_s=rollout_s, train_wall_s=train_s, train_forward=st.passes[0], train_backward=st.passes[1],
            )  # fmt: skip
            st.history.append(asdict(entry))
            if self.on_round is not None:
                self.on_round(entry)
            st.round, st.in_round, st.step, st.losses, st.partial, st.stream = k + 1, False, 0, [], None, None
            st.passes = [0, 0]
            if self.checkpointer is not None:
                self._checkpoint()
        policy = self.policy()  # gathers the weights once under ZeRO-3
        return PGraftRun(
            policy,
            policy.finetuned,
            self.schedule,
            cfg.n_i,
            [RoundLog(**h) for h in st.history],
            st.wall_s + (time.time() - self._segment_start),
            self.device,
        )

    def _after_step(self, loss: float) -> None:
        st = self.state
        st.step += 1
        st.losses.append(loss)
        for key, value in self.learner.diagnostics().items():  # the round's first value is kept
            st.partial.setdefault(key, value)
        tr = self.trainer
        st.passes = [st.passes[0] + tr.rows_forward - self._rows[0], st.passes[1] + tr.rows_backward - self._rows[1]]
        self._rows = (tr.rows_forward, tr.rows_backward)
        every = self.checkpoint_every
        if self.checkpointer is not None and every and st.step % every == 0 and st.step < self._steps_this_round():
            self._checkpoint()

    def _steps_this_round(self) -> int:
        return self.learner.steps_per_round(len(self.buffer), self.cfg.train.batch_size * world_size())

    def _training_data(self) -> TrainingData:
        self._rows = (self.trainer.rows_forward, self.trainer.rows_backward)
        return self.learner.training_data(self.buffer, self.schedule)

    def _collect(self, k: int) -> dict:
        """Rollout → reward → select → buffer for round k; returns the round's log fields so far."""
        t0 = time.time()
        cfg, g, m = self.cfg, self.num_conditions, self.cfg.samples_per_condition
        conds = torch.arange(g).repeat_interleave(m)
        # Same rollout seeds whatever N_I: methods compared at one budget see common noise.
        scorer = OverlappedScorer(self.reward_fn, self.decode)
        traj = rollout(
            self.fast.policy(self.policy()),
            self.schedule,
            conds,
            self.sample_shape,
            (cfg.seed, "rollout", k),
            n_i=cfg.n_i,
            guidance_scale=cfg.sampler.guidance_scale,
            null_label=self.null_label,
            batch_size=cfg.rollout_batch,
            shard=True,
            device=self.device,
            on_chunk=scorer.submit,
            progress=self.progress,
            desc=f"{self.name} r{k} rollout",
            record=self.learner.record,
        )
        images, mine = scorer.results(self.sample_shape)
        rewards = all_gather_rows(mine).cpu()  # the whole [G·M] table
        samples = keys = None
        if self.learner.needs_samples and self.duplicate_key is not None:
            keys = all_gather_rows(self.duplicate_key(images))  # each rank keys its own samples
        elif self.learner.needs_samples:
            samples = all_gather_rows(images)
        with phase("select"):
            acc = self.learner.accept(rewards, g, k, samples, keys)
        if acc.invalid:
            log.warning("%s round %d: %d non-finite rewards excluded", self.name, k, acc.invalid)
        with phase("buffer"):
            self.buffer.compact(self.buffer.meta()["round"] > k - self.keep_rounds)  # keep the last keep_rounds - 1
            self._append_accepted(acc, traj, rewards, k)
        finite = torch.isfinite(rewards)
        accepted = rewards[acc.indices]
        cfg_mult = 1 if cfg.sampler.guidance_scale == 1.0 else 2
        return {
            "samples_drawn": conds.numel(),
            "rollout_reward_mean": float(rewards[finite].mean()) if bool(finite.any()) else float("nan"),
            "accepted": int(acc.indices.numel()),
            "invalid_rewards": acc.invalid,
            "accepted_reward_mean": float(accepted.mean()) if acc.indices.numel() else float("nan"),
            "rollout_s": time.time() - t0,
            "rollout_forward": conds.numel() * self.schedule.steps * cfg_mult,
        }

    def _append_accepted(self, acc: Acceptance, traj: Rollout, rewards: torch.Tensor, k: int) -> None:
        """Every rank's buffer gets all accepted rows, in global order, tagged with the rank that sampled them."""
        idx = acc.indices
        lo, hi = traj.start, traj.start + traj.cond.numel()
        mine = idx[(idx >= lo) & (idx < hi)]
        local = self.learner.row_fields(traj)
        gathered = gather_rows((mine - lo).to(traj.x0.device), *local.values())
        rows = {name: all_gather_rows(t) for name, t in zip(local, gathered)}
        owner = all_gather_rows(torch.full((mine.numel(),), rank(), dtype=torch.int64))
        cond = torch.arange(self.num_conditions).repeat_interleave(self.cfg.samples_per_condition)
        for r in owner.unique().tolist():
            at = owner == r
            extra = {name: t[at] for name, t in acc.extra.items()}
            fields = {name: t[at] for name, t in rows.items()}
            self.buffer.append(
                group=cond[idx[at]], reward=rewards[idx[at]], round=k, rank=r, cond=cond[idx[at]], **fields, **extra
            )


def run_pgraft(*args, **kwargs) -> PGraftRun:
    """Run ``cfg.rounds`` rounds of ``PGraftLoop(problem, cfg, ...)`` (no checkpoints); return the composed policy."""
    return PGraftLoop(*args, **kwargs).run()


def history_dicts(run: PGraftRun) -> list[dict]:
    return [asdict(r) for r in run.history]
