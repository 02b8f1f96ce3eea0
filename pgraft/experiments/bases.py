"""`pgraft bases`: is each base model a good drawer that follows its prompt poorly (docs/method.md §2's
premise)? Measured beside the real held-out images of the task.

For each task and base variant, ``eval.samples_per_class`` samples per class from the demo's
sampler, and for the real held-out images:
- quality: the judge's confidence in its *own* arg-max class (mean, and the fraction ≥ 0.9), which
  asks "is this a sharp member of some class?" whatever was prompted;
- FID in the judge's feature space against the held-out images (the INC metric); the real row
  compares the training images with the held-out ones, the floor at this sample size;
- the prompted reward p_judge(prompted class | x) with its 95% CI, and accuracy;
- diversity (within-class RMS pixel distance, as everywhere).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import BasesConfig, PGraftConfig
from ..engine.compose import Single
from ..engine.evaluate import diversity, mean_ci95
from ..report import save_grid, table
from ..rewards.base import score
from ..tasks import Task, prepare_task
from .common import evaluate_on_task, judge_fid
from .run_dir import RunDir

COLUMNS = [
    "task", "model", "quality", "quality_confident", "fid", "reward_mean", "reward_ci95", "accuracy", "diversity",
]  # fmt: skip


@torch.no_grad()
def image_metrics(task: Task, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, confident: float):
    """The quality, FID, reward (the task's own reward function) and accuracy of ``images``
    prompted with ``labels``."""
    probs = task.reward.judge(images).softmax(dim=1)
    conf = probs.max(dim=1).values
    reward_mean, ci = mean_ci95(score(task.reward, images, labels))
    return {
        "quality": float(conf.mean()),
        "quality_confident": float((conf >= confident).float().mean()),
        "fid": judge_fid(task, images, reference),
        "reward_mean": reward_mean,
        "reward_ci95": list(ci),
        "accuracy": float((probs.argmax(dim=1) == labels).float().mean()),
        "diversity": diversity(images, labels),
        "samples": int(labels.numel()),
    }


def run_bases(cfg: BasesConfig, out: str | Path, *, force: bool = False) -> dict:
    started = time.time()
    run = RunDir(out, cfg)
    method = PGraftConfig(sampler=cfg.sampler)
    rows = []
    for name in cfg.tasks:
        for i, variant in enumerate(cfg.variants):
            task_cfg = cfg.task_config(name, variant)
            task = prepare_task(task_cfg, force=force)
            data = task.data
            real = task.decode(data.test_x)
            with torch.no_grad():
                reference = task.reward.judge.features(real)
            if i == 0:  # the real images and the judge do not depend on the variant
                row = image_metrics(task, real, data.test_y, reference, cfg.confident)
                row["fid"] = judge_fid(task, task.decode(data.train_x), reference)  # the floor
                rows.append({"task": name, "model": "real held-out", **row})
                save_grid(
                    real, data.test_y, run.path / f"grid_{name}_real.png",
                    class_names=task.class_names, title=f"{name}: real held-out images (rows: class)",
                )  # fmt: skip
            schedule = task.schedule(cfg.sampler.steps, cfg.sampler.kind, cfg.sampler.eta)
            ev = evaluate_on_task(task, Single(task.base), schedule, method, cfg.eval, f"{name} {variant}")
            row = image_metrics(task, ev.images, ev.labels, reference, cfg.confident)
            u = task_cfg.unet
            rows.append(
                {
                    "task": name,
                    "model": f"base ({variant})",
                    **row,
                    "variant": variant,
                    "caption_noise": u.caption_noise,
                    "pretrain_steps": u.pretrain_steps,
                }
            )
            save_grid(
                ev.images, ev.labels, run.path / f"grid_{name}_{variant}.png",
                class_names=task.class_names, title=f"{name}: {variant} base (rows: prompted class)",
            )  # fmt: skip
            run.log("bases", len(rows), {k: v for k, v in rows[-1].items() if isinstance(v, float)})
    results = {"rows": rows, "config": cfg.model_dump(mode="json"), "total_wall_s": time.time() - started}
    run.results(results)
    run.close()
    print(table(rows, COLUMNS))
    print(f"wrote {run.path / 'results.json'}")
    return results
