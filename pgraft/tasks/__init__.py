"""Embedded tasks: real data shipped inside a package, a pretrained base model, a judge reward.

``prepare_task(cfg)`` returns everything the engine needs; pretrained parts come from the cache
(keyed by a hash of their config) or are trained once and stored there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import TaskConfig, TrainConfig
from ..engine.distributed import barrier, broadcast_object, rank, world_size
from ..engine.train import DenoisingTrainer, TrainingData
from ..errors import CheckpointError, ConfigError
from ..io import save_state
from ..models.schedule import Schedule
from ..models.unet import ClassConditionalUNet
from ..rewards.judge import JudgeReward
from . import cache
from .digits import NUM_CLASSES, DigitsData, decode, load_digits_split
from .judge import JudgeNet, accuracy, train_judge


@dataclass
class Task:
    name: str
    data: DigitsData
    base: ClassConditionalUNet  # frozen, eval mode
    reward: JudgeReward
    judge_accuracy: float  # held-out accuracy of the judge on real test digits
    real_reward_mean: float  # mean reward of real test digits (the ceiling to compare with)
    num_classes: int
    sample_shape: tuple[int, ...]
    decode: Callable[[torch.Tensor], torch.Tensor]
    paths: dict[str, str]
    pretrain_s: float

    def schedule(self, steps: int, kind: str = "ddim", eta: float = 1.0) -> Schedule:
        return Schedule.from_scheduler_config(self.base.scheduler_config, steps, kind, eta)


def _data_key(cfg: TaskConfig) -> dict:
    return {
        "task": cfg.name,
        "image_size": cfg.image_size,
        "test_fraction": cfg.test_fraction,
        "split_seed": cfg.split_seed,
    }


def pretrain_base(cfg: TaskConfig, data: DigitsData, progress: bool = True) -> ClassConditionalUNet:
    """DDPM pretraining on the real training digits, through the same DeepSpeed trainer as GRAFT.

    Collective under several ranks: data-parallel with the same global batch (so the same rows
    and noise draws as one process; the weights agree within float tolerance).
    """
    u = cfg.unet
    w = world_size()
    if u.pretrain_batch % w:
        raise ConfigError(f"task.unet.pretrain_batch={u.pretrain_batch} must be divisible by the {w} ranks")
    torch.manual_seed(u.seed)
    model = ClassConditionalUNet.from_config(u, cfg.image_size, NUM_CLASSES)
    schedule = Schedule.from_scheduler_config(model.scheduler_config, 1)
    train_cfg = TrainConfig(
        mode="full", lr=u.pretrain_lr, batch_size=u.pretrain_batch // w, cond_dropout=u.cond_dropout, weighting="none"
    )
    trainer = DenoisingTrainer(model, schedule.alphas_cumprod, train_cfg, null_label=model.null_label, seed=u.seed)
    trainer.train(
        TrainingData(data.train_x, data.train_y, level=-1), u.pretrain_steps, progress=progress, desc="pretrain base"
    )
    return model.eval().requires_grad_(False)


def prepare_task(cfg: TaskConfig, *, force: bool = False, progress: bool = True) -> Task:
    if cfg.name != "digits":  # the config's Literal admits only the embedded tasks
        raise ValueError(f"unknown task {cfg.name!r}")
    t0 = time.time()
    data = load_digits_split(cfg.image_size, cfg.test_fraction, cfg.split_seed)
    root = cache.cache_root(cfg.cache_dir)
    key = _data_key(cfg)

    # Under several ranks (a shared cache folder): rank 0 trains and writes what is missing, the
    # others wait and read the same files, so every rank scores with the same bits.
    progress = progress and rank() == 0
    judge_path = cache.entry_path(root, cfg.name, "judge", {**key, **cfg.judge.model_dump()})
    if rank() == 0 and (force or not judge_path.exists()):
        judge = train_judge(decode(data.train_x), data.train_y, cfg.judge, progress)
        save_state(judge_path, judge.state_dict(), {"kind": "judge"})
    barrier()
    judge = JudgeNet(NUM_CLASSES, 1)
    state, _ = cache.load_entry(judge_path)
    judge.load_state_dict(state)
    judge.eval().requires_grad_(False)
    judge_acc = accuracy(judge, decode(data.test_x), data.test_y)

    base_key = {**key, **cfg.unet.model_dump(mode="json")}
    base_path = cache.entry_path(root, cfg.name, "base", base_key)
    if broadcast_object(force or not base_path.exists()):
        base = pretrain_base(cfg, data, progress)  # collective
        if rank() == 0:
            save_state(base_path, base.state_dict(), {"kind": "base", "config": base_key})
        barrier()
    base = ClassConditionalUNet.from_config(cfg.unet, cfg.image_size, NUM_CLASSES)
    state, _ = cache.load_entry(base_path)
    try:
        base.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"cached model {base_path} does not match its config: {exc}") from None
    base.eval().requires_grad_(False)

    reward = JudgeReward(judge)
    real_reward = float(reward(decode(data.test_x), data.test_y).mean())
    return Task(
        name=cfg.name,
        data=data,
        base=base,
        reward=reward,
        judge_accuracy=judge_acc,
        real_reward_mean=real_reward,
        num_classes=NUM_CLASSES,
        sample_shape=(1, cfg.image_size, cfg.image_size),
        decode=decode,
        paths={"judge": str(judge_path), "base": str(base_path)},
        pretrain_s=time.time() - t0,
    )
