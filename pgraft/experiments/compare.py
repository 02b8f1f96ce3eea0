"""`pgraft compare`: base, DDPO, GRPO, GRAFT and P-GRAFT at the same number of samples drawn.

Every method runs through the same round loop (rollout → reward → select/advantages → buffer →
train) from the same base, with the same rollout seeds, M, rounds and sampler; only what a round
learns differs. After every round the current policy is evaluated on held-out seeds (a small
evaluation: the curves); at the end, a full one. Each method's network passes are counted in rows
(one sample through the network once, CFG counting two): sampling forwards, training forwards
(reference-model forwards included) and training backwards, so curves can be read at equal
samples or at equal compute. ``--tune`` runs the baselines' learning-rate × clip-range search
on one seed with its own held-out seeds, and says which values to compare with.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import CompareConfig, EvalConfig, PGraftConfig, deep_merge
from ..engine.compose import Single
from ..engine.evaluate import Evaluation
from ..report import plot_compare, table
from ..stats import seed_ci95
from ..tasks import Task
from .common import evaluate_on_task, load_seed_runs, merged_wall_s, start_experiment, task_loop
from .run_dir import RunDir
from .sweep import pooled_reward

COLUMNS = [
    "method",
    "reward_mean",
    "reward_ci95",
    "reward_seed_std",
    "reward_seed_ci95",
    "accuracy",
    "diversity",
    "samples",
    "passes",
    "wall_s",
]
TUNE_COLUMNS = ["method", "lr", "clip_range", "reward_mean", "reward_ci95", "wall_s"]


def _stats(ev: Evaluation) -> dict:
    finite = ev.rewards[torch.isfinite(ev.rewards)].double()
    return {
        "reward_mean": ev.reward_mean,
        "reward_ci95": list(ev.reward_ci95),
        "reward_std": float(finite.std(unbiased=True)),
        "eval_samples": int(finite.numel()),
    }


def run_one(
    task: Task, method: PGraftConfig, name: str, run: RunDir, curve_eval: EvalConfig | None, final_eval: EvalConfig
) -> tuple[dict, Evaluation]:
    """One method at one seed: its curve (the small evaluation after every round), its final
    evaluation and its costs."""
    counts = {"samples": 0, "sampling_forward": 0, "train_forward": 0, "train_backward": 0, "wall_s": 0.0}
    curve: list[dict] = []
    loop = None

    def on_round(entry):
        counts["samples"] += entry.samples_drawn
        counts["sampling_forward"] += entry.rollout_forward
        counts["train_forward"] += entry.train_forward
        counts["train_backward"] += entry.train_backward
        counts["wall_s"] += entry.wall_s
        run.log(name, entry.round, vars(entry))
        if curve_eval is not None:
            ev = evaluate_on_task(
                task, loop.policy(), loop.schedule, method, curve_eval, f"{name} r{entry.round}", loop.device
            )
            curve.append({"samples": counts["samples"], "passes": _passes(counts), **_stats(ev)})

    loop = task_loop(task, method, on_round=on_round, name=name)
    result = loop.run()
    ev = evaluate_on_task(task, result.policy, loop.schedule, method, final_eval, name, result.device)
    summary = ev.summary()
    final = {
        **_stats(ev),
        "accuracy": summary["accuracy"],
        "diversity": summary["diversity"],
        **counts,
        "passes": _passes(counts),
    }
    return {"seed": method.seed, "curve": curve, "final": final}, ev


def _passes(counts: dict) -> int:
    return counts["sampling_forward"] + counts["train_forward"] + counts["train_backward"]


def summarise(per_seed: list[dict], start: dict) -> dict:
    """A method's entry of results.json from its seeds' runs (``start``: the base's curve point).

    Curve points all come from the curve evaluation (the same held-out noise for every method,
    round and seed: paired comparisons); ``final`` from the larger final evaluation.
    """
    curve = [start]
    for i, point in enumerate(per_seed[0]["curve"]):
        points = [s["curve"][i] for s in per_seed]
        curve.append({"samples": point["samples"], "passes": point["passes"], **pooled_reward(points)})
    finals = [s["final"] for s in per_seed]
    avg = lambda key: sum(f[key] for f in finals) / len(finals)  # noqa: E731
    final = {
        **pooled_reward(finals),
        "accuracy": avg("accuracy"),
        "diversity": avg("diversity"),
        "samples": finals[0]["samples"],
        "passes": finals[0]["passes"],
        "sampling_forward": finals[0]["sampling_forward"],
        "train_forward": finals[0]["train_forward"],
        "train_backward": finals[0]["train_backward"],
        "wall_s": avg("wall_s"),  # per run (rollout + training), evaluation excluded
    }
    return {"curve": curve, "final": final, "per_seed": per_seed}


def pairwise_differences(methods: dict) -> dict:
    """Every pair's difference in final held-out reward, seed by seed, with its t-interval over
    seeds. Every method is evaluated on the same held-out noise, so the differences are paired; the
    base (one evaluation) enters as a constant. ``decided``: the interval excludes 0."""
    base = methods["base"]["final"]["reward_mean"]
    by_seed = {
        n: {p["seed"]: p["final"]["reward_mean"] for p in m["per_seed"]} for n, m in methods.items() if n != "base"
    }
    seeds = sorted(set.intersection(*(set(v) for v in by_seed.values()))) if by_seed else []
    value = lambda name, seed: by_seed[name][seed] if name in by_seed else base  # noqa: E731
    out = {}
    for a, b in itertools.combinations(methods, 2):
        mean, ci = seed_ci95([value(a, s) - value(b, s) for s in seeds])
        out[f"{a} - {b}"] = {"mean": mean, "seed_ci95": ci, "seeds": len(seeds),
                             "decided": ci is not None and (ci[0] > 0 or ci[1] < 0)}  # fmt: skip
    return out


def samples_to_threshold(methods: dict, fraction: float = 0.9) -> dict:
    """Samples each method's seeds drew before their curve first reached the threshold: the base's
    reward plus ``fraction`` of the way to the best final reward any method reached (ours: defined
    for any reward's scale and sign). A seed that never reaches it is None: "not reached within
    ``within`` samples"."""
    base = methods["base"]["final"]["reward_mean"]
    best = max(m["final"]["reward_mean"] for m in methods.values())
    threshold = base + fraction * (best - base)
    out = {}
    for name, m in methods.items():
        if name == "base":
            continue
        hits = [
            next((pt["samples"] for pt in p["curve"] if pt["reward_mean"] >= threshold), None) for p in m["per_seed"]
        ]
        reached = [h for h in hits if h is not None]
        out[name] = {
            "per_seed": hits,
            "mean": sum(reached) / len(reached) if reached and len(reached) == len(hits) else None,
            "within": m["final"]["samples"],
        }
    return {"fraction": fraction, "threshold": threshold, "methods": out}


def run_compare(cfg: CompareConfig, out: str | Path, *, force: bool = False) -> dict:
    """Seeds in the outer loop; results.json and the plots are rewritten after every seed."""
    exp = start_experiment(cfg, out, force)
    run, task, schedule = exp.run, exp.task, exp.schedule
    curve_eval = cfg.eval.model_copy(update={"samples_per_class": cfg.curve_samples_per_class})
    label = cfg.task.label
    base_ev = evaluate_on_task(task, Single(task.base), schedule, cfg.method, cfg.eval, "base")
    base_curve = evaluate_on_task(task, Single(task.base), schedule, cfg.method, curve_eval, "base (curve)")
    start = {"samples": 0, "passes": 0, **pooled_reward([_stats(base_curve)])}
    base = {
        "final": {
            **_stats(base_ev),
            **pooled_reward([_stats(base_ev)]),
            "accuracy": base_ev.summary()["accuracy"],
            "diversity": base_ev.summary()["diversity"],
            "samples": 0,
            "passes": 0,
            "wall_s": 0.0,
        }
    }
    task.save_samples(base_ev.images, base_ev.labels, run.path / "grid_base.png", f"base ({label})")
    per_run: dict[str, list[dict]] = {}
    jobs = [(seed, name) for seed in cfg.seeds for name in cfg.methods]
    bar = tqdm(total=sum(len(cfg.method_configs(n, s)) for s, n in jobs), desc="compare (method, seed)")
    results: dict = {}
    for done, seed in enumerate(cfg.seeds, 1):
        for name in cfg.methods:
            for run_name, method in cfg.method_configs(name, seed).items():
                record, ev = run_one(task, method, f"{run_name}_seed{seed}", run, curve_eval, cfg.eval)
                per_run.setdefault(run_name, []).append(record)
                if seed == cfg.seeds[0]:
                    title = f"{run_name} after {record['final']['samples']} samples ({label})"
                    grid = run.path / f"grid_{run_name}.png"
                    task.save_samples(ev.images, ev.labels, grid, title)
                bar.update()
        info = {"base_variant": cfg.task.base, "judge_accuracy": task.judge_accuracy}
        results = _write(cfg, run, base, start, per_run, cfg.seeds[:done], info, time.time() - exp.started)
    bar.close()
    run.close()
    _report(results, run.path)
    return results


def _write(
    cfg: CompareConfig, run: RunDir, base: dict, start: dict, per_run: dict, seeds: list[int], info: dict, wall_s: float
) -> dict:
    methods = {"base": base, **{n: summarise(p, start) for n, p in per_run.items()}}
    results = {
        "task": cfg.task.name,
        "seeds": list(seeds),
        "complete": len(seeds) == len(cfg.seeds),
        "methods": methods,
        "differences": pairwise_differences(methods),
        "samples_to_threshold": samples_to_threshold(methods),
        "equal_samples": winner_at(methods, "samples"),
        "equal_compute": winner_at(methods, "passes"),
        "config": cfg.model_dump(mode="json"),
        "task_info": info,
        "total_wall_s": wall_s,
    }
    plot_compare(methods, run.path, title=f"{cfg.task.label}: {len(seeds)} seed(s)")
    run.results(results)
    return results


def merge_compares(runs: list[str | Path], out: str | Path) -> dict:
    """One comparison from finished runs of one config on different seeds (`pgraft compare --merge`),
    re-summarised from their per-seed records."""
    parts, cfg = load_seed_runs(runs, CompareConfig, "compare")
    per_run: dict[str, list[dict]] = {}
    for part in parts:
        for name, m in part["methods"].items():
            if name != "base":
                per_run.setdefault(name, []).extend(m["per_seed"])
    per_run = {n: sorted(p, key=lambda r: r["seed"]) for n, p in per_run.items()}
    # every method's curve starts at the base's point of the curve evaluation
    start = next(m["curve"][0] for n, m in parts[0]["methods"].items() if n != "base")
    base = parts[0]["methods"]["base"]
    run = RunDir(out, cfg)
    results = _write(cfg, run, base, start, per_run, cfg.seeds, parts[0]["task_info"], merged_wall_s(parts))
    results["merged_from"] = [str(p) for p in runs]
    results["runs_wall_s"] = [p["total_wall_s"] for p in parts]
    run.results(results)
    run.close()
    _report(results, run.path)
    return results


def _report(results: dict, folder: Path) -> None:
    rows = [{"method": n, **m["final"]} for n, m in results["methods"].items()]
    print(table(rows, COLUMNS))
    for key, what in (("equal_samples", "samples drawn"), ("equal_compute", "network passes")):
        w = results[key]
        print(f"at {w['at']:,} {what}: highest held-out reward {w['winner']} ({w['reward_mean'][w['winner']]:.4f})")
    print(f"wrote {folder / 'results.json'}")


def winner_at(methods: dict[str, dict], key: str) -> dict:
    """Each method's held-out reward at the largest budget (``samples`` or ``passes``) that every
    method reached, read off its curve (linear between evaluated rounds), and the best of them."""
    curves = {n: m["curve"] for n, m in methods.items() if m.get("curve")}
    at = min(c[-1][key] for c in curves.values())
    rewards = {n: float(np.interp(at, [p[key] for p in c], [p["reward_mean"] for p in c])) for n, c in curves.items()}
    return {"at": at, "reward_mean": rewards, "winner": max(rewards, key=rewards.get)}


def run_tune(cfg: CompareConfig, out: str | Path, *, force: bool = False) -> dict:
    """The baselines' search: every (lr, clip range) of ``cfg.tune`` at the comparison's budget,
    one seed, scored on held-out seeds of its own (so the comparison's evaluation stays unseen)."""
    exp = start_experiment(cfg, out, force)
    run, task, t = exp.run, exp.task, cfg.tune
    final_eval = cfg.eval.model_copy(update={"seed": t.eval_seed})
    rows = []
    baselines = [m for m in cfg.methods if m in ("ddpo", "grpo")]
    grid = list(itertools.product(baselines, t.lrs, t.clip_ranges))
    for name, lr, clip in tqdm(grid, desc="tune (method, lr, clip)"):
        changes = deep_merge(getattr(cfg, name), {"train": {"lr": lr}, "pg": {"clip_range": clip}})
        (method,) = cfg.model_copy(update={name: changes}).method_configs(name, t.seed).values()
        record, _ = run_one(task, method, f"{name}_lr{lr:g}_clip{clip:g}", run, None, final_eval)
        f = record["final"]
        rows.append(
            {
                "method": name,
                "lr": lr,
                "clip_range": clip,
                **{k: f[k] for k in ("reward_mean", "reward_ci95", "wall_s")},
            }
        )
        best = {
            n: max((r for r in rows if r["method"] == n), key=lambda r: r["reward_mean"])
            for n in baselines
            if any(r["method"] == n for r in rows)
        }
        results = {"task": cfg.task.name, "rows": rows, "best": best, "config": cfg.model_dump(mode="json")}
        run.results(results)
    run.close()
    print(table(rows, TUNE_COLUMNS))
    for n, r in results["best"].items():
        print(f"best {n}: --set {n}.train.lr={r['lr']:g} --set {n}.pg.clip_range={r['clip_range']:g}")
    print(f"wrote {run.path / 'results.json'}")
    return results
