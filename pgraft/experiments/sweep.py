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
from ..engine.evaluate import mean_ci95
from ..engine.rollout import rollout, run_chain
from ..models.schedule import Schedule
from ..report import plot_sweep, table
from ..rewards.base import score
from ..seeding import generator
from ..tasks import Task
from .common import evaluate_on_task, run_method, start_experiment

COLUMNS = [
    "n_i_frac", "n_i", "reward_mean", "reward_ci95", "reward_seed_std", "accuracy", "diversity", "cond_var",
    "share_decided", "wall_s",
]  # fmt: skip


@torch.no_grad()
def conditional_variance(
    task: Task, schedule: Schedule, n_i: int, states_per_class: int, completions: int, guidance_scale: float, seed: int
) -> tuple[float, float | None]:
    """(E[Var[r(x_0) | x_{N_I}]], Var[r(x_0)]) under the base, within a class, averaged over classes.

    The first is the mean over fixed states x_{N_I} of the variance of r over base-model
    completions; the second pools every completion of a class (the states are independent base
    draws, so the pool is a sample of the base's whole law). None at N_I = 0 (no completions).
    """
    if n_i == 0:
        return 0.0, None  # x_0 fixes the reward
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
    r = score(task.reward, task.decode(x0), c).view(task.num_classes, states_per_class, completions)
    return float(r.var(dim=2, unbiased=True).mean()), float(r.flatten(1).var(dim=1, unbiased=True).mean())


def _pooled_row(per_seed: list[dict], rewards: list[torch.Tensor]) -> dict:
    """One N_I's row over its seeds: means, the spread of the final reward over seeds, and the CI
    of all seeds' held-out rewards pooled (sampling error within a seed; the spread is between)."""
    pooled = torch.cat(rewards)
    mean, ci = mean_ci95(pooled[torch.isfinite(pooled)])
    means = torch.tensor([p["reward_mean"] for p in per_seed], dtype=torch.float64)
    avg = lambda key: float(sum(p[key] for p in per_seed) / len(per_seed))  # noqa: E731
    return {
        "reward_mean": mean,
        "reward_ci95": list(ci),
        "reward_seed_std": float(means.std(unbiased=True)) if len(per_seed) > 1 else 0.0,
        "accuracy": avg("accuracy"),
        "diversity": avg("diversity"),
        "cond_var": avg("cond_var"),
        # the share of the base's reward variance that x_{N_I} decides: 1 − E[Var[r | x_{N_I}]] / Var[r]
        "share_decided": 1.0 if per_seed[0]["total_var"] is None else 1.0 - avg("cond_var") / avg("total_var"),
        "total_var": None if per_seed[0]["total_var"] is None else avg("total_var"),
        "samples_drawn": per_seed[0]["samples_drawn"],
        "wall_s": sum(p["wall_s"] for p in per_seed),
        "per_seed": list(per_seed),
    }


def run_sweep(cfg: SweepConfig, out: str | Path, *, force: bool = False) -> dict:
    """Seeds in the outer loop: after each seed the results so far (every N_I, the seeds done)
    are written, so a long sweep that is stopped keeps its finished seeds."""
    exp = start_experiment(cfg, out, force)
    run, task, schedule, m = exp.run, exp.task, exp.schedule, cfg.method
    levels = [(frac, int(round(frac * schedule.steps))) for frac in cfg.n_i_fracs]
    per_seed: dict[int, list[dict]] = {n_i: [] for _, n_i in levels}
    rewards: dict[int, list[torch.Tensor]] = {n_i: [] for _, n_i in levels}
    bar = tqdm(total=len(levels) * len(cfg.seeds), desc="sweep (N_I, seed)")
    for done, seed in enumerate(cfg.seeds, 1):
        for _, n_i in levels:
            method = m.model_copy(update={"n_i": n_i, "seed": seed})
            name = f"pgraft_ni{n_i}_seed{seed}"
            result = run_method(task, method, run, name)
            ev = evaluate_on_task(task, result.policy, schedule, method, cfg.eval, name, result.device)
            cond_var, total_var = conditional_variance(
                task, schedule, n_i, cfg.diag_states_per_class, cfg.diag_completions, m.sampler.guidance_scale, seed
            )
            summary = ev.summary()
            per_seed[n_i].append(
                {
                    "seed": seed,
                    **{k: summary[k] for k in ("reward_mean", "reward_ci95", "accuracy", "diversity")},
                    "cond_var": cond_var,
                    "total_var": total_var,
                    "samples_drawn": result.samples_drawn,
                    "wall_s": result.wall_s + ev.wall_s,
                }
            )
            rewards[n_i].append(ev.rewards)
            run.log("sweep", n_i, {k: v for k, v in per_seed[n_i][-1].items() if isinstance(v, float)} | {"seed": seed})
            bar.update()
        rows = [{"n_i_frac": f, "n_i": n_i, **_pooled_row(per_seed[n_i], rewards[n_i])} for f, n_i in levels]
        results = _write(cfg, run, rows, cfg.seeds[:done], schedule.steps, exp.started)
    bar.close()
    run.close()
    print(table(rows, COLUMNS))
    best = rows[[r["n_i_frac"] for r in rows].index(results["best_n_i_frac"])]
    print(f"highest reward at N_I/S = {best['n_i_frac']} (N_I = {best['n_i']} of {schedule.steps} steps)")
    print(f"wrote {run.path / 'results.json'}")
    return results


def _write(cfg: SweepConfig, run, rows: list[dict], seeds: list[int], steps: int, started: float) -> dict:
    best = max(rows, key=lambda r: r["reward_mean"])
    results = {
        "task": cfg.task.name,
        "seeds": list(seeds),
        "complete": len(seeds) == len(cfg.seeds),
        "rows": rows,
        "best_n_i_frac": best["n_i_frac"],
        "sampler_steps": steps,
        "config": cfg.model_dump(mode="json"),
        "total_wall_s": time.time() - started,
    }
    title = f"{cfg.task.name}, {cfg.task.base} base: P-GRAFT across N_I ({len(seeds)} seeds)"
    plot_sweep(rows, run.path / "sweep.png", title=title)
    run.results(results)
    return results
