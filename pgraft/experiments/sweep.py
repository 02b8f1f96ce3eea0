"""`pgraft sweep`: the paper's central experiment in miniature (METHOD.md §2).

P-GRAFT at several N_I (same sample budget), and the bias-variance diagnostic: from fixed states
x_{N_I} of base-model trajectories, many base-model completions estimate Var[r(x_0) | x_{N_I}].
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import SweepConfig
from ..engine.compose import Single
from ..engine.rollout import rollout, run_chain
from ..models.schedule import Schedule
from ..report import plot_sweep, table
from ..rewards.base import score
from ..seeding import generator
from ..tasks import Task
from .common import evaluate_on_task, run_method, start_experiment

COLUMNS = ["n_i_frac", "n_i", "reward_mean", "reward_ci95", "accuracy", "diversity", "cond_var", "wall_s"]


@torch.no_grad()
def conditional_variance(
    task: Task, schedule: Schedule, n_i: int, states_per_class: int, completions: int, guidance_scale: float, seed: int
) -> float:
    """Mean over fixed states x_{N_I} of the variance of r(x_0) over base-model completions."""
    if n_i == 0:
        return 0.0  # x_0 fixes the reward
    base = Single(task.base)
    conds = torch.arange(task.num_classes).repeat_interleave(states_per_class)
    states = rollout(
        base,
        schedule,
        conds,
        task.sample_shape,
        (seed, "diag-states", n_i),
        n_i=n_i,
        guidance_scale=guidance_scale,
        null_label=task.base.null_label,
    ).x_ni
    x = states.repeat_interleave(completions, dim=0)
    c = conds.repeat_interleave(completions)
    x0, _ = run_chain(
        base,
        schedule,
        x,
        c,
        generator(seed, "diag-completions", n_i),
        start_state=n_i,
        guidance_scale=guidance_scale,
        null_label=task.base.null_label,
    )
    r = score(task.reward, task.decode(x0), c).view(-1, completions)
    return float(r.var(dim=1, unbiased=True).mean())


def run_sweep(cfg: SweepConfig, out: str | Path, *, force: bool = False) -> dict:
    exp = start_experiment(cfg, out, force)
    run, task, schedule, m = exp.run, exp.task, exp.schedule, cfg.method
    rows = []
    for frac in tqdm(cfg.n_i_fracs, desc="sweep N_I"):
        n_i = int(round(frac * schedule.steps))
        method = m.model_copy(update={"n_i": n_i})
        name = f"pgraft_ni{n_i}"
        result = run_method(task, method, run, name)
        ev = evaluate_on_task(task, result.policy, schedule, method, cfg.eval, name, result.device)
        cond_var = conditional_variance(
            task, schedule, n_i, cfg.diag_states_per_class, cfg.diag_completions, m.sampler.guidance_scale, m.seed
        )
        row = {
            "n_i_frac": frac,
            "n_i": n_i,
            **ev.summary(),
            "cond_var": cond_var,
            "samples_drawn": result.samples_drawn,
            "wall_s": result.wall_s + ev.wall_s,
        }
        rows.append(row)
        run.log("sweep", n_i, {k: v for k, v in row.items() if isinstance(v, float)})
    best = max(rows, key=lambda r: r["reward_mean"])
    results = {
        "task": cfg.task.name,
        "rows": rows,
        "best_n_i_frac": best["n_i_frac"],
        "sampler_steps": schedule.steps,
        "config": cfg.model_dump(mode="json"),
        "total_wall_s": time.time() - exp.started,
    }
    plot_sweep(rows, run.path / "sweep.png")
    run.results(results)
    run.close()
    print(table(rows, COLUMNS))
    print(f"highest reward at N_I/S = {best['n_i_frac']} (N_I = {best['n_i']} of {schedule.steps} steps)")
    print(f"wrote {run.path / 'results.json'}")
    return results
