"""`pgraft demo`: the base and the fine-tuned models of ``cfg.runs`` at the same sample budget
(image tasks: GRAFT, N_I = 0, against P-GRAFT at pgraft_n_i; molecules also the dedup rule and
DDPO; layouts DDPO; scenes P-GRAFT at two N_I, DDPO and GRPO), each evaluated on the same held-out
seeds, with the task's own metrics when it has them."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import DemoConfig
from ..engine.compose import Single
from ..engine.evaluate import mean_ci95
from ..report import plot_reward_per_round, table
from ..rewards.base import score
from .common import evaluate_on_task, model_summary, run_method, start_experiment

COLUMNS = ["model", "reward_mean", "reward_ci95", "accuracy", "diversity", "samples_drawn", "wall_s"]
TITLES = {"graft": "GRAFT", "pgraft": "P-GRAFT", "ddpo": "DDPO", "grpo": "GRPO"}


def run_demo(cfg: DemoConfig, out: str | Path, *, force: bool = False) -> dict:
    exp = start_experiment(cfg, out, force)
    run, task, schedule = exp.run, exp.task, exp.schedule
    models, curves = {}, {}
    label = cfg.task.label

    ev = evaluate_on_task(task, Single(task.base), schedule, cfg.method, cfg.eval, "base")
    models["base"] = model_summary(ev, 0, ev.wall_s)
    task.save_samples(ev.images, ev.labels, run.path / "grid_base.png", f"base ({label})")

    for spec in cfg.runs:
        method = cfg.run_config(spec)
        result = run_method(task, method, run, spec.name)
        ev = evaluate_on_task(task, result.policy, schedule, method, cfg.eval, spec.name, result.device)
        models[spec.name] = {
            **model_summary(ev, result.samples_drawn, result.wall_s + ev.wall_s),
            "n_i": method.n_i,
            "algorithm": method.algorithm,
            "rule": method.select.rule if method.algorithm == "pgraft" else None,
        }
        what = f"N_I={method.n_i}" + (f", {method.select.rule}" if method.algorithm == "pgraft" else "")
        curves[f"{spec.name} ({what})"] = [r.rollout_reward_mean for r in result.history]
        title = f"{TITLES[spec.kind]} {what} ({label})"
        task.save_samples(ev.images, ev.labels, run.path / f"grid_{spec.name}.png", title)
        run.log("eval", 0, {f"{spec.name}_{k}": v for k, v in ev.summary().items() if isinstance(v, float)})

    plot_reward_per_round(
        curves, models["base"]["reward_mean"], run.path / "reward_per_round.png", title=f"{label}: rollout reward"
    )
    info = {
        "base_variant": cfg.task.base,
        "judge_accuracy": task.judge_accuracy,
        "real_test_reward_mean": task.real_reward_mean,
        "setup_s": task.pretrain_s,
        "cached_models": task.paths,
        **task.info,
    }
    if task.metrics is not None:  # the task's metrics of real held-out data: the reference row
        conditions = task.num_classes if task.eval_conditions is None else task.eval_conditions.numel()
        info["real_held_out"] = real_reference(task, cfg.eval.samples_per_class * conditions)
    results = {
        "task": cfg.task.name,
        "models": models,
        "config": cfg.model_dump(mode="json"),
        "task_info": info,
        "total_wall_s": time.time() - exp.started,
    }
    run.results(results)
    run.close()
    rows = [{"model": k, **v} for k, v in models.items()]
    if "real_held_out" in info:
        rows.append({"model": "real held-out", **info["real_held_out"]})
    print(table(rows, columns(task)))
    if task.metrics is None:
        print(f"judge held-out accuracy {task.judge_accuracy:.4f}; real test images' mean reward", end=" ")
        print(f"{task.real_reward_mean:.4f}")
    print(f"wrote {run.path / 'results.json'}")
    return results


def columns(task) -> list[str]:
    if task.metrics is None:
        return COLUMNS
    return ["model", "reward_mean", "reward_ci95", *task.metrics.COLUMNS, "samples_drawn", "wall_s"]


def real_reference(task, n: int) -> dict:
    """The task's metrics and reward on ``n`` real held-out samples (outside any metric reference)."""
    decoded, labels = task.metrics.real_samples(n)
    mean, ci = mean_ci95(score(task.reward, decoded, labels))
    return {"reward_mean": mean, "reward_ci95": list(ci), **task.metrics(decoded, labels)}
