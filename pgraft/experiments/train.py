"""`pgraft train`: one P-GRAFT run, on one process or many (deepspeed launcher), checkpointed and
resumable (docs/distributed.md).

Every rank runs this function. Rank 0 owns the run folder (config.yaml, metrics.jsonl,
results.json, grids, weights); checkpoints are written by all ranks together. A resumed run
rewrites metrics.jsonl to its checkpoint's rows and continues, so a run killed at any moment and
resumed ends with the weights and metrics of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from ..config import TrainRunConfig, to_yaml
from ..engine.checkpoint import Checkpointer
from ..engine.distributed import Watchdog, all_gather_rows, barrier, ensure_distributed, rank, world_size
from ..report import plot_reward_per_round, save_grid, table
from ..tasks import prepare_task
from ..tasks.stable_diffusion import prepare_sd_task
from .common import evaluate_on_task, model_summary, task_loop
from .run_dir import RunDir
from .sample import export_stable_diffusion

log = logging.getLogger("pgraft")
COLUMNS = ["model", "n_i", "reward_mean", "reward_ci95", "accuracy", "diversity", "samples_drawn", "wall_s"]


def param_digest(model: torch.nn.Module) -> str:
    """sha256 of every tensor of the state dict, in key order: equal digests, equal weights."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digests_of_all_ranks(model: torch.nn.Module) -> list[str]:
    mine = torch.tensor(list(bytes.fromhex(param_digest(model))), dtype=torch.uint8).view(1, -1)
    return [bytes(row.tolist()).hex() for row in all_gather_rows(mine)]


def run_train(cfg: TrainRunConfig, out: str | Path, *, resume: str | Path | None = None, force: bool = False) -> dict:
    started = time.time()
    ensure_distributed(cfg.distributed.timeout_s)
    with Watchdog(cfg.distributed.timeout_s):
        results = _train(cfg, Path(out), Path(resume) if resume is not None else None, force, started)
        barrier()  # everyone is done
    # Every rank's watchdog thread has stopped before any rank leaves: rank 0's exit takes the
    # store down, and a peer thread caught inside a store call aborted its process at exit.
    barrier()
    if world_size() > 1:
        torch.distributed.destroy_process_group()
    return results


def _train(cfg: TrainRunConfig, out: Path, resume: Path | None, force: bool, started: float) -> dict:
    task = prepare_sd_task(cfg) if cfg.stable_diffusion is not None else prepare_task(cfg.task, force=force)
    method, name = cfg.method, "pgraft"
    lead = rank() == 0
    run: RunDir | None = None

    def on_round(entry):
        if lead:
            run.log(name, entry.round, vars(entry))

    loop = task_loop(
        task,
        method,
        keep_rounds=cfg.keep_rounds,
        on_round=on_round,
        name=name,
        checkpointer=Checkpointer(out / "checkpoints", cfg.checkpoint.keep_last),
        checkpoint_every=cfg.checkpoint.every_steps,
        run_config=to_yaml(cfg),
        timeout_s=cfg.distributed.timeout_s,
    )
    resumed_from = loop.resume(resume / "checkpoints") if resume is not None else None
    if resume is not None and resumed_from is None:
        log.warning("no complete checkpoint under %s: starting from the beginning", resume / "checkpoints")
    if lead:
        metrics = [{"scope": name, "step": h["round"], **h} for h in loop.state.history]
        run = RunDir(out, cfg, metrics=metrics, purge_step=loop.state.round if resumed_from else None)
    result = loop.run()
    ev = evaluate_on_task(task, result.policy, loop.schedule, method, cfg.eval, name, result.device)
    digests = digests_of_all_ranks(result.model)
    if len(set(digests)) != 1:
        log.error("the ranks ended with different weights: %s", digests)
    summary = {**model_summary(ev, result.samples_drawn, result.wall_s + ev.wall_s), "n_i": method.n_i}
    results = {
        "task": task.name,
        "models": {name: summary},
        "world_size": world_size(),
        "param_digests": digests,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "history": [vars(h) for h in result.history],
        "config": cfg.model_dump(mode="json"),
        "total_wall_s": time.time() - started,
    }
    if lead:
        meta = {"n_i": method.n_i, "mode": method.train.mode, "sampler_steps": loop.schedule.steps}
        run.save_model(name, result.model, meta)
        if cfg.stable_diffusion is not None:
            export_stable_diffusion(cfg, result.model, run.path / "models", meta)
        grid = run.path / f"grid_{name}.png"
        if task.render is not None:  # samples that are not images (molecules)
            task.save_samples(ev.images, ev.labels, grid, f"{name} (N_I={method.n_i}, {task.name})")
        else:
            save_grid(ev.images, ev.labels, grid)
        curve = {f"{name} (N_I={method.n_i})": [h.rollout_reward_mean for h in result.history]}
        plot_reward_per_round(curve, None, run.path / "reward_per_round.png")
        run.log("eval", 0, {f"{name}_{k}": v for k, v in ev.summary().items() if isinstance(v, float)})
        run.results(results)
        run.close()
        print(table([{"model": name, **summary}], COLUMNS))
        print(f"{world_size()} rank(s); weights identical across ranks: {len(set(digests)) == 1}")
        print(f"wrote {run.path / 'results.json'}")
    return results
