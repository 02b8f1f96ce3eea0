"""Train: the denoising loss on accepted data, restricted to noise levels above N_I, run by a
DeepSpeed engine (every run, a single process included).

P-GRAFT's loss (METHOD.md §2, ours by default): the data are states x_s at training timestep s
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
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..buffer import TrajectoryBuffer
from ..config import TrainConfig
from ..errors import ShapeError
from .distributed import ensure_distributed

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"]


@dataclass(frozen=True)
class TrainingData:
    """What the loss regresses on: states at ``level`` and their conditions, for t >= ``t_min``.

    Either tensors ``x`` and ``cond`` (minibatches drawn with replacement: pretraining on a data
    set), or a trajectory ``buffer`` whose field ``field`` holds the states and ``cond`` the
    conditions (epochs of the buffer's seeded shuffled minibatches: the engine's rounds).
    """

    x: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    level: int = -1  # training timestep s of x; -1 for clean x_0 (ᾱ_s = 1)
    t_min: int = 0  # smallest training timestep drawn; > level
    buffer: TrajectoryBuffer | None = None
    field: str = "x0"

    def __len__(self) -> int:
        return len(self.buffer) if self.buffer is not None else int(self.x.shape[0])

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """An endless stream of (x, cond) minibatches; every draw comes from ``generator``."""
        if self.buffer is None:
            while True:
                idx = torch.randint(0, len(self), (batch_size,), generator=generator)
                yield self.x[idx], self.cond[idx]
        drop_last = len(self.buffer) >= batch_size  # fixed-size batches whenever the buffer allows
        while True:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            for mb in self.buffer.minibatches(batch_size, seed, drop_last=drop_last):
                yield mb[self.field], mb["cond"]


def eps_from_output(out, x_t, alpha_t, prediction_type: str):
    if prediction_type == "epsilon":
        return out
    return alpha_t.sqrt() * out + (1 - alpha_t).sqrt() * x_t


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
    """DSM from data at level s = ``level`` (METHOD.md §2); t uniform on [max(t_min, s + 1), T)."""
    b, nd = x_s.shape[0], x_s.ndim
    total = alphas_cumprod.numel()
    t_low = max(t_min, level + 1)
    if t_low >= total:
        raise ShapeError(f"no training timestep lies in [{t_low}, {total})")
    t = torch.randint(t_low, total, (b,), generator=generator)
    shape = (b, *([1] * (nd - 1)))
    a_t = alphas_cumprod[t].float().view(shape)
    a_s = torch.ones_like(a_t) if level < 0 else alphas_cumprod[level].float().expand_as(a_t)
    ratio = a_t / a_s  # ᾱ_t/ᾱ_s
    eps_prime = torch.randn(x_s.shape, generator=generator)
    x_t = ratio.sqrt() * x_s + (1 - ratio).sqrt() * eps_prime
    eps_hat = eps_from_output(model(x_t, t, cond), x_t, a_t, prediction_type)
    scale = ((1 - ratio) / (1 - a_t)).sqrt()  # ε-target = ε'/scale
    if weighting == "unit_target":
        return ((eps_hat * scale - eps_prime) ** 2).mean()
    return ((eps_hat - eps_prime / scale) ** 2).mean()


def make_trainable(base: nn.Module, cfg: TrainConfig) -> nn.Module:
    """A trainable copy of ``base``: full weights, or a PEFT LoRA adapter over shared frozen weights."""
    if cfg.mode == "full":
        model = copy.deepcopy(base)
        model.requires_grad_(True)
        return model.train()
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0)
    model = get_peft_model(copy.deepcopy(base), lora)
    model.prediction_type = base.prediction_type
    return model.train()


class DenoisingTrainer:
    """Owns one DeepSpeed engine around a trainable denoiser and runs optimizer steps."""

    def __init__(
        self, model: nn.Module, alphas_cumprod: torch.Tensor, cfg: TrainConfig, *, null_label: int | None, seed: int
    ):
        import deepspeed

        ensure_distributed()
        self.cfg = cfg
        self.alphas_cumprod = alphas_cumprod.float()
        self.null_label = null_label
        self.prediction_type = model.prediction_type
        self.generator = torch.Generator().manual_seed(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ShapeError("the model to train has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.model = model
        self.steps_done = 0

    def train(self, data: TrainingData, steps: int, *, progress: bool = True, desc: str = "train") -> list[float]:
        """Run ``steps`` optimizer steps on minibatches of ``data``."""
        if len(data) == 0:
            raise ShapeError("no training data: selection accepted nothing this round")
        batches = data.batches(self.cfg.batch_size, self.generator)
        self.engine.train()
        losses = []
        bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
        for _ in bar:
            step_loss = 0.0
            for _ in range(self.cfg.grad_accum):
                x, cond = next(batches)
                if self.cfg.cond_dropout > 0 and self.null_label is not None:
                    drop = torch.rand(cond.shape, generator=self.generator) < self.cfg.cond_dropout
                    cond = torch.where(drop, torch.full_like(cond, self.null_label), cond)
                loss = dsm_loss(
                    self.engine,
                    x,
                    cond,
                    data.level,
                    self.alphas_cumprod,
                    self.generator,
                    t_min=data.t_min + self.cfg.t_margin,
                    weighting=self.cfg.weighting,
                    prediction_type=self.prediction_type,
                )
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {self.steps_done}")
                self.engine.backward(loss)
                self.engine.step()
                step_loss += value / self.cfg.grad_accum
            losses.append(step_loss)
            self.steps_done += 1
            bar.set_postfix(loss=f"{step_loss:.4f}")
        self.engine.eval()
        return losses
