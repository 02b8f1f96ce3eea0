"""`pgraft sweep`: the paper's central experiment in miniature (docs/method.md §2).

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
from ..stats import pool, seed_ci95  # noqa: F401  (pool: part of this module's API)
from ..tasks import Task
from .common import evaluate_on_task, load_seed_runs, merged_wall_s, run_method, start_experiment
from .run_dir import RunDir

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


def pooled_reward(per_seed: list[dict]) -> dict:
    """Seeds' held-out rewards (each with ``eval_samples``, ``reward_mean``, ``reward_std``): the
    pooled mean and CI (``reward_ci95``: sampling error within a seed only, a secondary figure),
    the spread of the seeds' means (``reward_seed_std``) and the t-interval over seeds
    (``reward_seed_ci95``, None with one seed: the interval claims rest on)."""
    mean, ci = pool([(p["eval_samples"], p["reward_mean"], p["reward_std"]) for p in per_seed])
    means = [p["reward_mean"] for p in per_seed]
    return {
        "reward_mean": mean,
        "reward_ci95": list(ci),
        "reward_seed_std": float(torch.tensor(means, dtype=torch.float64).std(unbiased=True))
        if len(means) > 1
        else 0.0,
        "reward_seed_ci95": seed_ci95(means)[1],
    }


def _pooled_row(per_seed: list[dict]) -> dict:
    """One N_I's row over its seeds: :func:`pooled_reward`, and seed means."""
    avg = lambda key: float(sum(p[key] for p in per_seed) / len(per_seed))  # noqa: E731
    task_metrics = per_seed[0].get("metrics", {})  # the task's own (molecules: validity, uniqueness, ...)
    return {
        **pooled_reward(per_seed),
        "accuracy": avg("accuracy"),
        "diversity": avg("diversity"),
        **{k: float(sum(p["metrics"][k] for p in per_seed) / len(per_seed)) for k in task_metrics},
        **_diag_row(per_seed),
        "samples_drawn": per_seed[0]["samples_drawn"],
        "wall_s": sum(p["wall_s"] for p in per_seed),
        "per_seed": sorted(per_seed, key=lambda p: p["seed"]),
    }


def _diag_row(per_seed: list[dict]) -> dict:
    """The diagnostic over seeds: E Var[r | x_{N_I}], Var[r], and the share of the base's reward
    variance that x_{N_I} decides, 1 − E[Var[r | x_{N_I}]] / Var[r] (1 at N_I = 0)."""
    cond = sum(p["cond_var"] for p in per_seed) / len(per_seed)
    if per_seed[0]["total_var"] is None:
        return {"cond_var": cond, "total_var": None, "share_decided": 1.0}
    total = sum(p["total_var"] for p in per_seed) / len(per_seed)
    return {"cond_var": cond, "total_var": total, "share_decided": 1.0 - cond / total}


def columns(rows: list[dict]) -> list[str]:
    """The table's columns: the task's own metrics (if any) after the reward."""
    extra = [k for k in rows[0] if k in rows[0]["per_seed"][0].get("metrics", {})]
    return COLUMNS[:5] + extra + COLUMNS[5:]


def run_sweep(cfg: SweepConfig, out: str | Path, *, force: bool = False) -> dict:
    """Seeds in the outer loop: after each seed the results so far (every N_I, the seeds done)
    are written, so a long sweep that is stopped keeps its finished seeds."""
    exp = start_experiment(cfg, out, force)
    run, task, schedule, m = exp.run, exp.task, exp.schedule, cfg.method
    levels = [(frac, round(frac * schedule.steps)) for frac in cfg.n_i_fracs]
    by_step = {round(f * schedule.steps): f for f in reversed(cfg.n_i_fracs + cfg.diag_fracs)}  # one per N_I
    diag_levels = sorted(((f, n_i) for n_i, f in by_step.items()), key=lambda level: level[1])
    per_seed: dict[int, list[dict]] = {n_i: [] for _, n_i in levels}
    diag_per_seed: dict[int, list[dict]] = {n_i: [] for _, n_i in diag_levels}
    bar = tqdm(total=len(levels) * len(cfg.seeds), desc="sweep (N_I, seed)")
    for done, seed in enumerate(cfg.seeds, 1):
        for _, n_i in diag_levels:
            cond_var, total_var = conditional_variance(
                task, schedule, n_i, cfg.diag_states_per_class, cfg.diag_completions, m.sampler.guidance_scale, seed
            )
            diag_per_seed[n_i].append({"seed": seed, "cond_var": cond_var, "total_var": total_var})
        for _, n_i in levels:
            method = m.model_copy(update={"n_i": n_i, "seed": seed})
            name = f"pgraft_ni{n_i}_seed{seed}"
            result = run_method(task, method, run, name)
            ev = evaluate_on_task(task, result.policy, schedule, method, cfg.eval, name, result.device)
            diag = diag_per_seed[n_i][-1]
            summary = ev.summary()
            finite = ev.rewards[torch.isfinite(ev.rewards)].double()
            per_seed[n_i].append(
                {
                    "seed": seed,
                    **{k: summary[k] for k in ("reward_mean", "reward_ci95", "accuracy", "diversity")},
                    "reward_std": float(finite.std(unbiased=True)),
                    "metrics": {
                        k: summary[k]
                        for k in (task.metrics.COLUMNS if task.metrics is not None else ())
                        if k != "diversity"
                    },
                    "eval_samples": int(finite.numel()),
                    "cond_var": diag["cond_var"],
                    "total_var": diag["total_var"],
                    "samples_drawn": result.samples_drawn,
                    "wall_s": result.wall_s + ev.wall_s,
                }
            )
            run.log("sweep", n_i, {k: v for k, v in per_seed[n_i][-1].items() if isinstance(v, float)} | {"seed": seed})
            bar.update()
        rows = [{"n_i_frac": f, "n_i": n_i, **_pooled_row(per_seed[n_i])} for f, n_i in levels]
        diagnostic = [
            {"n_i_frac": f, "n_i": n_i, **_diag_row(diag_per_seed[n_i]), "per_seed": diag_per_seed[n_i]}
            for f, n_i in diag_levels
        ]
        results = _write(cfg, run, rows, diagnostic, cfg.seeds[:done], schedule.steps, time.time() - exp.started)
    bar.close()
    run.close()
    print(table(rows, columns(rows)))
    best = rows[[r["n_i_frac"] for r in rows].index(results["best_n_i_frac"])]
    print(f"highest reward at N_I/S = {best['n_i_frac']} (N_I = {best['n_i']} of {schedule.steps} steps)")
    print(f"wrote {run.path / 'results.json'}")
    return results


def merge_sweeps(runs: list[str | Path], out: str | Path) -> dict:
    """One sweep from several finished sweep runs of the same config that ran different seeds
    (`pgraft sweep --merge RUN ... --out DIR`): seeds can run as separate jobs, in parallel."""
    parts, cfg = load_seed_runs(runs, SweepConfig, "sweep")
    rows, diagnostic = [], []
    for i, row in enumerate(parts[0]["rows"]):
        per_seed = [p for part in parts for p in part["rows"][i]["per_seed"]]
        rows.append({"n_i_frac": row["n_i_frac"], "n_i": row["n_i"], **_pooled_row(per_seed)})
    for i, row in enumerate(parts[0]["diagnostic"]):
        per_seed = sorted((p for part in parts for p in part["diagnostic"][i]["per_seed"]), key=lambda p: p["seed"])
        diagnostic.append({"n_i_frac": row["n_i_frac"], "n_i": row["n_i"], **_diag_row(per_seed), "per_seed": per_seed})
    run = RunDir(out, cfg)
    results = _write(cfg, run, rows, diagnostic, cfg.seeds, parts[0]["sampler_steps"], merged_wall_s(parts))
    results["merged_from"] = [str(p) for p in runs]
    results["runs_wall_s"] = [p["total_wall_s"] for p in parts]
    run.results(results)
    run.close()
    print(table(rows, columns(rows)))
    print(f"wrote {run.path / 'results.json'}")
    return results


def _write(
    cfg: SweepConfig, run, rows: list[dict], diagnostic: list[dict], seeds: list[int], steps: int, wall_s: float
) -> dict:
    best = max(rows, key=lambda r: r["reward_mean"])
    results = {
        "task": cfg.task.name,
        "seeds": list(seeds),
        "complete": len(seeds) == len(cfg.seeds),
        "rows": rows,
        "diagnostic": diagnostic,
        "best_n_i_frac": best["n_i_frac"],
        "sampler_steps": steps,
        "config": cfg.model_dump(mode="json"),
        "total_wall_s": wall_s,
    }
    title = f"{cfg.task.label}: P-GRAFT across N_I ({len(seeds)} seeds)"
    plot_sweep(
        rows, run.path / "sweep.png", title=title, diagnostic=diagnostic, diversity_label=cfg.task.diversity_label
    )
    run.results(results)
    return results
