"""How a task's pretrained models come to be: DDPM pretraining through the engine's own trainer,
and the cache (or the weights shipped in the package) that makes it happen once per config."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import TaskConfig, TrainConfig
from ..engine.distributed import barrier, broadcast_object, rank, world_size
from ..engine.train import DenoisingTrainer, TrainingData
from ..errors import CheckpointError, ConfigError
from ..io import save_state
from ..models.schedule import Schedule
from . import cache


def corrupt_labels(labels: torch.Tensor, num_classes: int, rho: float, seed: int) -> torch.Tensor:
    """Replace a fraction ``rho`` of ``labels`` (exactly round(rho·N), a seeded random subset) by
    another class drawn uniformly among the other num_classes − 1: noisy web captions in miniature.
    """
    if rho == 0:
        return labels
    g = torch.Generator().manual_seed(seed)
    n = labels.numel()
    chosen = torch.randperm(n, generator=g)[: round(rho * n)]
    shift = torch.randint(1, num_classes, (chosen.numel(),), generator=g)  # never the true class
    out = labels.clone()
    out[chosen] = (labels[chosen] + shift) % num_classes
    return out


def pretrain(model: nn.Module, x: torch.Tensor, cond: torch.Tensor, u, field: str, progress: bool,
             on_step: Callable[[int, float], None] | None = None) -> nn.Module:  # fmt: skip
    """DDPM pretraining of ``model`` on data ``x`` with conditions ``cond``, through the same
    DeepSpeed trainer as GRAFT; ``u`` is the model config's pretraining budget (``field`` names it
    in errors); ``on_step(step, loss)`` runs after every optimizer step (curves of quality
    against steps: tools/molecule_base_curve.py). Collective under several ranks: data-parallel
    with the same global batch (so the same rows and noise draws as one process; the weights
    agree within float tolerance).
    """
    w = world_size()
    if u.pretrain_batch % w:
        raise ConfigError(f"{field}.pretrain_batch={u.pretrain_batch} must be divisible by the {w} ranks")
    schedule = Schedule.from_scheduler_config(model.scheduler_config, 1)
    train_cfg = TrainConfig(
        mode="full",
        lr=u.pretrain_lr,
        batch_size=u.pretrain_batch // w,
        cond_dropout=getattr(u, "cond_dropout", 0.0),
        weighting="none",
        decay_steps=u.pretrain_steps if u.pretrain_lr_schedule == "linear_decay" else 0,
    )
    trainer = DenoisingTrainer(model, schedule.alphas_cumprod, train_cfg, null_label=model.null_label, seed=u.seed)
    trainer.train(
        TrainingData(x, cond, level=-1), u.pretrain_steps, progress=progress, desc="pretrain base", on_step=on_step
    )
    return model.eval().requires_grad_(False)


def pretrained(
    cfg: TaskConfig,
    kind: str,
    train: Callable[[], nn.Module],
    build: Callable[[], nn.Module],
    *,
    force: bool,
    collective: bool,
):
    """The task's pretrained ``kind`` model (keyed by its definition's ``payloads(cfg)[kind]``):
    from the cache, else shipped with the package, else trained by ``train`` and stored in the cache.

    Under several ranks (a shared cache folder) rank 0 writes what is missing and the others wait
    and read the same bits; a ``collective`` ``train`` runs on every rank (data-parallel), else
    on rank 0 alone.
    """
    payload = cfg.definition.payloads(cfg)[kind]
    path, present = cache.find_entry(cache.cache_root(cfg.cache_dir), cfg.name, kind, payload, force)
    present = broadcast_object(present)
    if not present and (collective or rank() == 0):
        model = train()
        if rank() == 0:
            save_state(path, model.state_dict(), {"kind": kind, "config": payload})
    if not present:
        barrier()
    model = build()
    state, _ = cache.load_entry(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"pretrained model {path} does not match its config: {exc}") from None
    return model.eval().requires_grad_(False), path


def pretrained_base(cfg: TaskConfig, build: Callable[[], nn.Module], data, model_cfg, field: str, force: bool,
                    progress: bool):  # fmt: skip
    """A task's base (``build``: its architecture), DDPM-pretrained on ``data``'s training rows
    and conditions with ``model_cfg``'s budget (``field`` names it in errors), or cached."""

    def train() -> nn.Module:
        torch.manual_seed(model_cfg.seed)
        return pretrain(build(), data.train_x, data.train_y, model_cfg, field, progress and rank() == 0)

    return pretrained(cfg, "base", train, build, force=force, collective=True)
