"""Embedded tasks: real data shipped inside a package, a pretrained base model, a reward.

``digits``: scikit-learn's handwritten digits, a class-conditional UNet2DModel. ``animals``: the
animal-shape-mnist silhouettes, a UNet2DConditionModel conditioned on all-MiniLM-L6-v2 token
embeddings of captions. In both the condition is an integer (class label / prompt id) and the
reward is a judge classifier's probability of the prompted class. ``molecules``
(pgraft/tasks/molecules.py): QM9 graphs, a graph transformer, RDKit rewards; it needs the
``molecules`` extra. ``layouts`` (pgraft/tasks/layouts.py): page layouts of TeX manuals generated
given their element types, a slot transformer, geometric rewards.

``prepare_task(cfg)`` returns everything the engine needs; pretrained parts come from the cache
(keyed by a hash of their config) or are trained once and stored there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import TaskConfig, TrainConfig
from ..engine.distributed import barrier, broadcast_object, rank, world_size
from ..engine.train import DenoisingTrainer, TrainingData
from ..errors import CheckpointError, ConfigError
from ..io import save_state
from ..models.schedule import Schedule
from ..models.unet import ClassConditionalUNet
from ..report import save_grid
from ..rewards.base import RewardFn
from ..rewards.judge import JudgeReward
from ..seeding import derive_seed
from . import animals, cache, digits, layouts, molecules
from .digits import ImageData, decode
from .judge import JudgeNet, accuracy, train_judge


@dataclass(frozen=True)
class TaskSpec:
    """What differs between the embedded tasks."""

    num_classes: int
    class_names: list[str]
    load: Callable[[TaskConfig], ImageData]
    build_base: Callable[[TaskConfig], nn.Module]  # untrained, the right architecture
    # the conditions the base is pretrained on, given the (possibly corrupted) class labels
    pretraining_conditions: Callable[[TaskConfig, torch.Tensor], torch.Tensor]
    base_key: Callable[[TaskConfig], dict]  # what besides the UNet config defines the base model


def _animals_base(cfg: TaskConfig) -> nn.Module:
    from ..models.text_encoder import encode_captions
    from ..models.text_unet import TextConditionalUNet

    embeds, mask = encode_captions(animals.captions())
    return TextConditionalUNet.from_config(cfg.unet, cfg.image_size, embeds, mask)


SPECS = {
    "digits": TaskSpec(
        digits.NUM_CLASSES,
        digits.CLASS_NAMES,
        lambda c: digits.load_digits_split(c.image_size, c.test_fraction, c.split_seed),
        lambda c: ClassConditionalUNet.from_config(c.unet, c.image_size, digits.NUM_CLASSES),
        lambda c, y: y,
        lambda c: {},
    ),
    "animals": TaskSpec(
        animals.NUM_CLASSES,
        animals.CLASS_NAMES,
        lambda c: animals.load_animals_split(c.image_size, c.test_fraction, c.split_seed),
        _animals_base,
        lambda c, y: animals.pretraining_prompts(y, c.unet.seed),
        lambda c: {"captions": animals.captions(), "text_encoder": "all-MiniLM-L6-v2"},
    ),
}


@dataclass
class Task:
    name: str
    data: ImageData | None  # (or the molecules' data) None for models brought by the user (Stable Diffusion)
    base: nn.Module  # frozen, eval mode: a denoiser (models/unet.py's contract)
    reward: RewardFn
    judge_accuracy: float  # held-out accuracy of the judge on the real test images
    real_reward_mean: float  # mean reward of the real test images (the ceiling to compare with)
    num_classes: int
    class_names: list[str]
    sample_shape: tuple[int, ...]
    decode: Callable[[torch.Tensor], torch.Tensor]
    paths: dict[str, str]
    pretrain_s: float
    eval_conditions: torch.Tensor | None = None  # held-out condition ids; None: the training conditions
    # the dedup rule's key per decoded sample (int64 [B]); None: the rule compares pixels
    duplicate_key: Callable[[torch.Tensor], torch.Tensor] | None = None
    # the task's own metrics (molecules.MoleculeMetrics): called on (decoded, labels) -> dict, a
    # "diversity" entry replacing the pixel one; ``COLUMNS`` to show; ``real_samples(n)``: real
    # held-out (decoded, labels), the reference row
    sample_metrics: Callable[[torch.Tensor, torch.Tensor], dict] | None = None
    render: Callable[..., Path] | None = None  # (decoded, labels, path, title): a picture of samples

    def save_samples(self, decoded: torch.Tensor, labels: torch.Tensor, path: Path, title: str) -> Path:
        """A labelled picture of decoded samples: the task's own renderer, else an image grid."""
        if self.render is not None:
            return self.render(decoded, labels, path, title)
        return save_grid(decoded, labels, path, class_names=self.class_names, title=title)

    def schedule(self, steps: int, kind: str = "ddim", eta: float = 1.0) -> Schedule:
        return Schedule.from_scheduler_config(self.base.scheduler_config, steps, kind, eta)


def _data_key(cfg: TaskConfig) -> dict:
    return {
        "task": cfg.name,
        "image_size": cfg.image_size,
        "test_fraction": cfg.test_fraction,
        "split_seed": cfg.split_seed,
    }


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


def pretrain(model: nn.Module, x: torch.Tensor, cond: torch.Tensor, u, field: str, progress: bool) -> nn.Module:
    """DDPM pretraining of ``model`` on data ``x`` with conditions ``cond``, through the same
    DeepSpeed trainer as GRAFT; ``u`` is the model config's pretraining budget (``field`` names it
    in errors). Collective under several ranks: data-parallel with the same global batch (so the
    same rows and noise draws as one process; the weights agree within float tolerance).
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
    trainer.train(TrainingData(x, cond, level=-1), u.pretrain_steps, progress=progress, desc="pretrain base")
    return model.eval().requires_grad_(False)


def pretrain_base(cfg: TaskConfig, data: ImageData, progress: bool = True) -> nn.Module:
    """An image task's base: DDPM pretraining on the real training images (captions corrupted
    at the variant's rate)."""
    u = cfg.unet
    torch.manual_seed(u.seed)
    spec = SPECS[cfg.name]
    model = spec.build_base(cfg)
    labels = corrupt_labels(data.train_y, spec.num_classes, u.caption_noise, derive_seed(u.seed, "caption-noise"))
    return pretrain(model, data.train_x, spec.pretraining_conditions(cfg, labels), u, "task.unet", progress)


def model_payloads(cfg: TaskConfig) -> dict[str, dict]:
    """The config payload that keys each pretrained model of the task ("judge", "base")."""
    if cfg.name == "molecules":
        return {"base": molecules.base_payload(cfg)}
    if cfg.name == "layouts":
        return layouts.payloads(cfg)
    key = _data_key(cfg)
    return {
        "judge": {**key, **cfg.judge.model_dump()},
        "base": {**key, **cfg.unet.model_dump(mode="json"), **SPECS[cfg.name].base_key(cfg)},
    }


def _pretrained(
    cfg: TaskConfig,
    kind: str,
    train: Callable[[], nn.Module],
    build: Callable[[], nn.Module],
    *,
    force: bool,
    collective: bool,
):
    """The task's pretrained ``kind`` model: from the cache, else shipped with the package, else
    trained by ``train`` and stored in the cache.

    Under several ranks (a shared cache folder) rank 0 writes what is missing and the others wait
    and read the same bits; a ``collective`` ``train`` runs on every rank (data-parallel), else
    on rank 0 alone.
    """
    payload = model_payloads(cfg)[kind]
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


def ship_models(cfg: TaskConfig, task: Task) -> list[Path]:
    """Copy the task's pretrained models (base, judge) into the package, under the config hash
    they were trained from (`pgraft pretrain --ship`): what a fresh install loads instead of training."""
    payloads = model_payloads(cfg)
    return [cache.ship_entry(Path(task.paths[kind]), cfg.name, kind, payload) for kind, payload in payloads.items()]


def prepare_task(cfg: TaskConfig, *, force: bool = False, progress: bool = True) -> Task:
    if cfg.name == "molecules":
        return _prepare_molecules(cfg, force, progress)
    if cfg.name == "layouts":
        return _prepare_layouts(cfg, force, progress)
    if cfg.name not in SPECS:  # the config's Literal admits only the embedded tasks
        raise ValueError(f"unknown task {cfg.name!r}")
    spec = SPECS[cfg.name]
    t0 = time.time()
    data = spec.load(cfg)
    progress = progress and rank() == 0
    judge, judge_path = _pretrained(
        cfg,
        "judge",
        lambda: train_judge(decode(data.train_x), data.train_y, cfg.judge, progress),
        lambda: JudgeNet(spec.num_classes, 1),
        force=force,
        collective=False,
    )
    judge_acc = accuracy(judge, decode(data.test_x), data.test_y)
    base, base_path = _pretrained(
        cfg,
        "base",
        lambda: pretrain_base(cfg, data, progress),
        lambda: spec.build_base(cfg),
        force=force,
        collective=True,
    )

    reward = JudgeReward(judge)
    real_reward = float(reward(decode(data.test_x), data.test_y).mean())
    return Task(
        name=cfg.name,
        data=data,
        base=base,
        reward=reward,
        judge_accuracy=judge_acc,
        real_reward_mean=real_reward,
        num_classes=spec.num_classes,
        class_names=spec.class_names,
        sample_shape=(1, cfg.image_size, cfg.image_size),
        decode=decode,
        paths={"judge": str(judge_path), "base": str(base_path)},
        pretrain_s=time.time() - t0,
    )


def _pretrained_base(cfg: TaskConfig, build: Callable[[], nn.Module], data, model_cfg, field: str, force: bool,
                     progress: bool):  # fmt: skip
    """A non-image task's base (``build``: its architecture), DDPM-pretrained on ``data``'s training
    rows and conditions with ``model_cfg``'s budget (``field`` names it in errors), or cached."""

    def train() -> nn.Module:
        torch.manual_seed(model_cfg.seed)
        return pretrain(build(), data.train_x, data.train_y, model_cfg, field, progress and rank() == 0)

    return _pretrained(cfg, "base", train, build, force=force, collective=True)


def _prepare_molecules(cfg: TaskConfig, force: bool, progress: bool) -> Task:
    from ..chem import codec
    from ..rewards.molecules import MoleculeReward

    t0 = time.time()
    data = molecules.load_molecules_split(cfg)
    m = cfg.molecules

    build = lambda: molecules.build_base(cfg)  # noqa: E731
    base, base_path = _pretrained_base(cfg, build, data, m.model, "task.molecules.model", force, progress)
    reward = MoleculeReward([(t.name, t.weight) for t in m.reward])
    reference = data.test_x[: m.reference_size]
    real_reward = float(reward(codec.decode(reference), torch.zeros(reference.shape[0], dtype=torch.int64)).mean())
    return Task(
        name="molecules",
        data=data,
        base=base,
        reward=reward,
        judge_accuracy=float("nan"),
        real_reward_mean=real_reward,
        num_classes=molecules.NUM_CLASSES,
        class_names=molecules.CLASS_NAMES,
        sample_shape=(codec.SAMPLE_DIM,),
        decode=codec.decode,
        paths={"base": str(base_path)},
        pretrain_s=time.time() - t0,
        duplicate_key=codec.duplicate_keys,
        sample_metrics=molecules.MoleculeMetrics(data, m.reference_size),
        render=molecules.render,
    )


def _prepare_layouts(cfg: TaskConfig, force: bool, progress: bool) -> Task:
    from functools import partial

    from ..models.layout_fid import LayoutFeatureNet, train_layout_fid
    from ..rewards.layouts import LayoutReward
    from .layout_metrics import LayoutMetrics

    t0 = time.time()
    lc = cfg.layouts
    data = layouts.split_layouts(cfg)
    used = int((torch.bincount(data.train_y, minlength=data.type_table.shape[0]) > 0).sum())  # ids 0..used-1
    conditions = used if lc.conditions is None else lc.conditions
    if conditions > data.type_table.shape[0]:
        raise ConfigError(f"task.layouts.conditions={conditions} exceeds the {data.type_table.shape[0]} type multisets")
    progress = progress and rank() == 0

    def train_fid() -> nn.Module:
        return train_layout_fid(layouts.decode(data.train_x), data.types(data.train_y), len(layouts.TYPES), lc.fid,
                                progress)  # fmt: skip

    build = lambda: layouts.build_base(cfg, data.type_table)  # noqa: E731
    base, base_path = _pretrained_base(cfg, build, data, lc.model, "task.layouts.model", force, progress)
    if not torch.equal(base.type_table, build().type_table):  # the weights carry the conditions' table
        raise CheckpointError(f"{base_path}: its type-multiset table is not the corpus split's (a stale cache?)")
    fid_net, fid_path = _pretrained(cfg, "fid", train_fid, lambda: LayoutFeatureNet(lc.fid, len(layouts.TYPES)),
                                    force=force, collective=False)  # fmt: skip
    reward = LayoutReward([(t.name, t.weight) for t in lc.reward], data.type_table, layouts.type_areas(data))
    real_reward = float(reward(layouts.decode(data.test_x), data.test_y).mean())
    return Task(
        name="layouts",
        data=data,
        base=base,
        reward=reward,
        judge_accuracy=float("nan"),
        real_reward_mean=real_reward,
        num_classes=conditions,
        class_names=layouts.condition_names(data.type_table, conditions),
        sample_shape=(layouts.SAMPLE_DIM,),
        decode=layouts.decode,
        paths={"base": str(base_path), "fid": str(fid_path)},
        pretrain_s=time.time() - t0,
        eval_conditions=data.test_y,
        sample_metrics=LayoutMetrics(data, fid_net),
        render=partial(layouts.render, type_table=data.type_table),
    )
