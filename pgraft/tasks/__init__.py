"""Tasks: real data shipped inside a package, a pretrained base model, a reward.

Each task is one module that ends by registering its :class:`~pgraft.config.registry.TaskDefinition`
(docs/custom_task.md): ``digits`` (scikit-learn's handwritten digits, a class-conditional UNet,
a judge classifier's reward), ``animals`` (animal silhouettes, a UNet conditioned on MiniLM caption
embeddings), ``molecules`` (QM9 graphs, a graph transformer, RDKit rewards; the ``molecules``
extra) and ``layouts`` (page layouts of TeX manuals, a slot transformer, geometric rewards).

``prepare_task(cfg)`` returns everything the engine needs (a :class:`Task`); pretrained parts come
from the cache (keyed by a hash of their config), from the weights shipped in the package, or are
trained once and stored there.
"""

from __future__ import annotations

from pathlib import Path

from ..config import TaskConfig
from . import cache
from .pretraining import corrupt_labels, pretrain
from .task import Task

__all__ = ["Task", "corrupt_labels", "model_payloads", "prepare_task", "pretrain", "ship_models"]


def prepare_task(cfg: TaskConfig, *, force: bool = False, progress: bool = True) -> Task:
    """The prepared task ``cfg.name`` (any registered task)."""
    return cfg.definition.prepare(cfg, force=force, progress=progress)


def model_payloads(cfg: TaskConfig) -> dict[str, dict]:
    """The config payload that keys each pretrained model of the task ("judge", "base", ...)."""
    return cfg.definition.payloads(cfg)


def ship_models(cfg: TaskConfig, task: Task) -> list[Path]:
    """Copy the task's pretrained models into the package, under the config hash they were
    trained from (`pgraft pretrain --ship`): what a fresh install loads instead of training."""
    return [
        cache.ship_entry(Path(task.paths[kind]), cfg.name, kind, payload)
        for kind, payload in model_payloads(cfg).items()
    ]
