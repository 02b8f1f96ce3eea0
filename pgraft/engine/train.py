"""Train: the denoising loss on accepted data, restricted to noise levels above N_I, run by a
DeepSpeed engine (every run, a single process included).

P-GRAFT's loss (docs/method.md §2, ours by default): the data are states x_s at training timestep s
(x_0 itself for GRAFT, where ᾱ_s = 1). For t > s,
    x_t = √(ᾱ_t/ᾱ_s)·x_s + √(1 − ᾱ_t/ᾱ_s)·ε',
and the network's ε-target (w.r.t. x_0) is √(1 − ᾱ_t)/√(1 − ᾱ_t/ᾱ_s)·ε'. The target's variance
blows up as t → s, so by default each t is weighted by (1 − ᾱ_t/ᾱ_s)/(1 − ᾱ_t) (any positive
weight per t keeps the minimiser), which makes the regression target exactly ε'. v-prediction
networks are converted to ε̂ = √ᾱ_t·v̂ + √(1 − ᾱ_t)·x_t, a per-t affine map with the same minimiser.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..buffer import TrajectoryBuffer
from ..config import SpeedConfig, TrainConfig
from ..errors import ConfigError, ShapeError
from ..seeding import derive_seed
from .distributed import comm_device, ensure_distributed, rank, shard_slice, world_size
from .phases import phase
from .speed import VerifiedCompile, autocast, prepare_network

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"]


class Objective(Protocol):
    """The loss of one minibatch, as ``passes`` DeepSpeed micro-steps (one backward each).

    ``losses`` yields, per pass, the loss of this rank's rows [lo, hi) of a global minibatch of
    ``n`` rows, and the global rows that pass pushes forward and backward through the trained
    network (the compute count of docs/policy_gradient.md). Every random draw comes from
    ``generator``, whose state all ranks share, for the whole global batch.
    """

    passes: int

    def losses(
        self, engine: nn.Module, batch: dict[str, torch.Tensor], n: int, lo: int, hi: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, int, int]]: ...


@dataclass(frozen=True)
class TrainingData:
    """What the loss regresses on: states at ``level`` and their conditions, for t >= ``t_min``.

    Either tensors ``x`` and ``cond`` (minibatches drawn with replacement: pretraining on a data
    set), or a trajectory ``buffer`` whose field ``field`` holds the states and ``cond`` the
    conditions (epochs of the buffer's seeded shuffled minibatches: the engine's rounds).
    ``objective`` replaces the denoising loss (the policy-gradient baselines' PPO loss reads
    its own buffer fields).
    """

    x: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    level: int = -1  # training timestep s of x; -1 for clean x_0 (ᾱ_s = 1)
    t_min: int = 0  # smallest training timestep drawn; > level
    buffer: TrajectoryBuffer | None = None
    field: str = "x0"
    objective: Objective | None = None

    def __len__(self) -> int:
        return len(self.buffer) if self.buffer is not None else int(self.x.shape[0])


class BatchStream:
    """Global micro-batches of ``global_batch`` rows; this rank gets its slice of each.

    Every draw comes from ``generator``, shared by all ranks with the same state, so the ranks
    agree on each global batch without talking and a world of W ranks with micro-batch b sees the
    rows one process with micro-batch W·b would. The position (epoch seed, batch index) is
    explicit state, so a resumed run continues with the very batch it would have drawn.
    """

    def __init__(self, data: TrainingData, global_batch: int, generator: torch.Generator):
        self.data, self.global_batch, self.generator = data, global_batch, generator
        self.epoch_seed: int | None = None
        self.batch_index = 0
        self._epoch: Iterator | None = None

    def state_dict(self) -> dict:
        return {"epoch_seed": self.epoch_seed, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_seed, self.batch_index = state["epoch_seed"], state["batch_index"]
        self._epoch = None if self.epoch_seed is None else self._open_epoch()

    def next(self) -> tuple[dict[str, torch.Tensor], int, int, int]:
        """This rank's slice [lo, hi) of the next global batch of n rows: a dict of fields
        (``x`` and ``cond`` for tensor data, the buffer's fields for a buffer)."""
        d = self.data
        if d.buffer is None:
            idx = torch.randint(0, len(d), (self.global_batch,), generator=self.generator)
            lo, hi = shard_slice(self.global_batch)
            return {"x": d.x[idx[lo:hi]], "cond": d.cond[idx[lo:hi]]}, self.global_batch, lo, hi
        while True:
            if self._epoch is None:
                self.epoch_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
                self.batch_index = 0
                self._epoch = self._open_epoch()
            mb = next(self._epoch, None)
            if mb is not None:
                break
            self._epoch = None
        self.batch_index += 1
        n = min(self.global_batch, len(d))  # a buffer smaller than a batch is one whole batch
        lo, hi = shard_slice(n)
        return {**mb, "x": mb[d.field]}, n, lo, hi

    def _open_epoch(self) -> Iterator:
        d = self.data
        drop_last = len(d) >= self.global_batch  # fixed-size batches whenever the buffer allows
        return d.buffer.minibatches(
            self.global_batch,
            self.epoch_seed,
            drop_last=drop_last,
            shard=(rank(), world_size()),
            start=self.batch_index,
        )


def eps_from_output(out, x_t, alpha_t, prediction_type: str):
    if prediction_type == "epsilon":
        return out
    return alpha_t.sqrt() * out + (1 - alpha_t).sqrt() * x_t


def draw_dsm_noise(
    n: int, row_shape: tuple[int, ...], level: int, total: int, generator: torch.Generator, t_min: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training timesteps t uniform on [max(t_min, s + 1), T) and the noise ε' for n rows."""
    t_low = max(t_min, level + 1)
    if t_low >= total:
        raise ShapeError(f"no training timestep lies in [{t_low}, {total})")
    t = torch.randint(t_low, total, (n,), generator=generator)
    return t, torch.randn((n, *row_shape), generator=generator)


def dsm_loss_at(
    model: nn.Module,
    x_s: torch.Tensor,
    cond: torch.Tensor,
    level: int,
    alphas_cumprod: torch.Tensor,
    t: torch.Tensor,
    eps_prime: torch.Tensor,
    *,
    weighting: str = "unit_target",
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """DSM from data at level s = ``level`` for given timesteps ``t`` and noise ``eps_prime`` (docs/method.md §2)."""
    shape = (x_s.shape[0], *([1] * (x_s.ndim - 1)))
    a_t = alphas_cumprod[t].float().view(shape)
    a_s = torch.ones_like(a_t) if level < 0 else alphas_cumprod[level].float().expand_as(a_t)
    ratio = a_t / a_s  # ᾱ_t/ᾱ_s
    x_t = ratio.sqrt() * x_s + (1 - ratio).sqrt() * eps_prime
    eps_hat = eps_from_output(model(x_t, t, cond), x_t, a_t, prediction_type)
    scale = ((1 - ratio) / (1 - a_t)).sqrt()  # ε-target = ε'/scale
    if weighting == "unit_target":
        return ((eps_hat * scale - eps_prime) ** 2).mean()
    return ((eps_hat - eps_prime / scale) ** 2).mean()


def dsm_loss(
    model: nn.Module,
    x_s: torch.Tensor,
    cond: torch.Tensor,
    level: int,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    *,
    t_min: int = 0,
    weighting: str = "unit_target",
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """DSM from data at level s = ``level``; t uniform on [max(t_min, s + 1), T), drawn from ``generator``."""
    t, eps_prime = draw_dsm_noise(x_s.shape[0], tuple(x_s.shape[1:]), level, alphas_cumprod.numel(), generator, t_min)
    return dsm_loss_at(
        model, x_s, cond, level, alphas_cumprod, t, eps_prime, weighting=weighting, prediction_type=prediction_type
    )


class DenoisingObjective:
    """P-GRAFT's denoising loss (docs/method.md §2) on the rows of ``data``: one pass per minibatch."""

    passes = 1

    def __init__(self, data: TrainingData, alphas_cumprod: torch.Tensor, cfg: TrainConfig, null_label, prediction_type):
        if alphas_cumprod is None:
            raise ConfigError("the denoising loss needs a DDPM-family schedule (flow bases have no ᾱ)")
        self.data, self.alphas_cumprod, self.cfg = data, alphas_cumprod, cfg
        self.null_label, self.prediction_type = null_label, prediction_type

    def losses(self, engine, batch, n, lo, hi, generator):
        x, cond, d, dev = batch["x"], batch["cond"], self.data, self.alphas_cumprod.device
        if self.cfg.cond_dropout > 0 and self.null_label is not None:
            drop = torch.rand((n,), generator=generator)[lo:hi] < self.cfg.cond_dropout
            cond = torch.where(drop, torch.full_like(cond, self.null_label), cond)
        total = self.alphas_cumprod.numel()
        t, eps = draw_dsm_noise(n, tuple(x.shape[1:]), d.level, total, generator, d.t_min + self.cfg.t_margin)
        loss = dsm_loss_at(
            engine,
            x.to(dev, non_blocking=True),
            cond.to(dev, non_blocking=True),
            d.level,
            self.alphas_cumprod,
            t[lo:hi].to(dev),
            eps[lo:hi].to(dev, non_blocking=True),
            weighting=self.cfg.weighting,
            prediction_type=self.prediction_type,
        )
        yield loss, n, n


def make_trainable(base: nn.Module, cfg: TrainConfig, seed: int = 0) -> nn.Module:
    """A trainable copy of ``base``: full weights, or a PEFT LoRA adapter over shared frozen weights.

    The adapter's random initialisation draws from its own stream seeded by ``seed``, so it does
    not depend on what the process drew before (every rank, and a 1-rank run, start alike).
    """
    if cfg.mode == "full":
        model = copy.deepcopy(base)
        model.requires_grad_(True)
        return model.train()
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets or LORA_TARGETS
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "lora-init"))
        model = get_peft_model(copy.deepcopy(base), lora)
    model.prediction_type = base.prediction_type
    return model.train()


def deepspeed_config(cfg: TrainConfig, passes: int = 1) -> dict:
    """The DeepSpeed config of a trainer: batch semantics, clipping, ZeRO stage, precision, LR warm-up.

    train_batch_size = micro-batch × accumulation × world size (docs/distributed.md). An
    objective of ``passes`` backward passes per minibatch (PPO: one per trained sampler step,
    as ddpo-pytorch accumulates) multiplies DeepSpeed's accumulation count by it.
    """
    ds = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum * passes,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * passes * world_size(),
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    warmup = {"warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_type": "linear"}
    if cfg.decay_steps:
        # DeepSpeed needs a positive warm-up; 1 step of it starts at the full LR.
        params = {**warmup, "warmup_num_steps": max(1, cfg.warmup_steps), "total_num_steps": cfg.decay_steps}
        ds["scheduler"] = {"type": "WarmupDecayLR", "params": params}
    elif cfg.warmup_steps:
        ds["scheduler"] = {"type": "WarmupLR", "params": {**warmup, "warmup_num_steps": cfg.warmup_steps}}
    return ds


class DenoisingTrainer:
    """Owns one DeepSpeed engine around a trainable denoiser and runs optimizer steps.

    Only the trainable network enters the engine (and ZeRO's partitioning); frozen parts — the
    base model used below N_I, the reward model, encoders — stay plain modules on every rank.
    """

    def __init__(
        self,
        model: nn.Module,
        alphas_cumprod: torch.Tensor | None,
        cfg: TrainConfig,
        *,
        null_label: int | None,
        seed: int,
        timeout_s: float | None = None,
        passes: int = 1,
        speed: SpeedConfig | None = None,
    ):
        import deepspeed

        if cfg.precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.precision=fp16 needs a GPU (DeepSpeed's loss scaler); use bf16 or fp32 on the CPU")
        ensure_distributed(timeout_s)
        self.cfg = cfg
        self.passes = passes  # backward passes per minibatch of every objective this trainer runs
        self.null_label = null_label
        self.prediction_type = model.prediction_type
        self.generator = torch.Generator().manual_seed(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ShapeError("the model to train has no trainable parameters")
        # ZeRO-3 partitions the module's parameters in place: sampling needs a whole copy.
        self._sampler = copy.deepcopy(model).eval().requires_grad_(False) if cfg.zero_stage == 3 else None
        self.speed = speed or SpeedConfig()
        prepare_network(model, self.speed)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg, passes))
        self.model = model
        self.device = torch.device(self.engine.device)  # where DeepSpeed put the network
        # autocast of the training forward only: fp32 weights, gradients and AdamW state stay
        self.forward_dtype = torch.bfloat16 if self.speed.train_precision == "bf16" else torch.float32
        if self.speed.compile_training:
            # the module's forward compiled and checked against eager on its first call (not
            # DeepSpeed's engine.compile(), which compiles the module's hooks with it and checks
            # nothing); the trained network's sampling forwards then run compiled too
            if cfg.zero_stage == 3:
                raise ConfigError("speed.compile_training with train.zero_stage=3 is not supported (use 0-2)")
            model.forward = VerifiedCompile(model.forward, model, option="speed.compile_training", gradients=True)
        self.alphas_cumprod = None if alphas_cumprod is None else alphas_cumprod.float().to(self.device)
        self.steps_done = 0
        self.rows_forward = self.rows_backward = 0  # global rows through the trained network
        self.stream: BatchStream | None = None
        self.objective: Objective | None = None

    def sampling_model(self) -> nn.Module:
        """The trained network, whole, as a plain module (gathered from the ranks under ZeRO-3)."""
        if self._sampler is None:
            return self.model
        import deepspeed

        params = list(self.model.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            with torch.no_grad():
                for mine, whole in zip(self._sampler.parameters(), params):
                    mine.copy_(whole.detach().to(mine.dtype))
        return self._sampler

    def attach(self, data: TrainingData, stream_state: dict | None = None) -> None:
        """Train on ``data`` from now on (optionally at a saved stream position)."""
        if len(data) < world_size():
            raise ShapeError(f"{len(data)} training rows cannot feed {world_size()} ranks")
        self.objective = data.objective or DenoisingObjective(
            data, self.alphas_cumprod, self.cfg, self.null_label, self.prediction_type
        )
        if self.objective.passes != self.passes:
            raise ShapeError(
                f"the objective takes {self.objective.passes} passes per minibatch; this trainer's "
                f"DeepSpeed engine was built for {self.passes}"
            )
        self.stream = BatchStream(data, self.cfg.batch_size * world_size(), self.generator)
        if stream_state is not None:
            self.stream.load_state_dict(stream_state)

    def train(
        self,
        data: TrainingData | None,
        steps: int,
        *,
        progress: bool = True,
        desc: str = "train",
        on_step: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Run ``steps`` optimizer steps on minibatches of ``data`` (None: the attached data).

        ``on_step(i, loss)`` runs after the i-th step (1-based) of this call: the checkpoint hook.
        The loss reported is the global batch's mean, the same on every rank.
        """
        if data is not None:
            if len(data) == 0:
                raise ShapeError("no training data: selection accepted nothing this round")
            self.attach(data)
        stream = self.stream
        self.engine.train()
        losses = []
        bar = tqdm(range(steps), desc=desc, disable=not progress or rank() != 0, leave=False)
        for i in bar:
            step_loss = 0.0
            for _ in range(self.cfg.grad_accum):
                with phase("buffer"):
                    batch, n, lo, hi = stream.next()
                # DeepSpeed averages over ranks; weight by this rank's share so the update is the
                # global batch's mean even when the slices differ in size.
                share = (hi - lo) * world_size() / n
                pass_losses = self.objective.losses(self.engine, batch, n, lo, hi, self.generator)
                for _ in range(self.objective.passes):
                    with phase("train.forward"), autocast(self.device, self.forward_dtype):
                        loss, fwd, bwd = next(pass_losses)
                    value = float(loss.detach()) * share
                    with phase("train.backward"):
                        self.engine.backward(loss * share if share != 1 else loss)
                    with phase("train.optimizer"):
                        self.engine.step()
                    step_loss += value / (self.cfg.grad_accum * self.passes)
                    self.rows_forward, self.rows_backward = self.rows_forward + fwd, self.rows_backward + bwd
            step_loss = _mean_over_ranks(step_loss)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"training loss became {step_loss} at step {self.steps_done}")
            losses.append(step_loss)
            self.steps_done += 1
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if on_step is not None:
                on_step(i + 1, step_loss)
        self.engine.eval()
        return losses


def _mean_over_ranks(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=comm_device())
    torch.distributed.all_reduce(t)
    return float(t) / world_size()
