"""Preparing an embedded task from the models shipped in the package, with every trainer refused:
a test that needs the default task must not spend minutes pretraining, and must fail if it would."""

from __future__ import annotations

import pytest

from pgraft.config import TaskConfig


def prepare_shipped(cfg: TaskConfig, **kwargs):
    """``prepare_task(cfg)``; raises AssertionError if any base, judge or FID network would train."""
    import pgraft.models.layout_fid as layout_fid
    import pgraft.tasks as tasks
    import pgraft.tasks.images as images
    import pgraft.tasks.pretraining as pretraining

    def refuse(*args, **kw):
        raise AssertionError(f"the default {cfg.name} task must start from the shipped models, not train")

    with pytest.MonkeyPatch.context() as mp:
        trainers = ((pretraining, "pretrain"), (images, "pretrain"), (images, "train_judge"),
                    (layout_fid, "train_layout_fid"))  # fmt: skip
        for module, name in trainers:
            mp.setattr(module, name, refuse)
        return tasks.prepare_task(cfg, **kwargs)
