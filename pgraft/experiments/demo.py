"""`pgraft demo`: base vs GRAFT (N_I = 0) vs P-GRAFT (N_I = pgraft_n_i) at the same sample budget."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import DemoConfig
from ..engine.compose import Single
from ..report import plot_reward_per_round, save_grid, table
from .common import evaluate_on_task, model_summary, run_method, start_experiment

COLUMNS = ["model", "reward_mean", "reward_ci95", "accuracy", "diversity", "samples_drawn", "wall_s"]


def run_demo(cfg: DemoConfig, out: str | Path, *, force: bool = False) -> dict:
    exp = start_experiment(cfg, out, force)
    run, task, schedule, m = exp.run, exp.task, exp.schedule, cfg.method
    models, curves = {}, {}

    ev = evaluate_on_task(task, Single(task.base), schedule, m, cfg.eval, "base")
    models["base"] = model_summary(ev, 0, ev.wall_s)
    label = f"{cfg.task.name}, {cfg.task.base} base"
    save_grid(ev.images, ev.labels, run.path / "grid_base.png", class_names=task.class_names, title=f"base ({label})")

    for name, n_i in (("graft", 0), ("pgraft", cfg.pgraft_n_i)):
        method = m.model_copy(update={"n_i": n_i})
        result = run_method(task, method, run, name)
        ev = evaluate_on_task(task, result.policy, schedule, method, cfg.eval, name, result.device)
        models[name] = {**model_summary(ev, result.samples_drawn, result.wall_s + ev.wall_s), "n_i": n_i}
        curves[f"{name} (N_I={n_i})"] = [r.rollout_reward_mean for r in result.history]
        title = f"{'GRAFT' if n_i == 0 else 'P-GRAFT'} N_I={n_i} ({label})"
        save_grid(ev.images, ev.labels, run.path / f"grid_{name}.png", class_names=task.class_names, title=title)
        run.log("eval", 0, {f"{name}_{k}": v for k, v in ev.summary().items() if isinstance(v, float)})

    plot_reward_per_round(
        curves, models["base"]["reward_mean"], run.path / "reward_per_round.png", title=f"{label}: rollout reward"
    )
    results = {
        "task": cfg.task.name,
        "models": models,
        "config": cfg.model_dump(mode="json"),
        "task_info": {
            "base_variant": cfg.task.base,
            "judge_accuracy": task.judge_accuracy,
            "real_test_reward_mean": task.real_reward_mean,
            "setup_s": task.pretrain_s,
            "cached_models": task.paths,
        },
        "total_wall_s": time.time() - exp.started,
    }
    run.results(results)
    run.close()
    rows = [{"model": k, **v} for k, v in models.items()]
    print(table(rows, COLUMNS))
    print(
        f"judge held-out accuracy {task.judge_accuracy:.4f}; real test images' mean reward {task.real_reward_mean:.4f}"
    )
    print(f"wrote {run.path / 'results.json'}")
    return results
