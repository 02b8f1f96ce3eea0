"""Pieces the demo and the sweep share: evaluating a policy on the task, running one method."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DemoConfig, EvalConfig, PGraftConfig, SweepConfig
from ..engine.compose import Policy
from ..engine.evaluate import Evaluation, evaluate
from ..engine.rounds import PGraftLoop, PGraftRun
from ..errors import ConfigError
from ..models.schedule import Schedule
from ..stats import frechet_distance
from ..tasks import Task, prepare_task
from .run_dir import RunDir


@dataclass
class Experiment:
    run: RunDir
    task: Task
    schedule: Schedule
    started: float


def start_experiment(cfg: DemoConfig | SweepConfig, out: str | Path, force: bool) -> Experiment:
    """Open the run folder, prepare the task (cached models) and the method's sampler schedule."""
    started = time.time()
    run = RunDir(out, cfg)
    task = prepare_task(cfg.task, force=force)
    s = cfg.method.sampler
    return Experiment(run, task, task.schedule(s.steps, s.kind, s.eta), started)


def evaluate_on_task(
    task: Task, policy: Policy, schedule: Schedule, method: PGraftConfig, cfg: EvalConfig, name: str, device=None
) -> Evaluation:
    return evaluate(
        policy, schedule, task, cfg, guidance_scale=method.sampler.guidance_scale, device=device, progress=True,
        desc=f"evaluate {name}",
    )  # fmt: skip


@torch.no_grad()
def judge_fid(task: Task, images: torch.Tensor, reference: torch.Tensor) -> float:
    """FID (judge features): the Fréchet distance of ``images`` to the ``reference`` features in
    the judge CNN's 128-d penultimate layer (Inception weights cannot be downloaded here)."""
    return frechet_distance(task.reward.judge.features(images), reference)


def task_loop(task: Task, method: PGraftConfig, **options) -> PGraftLoop:
    """The P-GRAFT loop of ``method`` on an embedded task (``options``: PGraftLoop's keywords)."""
    return PGraftLoop(task, method, **options)


def run_method(task: Task, method: PGraftConfig, run: RunDir, name: str) -> PGraftRun:
    def on_round(entry):
        run.log(name, entry.round, vars(entry))

    result = task_loop(task, method, on_round=on_round, name=name).run()
    run.save_model(
        name, result.model, {"n_i": result.n_i, "mode": method.train.mode, "sampler_steps": result.schedule.steps}
    )
    return result


def load_seed_runs(runs: list[str | Path], cls: type, what: str) -> tuple[list[dict], object]:
    """The results of finished runs of one config that ran different seeds (``--merge``), and that
    config (``cls``) with all their seeds; refuses runs that differ in more or share a seed."""
    parts = []
    for path in runs:
        f = Path(path) / "results.json"
        if not f.exists():
            raise ConfigError(f"--merge: {f} does not exist (not a finished {what} run)")
        parts.append(json.loads(f.read_text()))
    configs = [{**p["config"], "seeds": None} for p in parts]
    if any(c != configs[0] for c in configs):
        raise ConfigError("--merge: the runs' configs differ in more than their seeds")
    seeds = [seed for p in parts for seed in p["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--merge: a seed appears in more than one run ({seeds})")
    return parts, cls.model_validate({**parts[0]["config"], "seeds": sorted(seeds)})


def model_summary(ev: Evaluation, samples_drawn: int, wall_s: float) -> dict:
    return {**ev.summary(), "samples_drawn": samples_drawn, "wall_s": wall_s}


def merged_wall_s(parts: list[dict]) -> float:
    """A merged run's time: the sum of its runs' own times (``--merge`` computes nothing worth counting)."""
    return float(sum(p["total_wall_s"] for p in parts))
